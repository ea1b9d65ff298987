"""Training: augmentation, data split and cache, checkpoints, the CLI and exact resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

from PIL import Image  # noqa: E402
from slowdown import slow_env  # noqa: E402

from maskwatch.cli import main as cli_main  # noqa: E402
from maskwatch.errors import MaskwatchError, ModelError  # noqa: E402
from maskwatch.inference.modelfile import ModelInfo  # noqa: E402
from maskwatch.models import create_model  # noqa: E402
from maskwatch.models.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from maskwatch.training import augment  # noqa: E402
from maskwatch.training.data import decode_faces, epoch_order, group_split, relabel  # noqa: E402
from maskwatch.training.optim import lr_at  # noqa: E402

torch.set_num_threads(1)


def make_dataset(root: Path, per_class: int = 12, split: str = "train", seed: int = 0) -> Path:
    """Class folders of generated faces: with_mask ones have a bright lower half."""
    rng = np.random.default_rng(seed)
    for label in ("with_mask", "without_mask"):
        folder = root / split / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = rng.integers(36, 60, 2)
            img = rng.integers(0, 80, (h, w, 3), dtype=np.uint8)
            img[..., 0] += 90
            if label == "with_mask":
                img[h // 2 :] = rng.integers(200, 255)
            Image.fromarray(img).save(folder / f"{label}_{i}.png")
    return root


def train_argv(data: Path, out: Path, cache: Path, *extra: str) -> list[str]:
    return [
        "train", "--data", str(data), "--out", str(out), "--model", "seed_cnn128",
        "--input-size", "32", "--batch-size", "8", "--threads", "1", "--workers", "1",
        "--cache-dir", str(cache), "--no-progress", "--lr", "3e-3", *extra,
    ]


# ---------------------------------------------------------------- augmentation


def test_augment_is_seeded_and_in_range():
    batch = torch.randint(0, 256, (6, 24, 24, 3), dtype=torch.uint8)
    cfg = augment.PRESETS["strong"]
    a = augment.augment_batch(batch, cfg, torch.Generator().manual_seed(1))
    b = augment.augment_batch(batch, cfg, torch.Generator().manual_seed(1))
    c = augment.augment_batch(batch, cfg, torch.Generator().manual_seed(2))
    assert a.shape == (6, 3, 24, 24) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1
    plain = augment.augment_batch(batch, None, torch.Generator())
    assert torch.allclose(plain, batch.permute(0, 3, 1, 2).float() / 255)


def test_flip_only_config_mirrors_exactly():
    batch = torch.randint(0, 256, (3, 16, 20, 3), dtype=torch.uint8)
    cfg = augment.AugmentConfig(flip=1.0, rotate=0.0, scale=(1.0, 1.0), ratio=(1.0, 1.0),
                                brightness=0, contrast=0, saturation=0, colour=0, blur=0)
    out = augment.augment_batch(batch, cfg, torch.Generator().manual_seed(0))
    expected = batch.permute(0, 3, 1, 2).float().flip(-1) / 255
    assert torch.allclose(out, expected, atol=1e-5)


def test_normalise_matches_inference_preprocessing():
    from maskwatch.inference.preprocess import to_input

    batch = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    ours = augment.normalise(augment.to_float(torch.from_numpy(batch)), mean, std)
    np.testing.assert_allclose(ours.numpy(), to_input(batch, mean, std), atol=1e-6)


# ---------------------------------------------------------------- schedule, split, cache


def test_lr_warmup_then_cosine():
    assert lr_at(0, 100, 10, 1.0) == pytest.approx(0.1)
    assert lr_at(9, 100, 10, 1.0) == pytest.approx(1.0)
    assert lr_at(10, 100, 10, 1.0) == pytest.approx(1.0)
    assert lr_at(55, 100, 10, 1.0) == pytest.approx(0.505)
    assert lr_at(100, 100, 10, 1.0) == pytest.approx(0.01)
    lrs = [lr_at(s, 100, 10, 1.0) for s in range(10, 100)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def _S(path, label, group, split=None, box=None):
    from maskwatch.data import Sample

    return Sample(Path(path), label, split, group=group, box=box)


def test_group_split_keeps_groups_together():
    samples = [_S(f"{i}.png", "with_mask" if i % 2 else "without_mask", f"g{i // 4}")
               for i in range(80)]
    labels = np.array([i % 2 for i in range(80)])
    tr, va = group_split(samples, labels, 0.25, seed=3)
    assert len(set(tr) | set(va)) == 80 and not set(tr) & set(va)
    assert {samples[i].group for i in tr}.isdisjoint({samples[i].group for i in va})
    assert 10 <= len(va) <= 30
    tr2, va2 = group_split(samples, labels, 0.25, seed=3)
    assert np.array_equal(va, va2)
    assert not np.array_equal(va, group_split(samples, labels, 0.25, seed=4)[1])


def test_relabel_drops_or_merges_incorrect():
    samples = [_S("a", "with_mask", "a"), _S("b", "incorrect_mask", "b"),
               _S("c", "without_mask", "c")]
    kept, labels = relabel(samples, ["with_mask", "without_mask"])
    assert [s.path.name for s in kept] == ["a", "c"] and labels.tolist() == [0, 1]
    kept, labels = relabel(samples, ["with_mask", "without_mask"], merge_incorrect=True)
    assert labels.tolist() == [0, 1, 1]
    kept, labels = relabel(samples, ["with_mask", "without_mask", "incorrect_mask"])
    assert labels.tolist() == [0, 2, 1]


def test_balanced_sampler_evens_out_classes():
    labels = np.array([0] * 90 + [1] * 10)
    order = epoch_order(labels, "sampler", seed=0, epoch=0)
    share = (labels[order] == 1).mean()
    assert 0.35 < share < 0.65
    perm = epoch_order(labels, "none", seed=0, epoch=0)
    assert sorted(perm.tolist()) == list(range(100))
    assert not np.array_equal(perm, epoch_order(labels, "none", seed=0, epoch=1))


def test_decode_cache_is_reused_and_bad_images_reported(tmp_path):
    from maskwatch.data.model import Sample

    make_dataset(tmp_path / "ds", per_class=3)
    files = sorted((tmp_path / "ds").rglob("*.png"))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    samples = [Sample(f, "with_mask") for f in files] + [Sample(bad, "with_mask")]
    cache = tmp_path / "cache"
    first = decode_faces(samples, 16, cache_dir=cache, workers=1, progress=False)
    assert first.images.shape == (7, 16, 16, 3)
    assert first.ok.tolist() == [True] * 6 + [False]
    assert "bad.png" in first.errors[0]
    assert len(list(cache.glob("*.npy"))) == 1
    second = decode_faces(samples, 16, cache_dir=cache, workers=1, progress=False)
    assert isinstance(second.images, np.memmap)  # read back from the cache
    assert np.array_equal(first.images, second.images)
    assert second.ok.tolist() == first.ok.tolist()
    other = decode_faces(samples, 20, cache_dir=cache, workers=1, progress=False)
    assert other.images.shape[1] == 20 and len(list(cache.glob("*.npy"))) == 2



def test_decode_workers_started_by_forkserver_give_the_same_faces(tmp_path):
    """Scripts that ran threads before decoding ask for forkserver workers: same faces."""
    from maskwatch.data.model import Sample

    make_dataset(tmp_path / "ds", per_class=3)
    files = sorted((tmp_path / "ds").rglob("*.png"))
    samples = [Sample(files[i % len(files)], "with_mask") for i in range(260)]  # > 256: a pool
    plain = decode_faces(samples, 16, workers=1, progress=False)
    pooled = decode_faces(samples, 16, workers=2, progress=False, start_method="forkserver")
    assert pooled.ok.all() and np.array_equal(plain.images, pooled.images)


# ---------------------------------------------------------------- checkpoints


def _info(n=2):
    return ModelInfo("seed_cnn128", ["with_mask", "without_mask"][:n], 32, [0.5] * 3, [0.5] * 3)


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = create_model("seed_cnn128", 2, input_size=32).eval()
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, model, _info())
    loaded, info = load_checkpoint(path)
    assert info == _info()
    assert not loaded.training
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_bad_checkpoints_give_one_clear_error(tmp_path):
    from safetensors.torch import save_file

    model = create_model("seed_cnn128", 2, input_size=32)
    good = tmp_path / "good.safetensors"
    save_checkpoint(good, model, _info())
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(os.urandom(300))
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    wrong = tmp_path / "wrong.safetensors"
    save_checkpoint(wrong, create_model("seed_cnn128", 2, input_size=64), _info())
    data = wrong.read_bytes()
    # same weights, header claiming a different input size -> shapes do not match
    wrong.write_bytes(data.replace(b'\\"input_size\\": 64', b'\\"input_size\\": 32'))
    cases = {truncated: "not a readable", garbage: "not a readable",
             foreign: "not a maskwatch checkpoint", wrong: "do not match",
             tmp_path / "missing.safetensors": "not found"}
    for path, msg in cases.items():
        with pytest.raises(ModelError, match=msg) as err:
            load_checkpoint(path)
        assert "\n" not in str(err.value)


# ---------------------------------------------------------------- the CLI


def test_train_cli_end_to_end(tmp_path, capsys):
    data = make_dataset(tmp_path / "ds")
    out = tmp_path / "run"
    rc = cli_main(train_argv(data, out, tmp_path / "cache", "--epochs", "2"))
    assert rc == 0
    for name in ("best.safetensors", "last.safetensors", "last_state.safetensors",
                 "metrics.csv", "metrics.json", "curves.png", "config.json"):
        assert (out / name).is_file(), name
    rows = (out / "metrics.csv").read_text().strip().splitlines()
    assert rows[0].startswith("epoch,lr,train_loss,train_acc,val_loss")
    assert len(rows) == 3
    config = json.loads((out / "config.json").read_text())
    assert config["args"]["model"] == "seed_cnn128" and config["input_size"] == 32
    assert config["train_counts"]["with_mask"] + config["val_counts"]["with_mask"] == 12
    assert "best checkpoint" in capsys.readouterr().out
    from maskwatch.inference.classifier import Classifier

    clf = Classifier(out / "best.safetensors")
    assert clf.classes == ["with_mask", "without_mask"]
    assert clf.info.input_size == 32 and clf.info.extra["margin"] == 0.1
    # an existing run folder is never overwritten
    assert cli_main(train_argv(data, out, tmp_path / "cache", "--epochs", "1")) == 2
    assert "not empty" in capsys.readouterr().err


def test_sigmoid_head_and_early_stopping(tmp_path):
    data = make_dataset(tmp_path / "ds")
    out = tmp_path / "run"
    # lr 0 with a frozen backbone: validation loss never falls, so patience 1 stops at 2
    argv = train_argv(data, out, tmp_path / "cache", "--epochs", "5", "--patience", "1",
                      "--loss", "sigmoid", "--freeze-backbone")
    argv[argv.index("--lr") + 1] = "0"
    assert cli_main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped_early"] and summary["epochs"] == 2
    model, info = load_checkpoint(out / "best.safetensors")
    assert info.head == "sigmoid" and model.get_classifier().out_features == 1


def test_train_errors_are_one_line(tmp_path, capsys):
    assert cli_main(["train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r")]) == 2
    assert "error:" in capsys.readouterr().err
    with pytest.raises(MaskwatchError):
        from maskwatch.training.data import class_list

        class_list(4)


def test_unreadable_class_or_validation_stops_training(tmp_path, capsys):
    """Decoding that leaves a class (or the validation set) empty is an error, not a model
    trained on one class or a best checkpoint chosen by a loss of 0 over no face."""
    data = make_dataset(tmp_path / "ds", per_class=6)
    bad = tmp_path / "broken"
    for i in range(4):
        (bad / "train" / "without_mask").mkdir(parents=True, exist_ok=True)
        (bad / "train" / "without_mask" / f"x{i}.png").write_bytes(b"" if i % 2 else b"junk")
    for src in (data / "train" / "with_mask").iterdir():
        (bad / "train" / "with_mask").mkdir(parents=True, exist_ok=True)
        (bad / "train" / "with_mask" / src.name).write_bytes(src.read_bytes())
    cache = tmp_path / "cache"
    assert cli_main(train_argv(bad, tmp_path / "r1", cache, "--epochs", "1")) == 2
    err = capsys.readouterr().err
    assert "no readable training image of class without_mask" in err
    assert "Traceback" not in err
    assert cli_main(train_argv(data, tmp_path / "r2", cache, "--epochs", "1",
                               "--val-data", str(bad / "train" / "without_mask"))) == 2
    assert "validation image(s)" in capsys.readouterr().err
    assert cli_main(train_argv(data, tmp_path / "r3", cache, "--epochs", "1",
                               "--val-data", str(bad / "train"))) == 0


def test_train_says_what_the_data_left_out(tmp_path, capsys):
    """An unknown class folder, incorrect_mask faces of a 2-class run, an image under two
    classes and a validation split without a class are all said on stderr."""
    data = make_dataset(tmp_path / "ds", per_class=8)
    make_dataset(tmp_path / "ds", per_class=3, split="val", seed=1)
    for sub in ("sunglasses", "incorrect"):
        (data / "train" / sub).mkdir()
        for i in range(2):
            src = data / "train" / "without_mask" / f"without_mask_{i}.png"
            (data / "train" / sub / f"{sub}{i}.png").write_bytes(src.read_bytes())
    twin = data / "train" / "with_mask" / "with_mask_0.png"
    (data / "train" / "without_mask" / "twin.png").write_bytes(twin.read_bytes())
    for f in (data / "val" / "without_mask").iterdir():
        f.unlink()
    assert cli_main(train_argv(data, tmp_path / "run", tmp_path / "cache",
                               "--epochs", "1")) == 0
    err = capsys.readouterr().err
    assert "unknown class folder: 1" in err and "sunglasses" in err
    assert "left out 2 face(s)" in err and "--merge-incorrect" in err
    assert "1 face(s) are the same image" in err and "twin.png" in err
    assert "have no without_mask" in err


def test_resume_edge_cases_are_clear(tmp_path, capsys, monkeypatch):
    """--resume from another folder, of a run stopped before its first epoch, of a broken
    config or state, or with other options: it goes on, or one clear line."""
    import shutil

    make_dataset(tmp_path / "ds", per_class=6)
    monkeypatch.chdir(tmp_path)
    argv = train_argv(Path("ds"), Path("run"), tmp_path / "cache", "--epochs", "1")
    assert cli_main(argv) == 0  # a relative --data
    assert Path(json.loads(Path("run/config.json").read_text())["args"]["data"]).is_absolute()
    assert cli_main([*argv[:3], *argv[5:], "--resume", "run"]) == 0  # the same options
    resume = ["train", "--threads", "1", "--no-progress", "--cache-dir", str(tmp_path / "cache"),
              "--resume"]
    runs = {}
    for name in ("started", "state", "config"):
        runs[name] = tmp_path / name
        shutil.copytree(tmp_path / "run", runs[name])
    for f in runs["started"].iterdir():  # stopped while decoding or in epoch 1
        if f.name != "config.json":
            f.unlink()
    shutil.copy(runs["state"] / "best.safetensors", runs["state"] / "last_state.safetensors")
    (runs["config"] / "config.json").write_text('{"args": ')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    assert cli_main([*resume, str(runs["started"])]) == 0
    assert "starting it again" in capsys.readouterr().err
    assert (runs["started"] / "best.safetensors").is_file()
    for name, msg in (("state", "not the training state of this run"),
                      ("config", "not the config.json of a maskwatch train run")):
        assert cli_main([*resume, str(runs[name])]) == 2
        err = capsys.readouterr().err
        assert msg in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert cli_main([*resume, str(tmp_path / "run"), "--epochs", "3"]) == 2
    assert "--epochs 3 (the run has 1)" in capsys.readouterr().err


def test_interrupted_train_says_how_to_go_on(tmp_path, capsys, monkeypatch):
    import maskwatch.training.train as train_module

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    (run / "last_state.safetensors").write_bytes(b"")

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "main", interrupted)
    assert cli_main(["train", "-d", str(tmp_path), "-o", str(run)]) == 130
    err = capsys.readouterr().err
    assert f"finished epochs are kept; go on with: maskwatch train --resume {run}" in err


def test_training_state_given_as_a_model_says_so(tmp_path):
    from maskwatch.training.checkpoint import save_training_state

    model = create_model("seed_cnn128", 2, input_size=32)
    state = tmp_path / "last_state.safetensors"
    save_training_state(state, model, torch.optim.AdamW(model.parameters()), {"epoch": 1})
    with pytest.raises(ModelError, match="resume state of a training run"):
        load_checkpoint(state)


def _weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def test_resume_after_kill_mid_epoch_matches_uninterrupted_run(tmp_path, capsys):
    data = make_dataset(tmp_path / "ds", per_class=16)
    cache = tmp_path / "cache"
    epochs = ["--epochs", "3", "--augment", "standard", "--dropout", "0.3"]
    full = tmp_path / "full"
    assert cli_main(train_argv(data, full, cache, *epochs)) == 0

    killed = tmp_path / "killed"
    env = slow_env("maskwatch.training.augment:augment_batch", 0.25)  # one call per step
    proc = subprocess.Popen(
        [sys.executable, "-m", "maskwatch", *train_argv(data, killed, cache, *epochs)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 120
        while not (killed / "metrics.json").exists():
            assert proc.poll() is None, "training ended before its first checkpoint"
            assert time.time() < deadline
            time.sleep(0.05)
        time.sleep(0.6)  # a couple of steps into epoch 2 (4 steps of 0.25 s per epoch)
        assert proc.poll() is None
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)
    state = json.loads((killed / "metrics.json").read_text())
    assert [row["epoch"] for row in state] == [1]  # killed during the second epoch

    capsys.readouterr()
    assert cli_main(["train", "--resume", str(killed), "--threads", "1", "--no-progress",
                     "--cache-dir", str(cache)]) == 0
    err = capsys.readouterr().err
    assert "after epoch 1" in err and "epoch 1/3" not in err  # only epochs 2 and 3 ran
    for name in ("last.safetensors", "best.safetensors"):
        a, b = _weights(full / name), _weights(killed / name)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)
    hist_full = json.loads((full / "metrics.json").read_text())
    hist_resumed = json.loads((killed / "metrics.json").read_text())
    assert [r["train_loss"] for r in hist_full] == [r["train_loss"] for r in hist_resumed]


def test_low_resolution_augmentation_loses_detail_only_where_picked():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 3, 64, 64)
    every = augment.low_resolution(x, 1.0, (8, 8), g)
    none = augment.low_resolution(x, 0.0, (8, 8), g)
    assert torch.equal(none, x)
    # an 8 px round trip removes the pixel-level noise: neighbours become alike
    def roughness(t):
        return (t[..., 1:] - t[..., :-1]).abs().mean().item()

    assert roughness(every) < 0.3 * roughness(x)
    assert every.shape == x.shape
    # the "scene" preset includes it and keeps values in range
    out = augment.augment_batch(torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8),
                                augment.PRESETS["scene"], g)
    assert out.min() >= 0 and out.max() <= 1
