"""Hostile model metadata (issue 12, item 8): refused in one line before anything is built."""

from __future__ import annotations

import json

import pytest

from maskwatch.errors import ModelError
from maskwatch.inference.modelfile import ModelInfo, check_arch

GOOD = {"name": "m", "classes": ["with_mask", "without_mask"], "input_size": 32,
        "mean": [0.5] * 3, "std": [0.5] * 3, "threshold": 0.5, "head": "softmax"}

BAD_INFO = [
    {"input_size": 100000}, {"input_size": 0}, {"input_size": -5}, {"input_size": 32.5},
    {"input_size": "32"}, {"input_size": True}, {"classes": []}, {"classes": ["a"]},
    {"classes": ["a", "a"]}, {"classes": "with_mask"}, {"classes": [1, 2]},
    {"mean": [0.5]}, {"std": [0, 1, 1]}, {"std": [float("nan")] * 3},
    {"threshold": "high"}, {"threshold": float("nan")}, {"threshold": 2},
    {"head": ["softmax"]}, {"name": None}, {"extra": []},
]


@pytest.mark.parametrize("change", BAD_INFO, ids=lambda c: json.dumps(c)[:40])
def test_bad_model_info_is_one_line_model_error(change):
    with pytest.raises(ModelError) as err:
        ModelInfo.from_dict({**GOOD, **change})
    assert "\n" not in str(err.value)


def test_model_info_json_that_is_not_an_object(tmp_path):
    for text in ("[1, 2]", '"x"', "null", "[" * 100000):
        path = tmp_path / "m.json"
        path.write_text(text)
        with pytest.raises(ModelError, match="m.json"):
            ModelInfo.load_json(path)


BAD_ARCH = [
    {"arch_args": {"width_mult": 1e6}}, {"arch_args": {"input_size": 100000}},
    {"arch_args": {"dropout": -1}}, {"arch_args": {"evil": 1}}, {"arch_args": []},
    {"num_outputs": 10**9}, {"num_outputs": 0}, {"num_outputs": 5}, {"num_outputs": "2"},
    {"arch": None},
]


@pytest.mark.parametrize("change", BAD_ARCH, ids=lambda c: json.dumps(c)[:40])
def test_bad_architecture_is_refused_before_building(change, monkeypatch):
    """build_from_header must not call the model builder (5.7 GB for width_mult 1e6)."""
    import maskwatch.models as models
    from maskwatch.models.checkpoint import build_from_header

    built = []
    monkeypatch.setattr(models, "create_model", lambda *a, **k: built.append((a, k)))
    header = {**GOOD, "arch": "mobilenet_v2", "num_outputs": 2, "arch_args": {}, **change}
    with pytest.raises(ModelError):
        build_from_header(header, "evil.safetensors")
    assert built == []


def test_good_architecture_passes():
    assert check_arch({**GOOD, "arch": "seed_cnn128", "num_outputs": 2,
                       "arch_args": {"input_size": 32, "dropout": 0.1}}) == (
        "seed_cnn128", 2, {"input_size": 32, "dropout": 0.1})


def test_checkpoint_with_hostile_header_fails_in_one_line(tmp_path):
    pytest.importorskip("safetensors")
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    from maskwatch.models.checkpoint import load_checkpoint

    for i, change in enumerate([{"input_size": 100000}, {"classes": []},
                                {"arch_args": {"width_mult": 1e6}}]):
        header = {**GOOD, "arch": "mobilenet_v2", "num_outputs": 2, "arch_args": {},
                  "format": 1, **change}
        path = tmp_path / f"evil{i}.safetensors"
        save_file({"w": torch.zeros(1)}, str(path), metadata={"maskwatch": json.dumps(header)})
        with pytest.raises(ModelError, match=f"evil{i}.safetensors") as err:
            load_checkpoint(path)
        assert "\n" not in str(err.value)
