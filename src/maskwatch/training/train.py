"""The training loop, in the style of torchvision's reference scripts.

``load_data`` decodes faces once (cached), ``train_one_epoch`` and ``evaluate`` run one
pass, ``main`` ties them together with checkpoints, early stopping, metrics and curves.
Model, optimiser, criterion and sample order are built by separate functions so a
distributed launcher can replace them one by one.

Under ``torchrun`` (WORLD_SIZE > 1) the same loop runs data-parallel: see
``maskwatch.training.distributed``. Only rank 0 writes files, logs and progress bars.

Set ``MASKWATCH_STEP_DELAY`` (seconds) to sleep after every step (used by the tests that
interrupt a run).
"""

from __future__ import annotations

import argparse
import csv
import inspect
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from maskwatch.data.model import is_synthetic
from maskwatch.errors import MaskwatchError, ModelError
from maskwatch.files import write_atomic
from maskwatch.inference.modelfile import ModelInfo
from maskwatch.inference.preprocess import to_input
from maskwatch.models import checkpoint as ckpt
from maskwatch.training.augment import PRESETS, augment_batch, normalise
from maskwatch.training.data import (
    class_list,
    decode_faces,
    default_cache_dir,
    group_split,
    relabel,
)
from maskwatch.training.distributed import DistEnv, shard_order, wrap_model
from maskwatch.training.options import RUNTIME_OPTIONS

STATE_FILE = "last_state.safetensors"

_LOGGING = {"enabled": True}  # off on ranks other than 0


def log(msg: str) -> None:
    if _LOGGING["enabled"]:
        print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------- setup


def setup_runtime(args) -> DistEnv:
    """Determinism, then threads, the device and (under torchrun) the process group."""
    from maskwatch.training import distributed

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    return distributed.init(args.device, args.threads)


def resolve_input_size(args) -> int:
    from maskwatch.models import model_spec

    spec = model_spec(args.model)
    size = args.input_size or spec.input_size
    if size < spec.min_size:
        raise MaskwatchError(f"--input-size {size} is below {args.model}'s minimum {spec.min_size}")
    return size


# -------------------------------------------------------------------------- data


@dataclass
class Split:
    """Decoded faces of one split and their label indices."""

    images: np.ndarray
    labels: np.ndarray
    paths: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class TrainData:
    train: Split
    val: Split | None
    classes: list[str]
    summary: dict


def _load_split_samples(path: str, args):
    from maskwatch.data import load_dataset

    ds = load_dataset(path, mapping=args.mapping)
    return ds


def _decode_split(samples, labels, size, args, desc) -> Split:
    cache = None if args.no_cache else (args.cache_dir or default_cache_dir())
    faces = decode_faces(
        samples, size, args.margin, cache, args.workers, not args.no_progress, desc
    )
    if faces.errors:
        log(f"skipped {len(faces.errors)} unreadable image(s) in {desc}, e.g. {faces.errors[0]}")
    keep = np.flatnonzero(faces.ok)
    if len(keep) == len(samples):
        images = faces.images
    else:
        images = np.asarray(faces.images[keep])
    return Split(images, labels[keep], [str(samples[i].path) for i in keep])


def load_data(args, input_size: int) -> TrainData:
    """Read the dataset(s), choose train/val samples and decode them (cached)."""
    classes = class_list(args.classes)
    if args.loss == "sigmoid" and len(classes) != 2:
        raise MaskwatchError("--loss sigmoid needs --classes 2")
    ds = _load_split_samples(args.data, args)
    samples, labels = relabel(ds.samples, classes, args.merge_incorrect)
    if not samples:
        raise MaskwatchError(f"{args.data}: no sample of the classes {', '.join(classes)}")
    splits = np.asarray([s.split or "" for s in samples])
    val_idx = np.flatnonzero(splits == "val")
    train_idx = np.flatnonzero((splits == "train") | (splits == ""))
    if len(train_idx) == 0:
        raise MaskwatchError(f"{args.data}: no training samples (split 'train' or none)")
    val_samples, val_labels, val_source = [], np.zeros(0, np.int64), "none"
    if args.val_data:
        vds = _load_split_samples(args.val_data, args)
        vs, vl = relabel(vds.samples, classes, args.merge_incorrect)
        real = [i for i, s in enumerate(vs) if not is_synthetic(s)]  # never validate on them
        wanted = [i for i in real if vs[i].split in ("val", None)] or real
        val_samples, val_labels = [vs[i] for i in wanted], vl[wanted]
        val_source = f"--val-data {args.val_data}"
    elif len(val_idx):
        val_samples, val_labels = [samples[i] for i in val_idx], labels[val_idx]
        val_source = "the data's val split"
    elif args.val_fraction > 0:
        sub = [samples[i] for i in train_idx]
        tr, va = group_split(sub, labels[train_idx], args.val_fraction, args.seed)
        val_samples, val_labels = [sub[i] for i in va], labels[train_idx][va]
        train_idx = train_idx[tr]
        val_source = f"{args.val_fraction:g} of train by group (seed {args.seed})"
    train_samples, train_labels = [samples[i] for i in train_idx], labels[train_idx]
    missing = [c for i, c in enumerate(classes) if not (train_labels == i).any()]
    if missing:
        raise MaskwatchError(f"no training sample of class {', '.join(missing)}")
    train = _decode_split(train_samples, train_labels, input_size, args, "decoding train")
    val = None
    if len(val_samples):
        val = _decode_split(val_samples, val_labels, input_size, args, "decoding val")
    summary = {
        "classes": classes,
        "train_counts": {c: int((train.labels == i).sum()) for i, c in enumerate(classes)},
        "val_counts": (
            {c: int((val.labels == i).sum()) for i, c in enumerate(classes)} if val else {}
        ),
        "validation": val_source,
        "layout": ds.layout,
    }
    return TrainData(train, val, classes, summary)


def epoch_order(labels: np.ndarray, balance: str, seed: int, epoch: int) -> np.ndarray:
    """Sample indices for one epoch: a permutation, or a class-balanced draw."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    n = len(labels)
    if balance == "sampler":
        counts = np.bincount(labels, minlength=labels.max() + 1).astype(np.float64)
        weights = torch.from_numpy(1.0 / counts[labels])
        return torch.multinomial(weights, n, replacement=True, generator=g).numpy()
    return torch.randperm(n, generator=g).numpy()


class BatchLoader:
    """Yields (uint8 N x S x S x 3 tensor, label tensor) batches in a given order."""

    def __init__(self, split: Split, order: np.ndarray, batch_size: int, drop_small: bool = True):
        self.split, self.order, self.batch_size = split, order, batch_size
        self.drop_small = drop_small  # a batch of 1 breaks batch norm in training mode

    def __len__(self) -> int:
        n = len(self.order)
        full, rest = divmod(n, self.batch_size)
        return full + (1 if rest > (1 if self.drop_small else 0) else 0)

    def __iter__(self):
        for b in range(len(self)):
            idx = np.sort(self.order[b * self.batch_size : (b + 1) * self.batch_size])
            images = torch.from_numpy(np.ascontiguousarray(self.split.images[idx]))
            labels = torch.from_numpy(self.split.labels[idx])
            yield images, labels


# ------------------------------------------------------------------------- model


def arch_args(args, input_size: int) -> dict:
    """Builder options for the registry model from the command-line options."""
    from maskwatch.models import model_spec

    params = inspect.signature(model_spec(args.model).builder).parameters
    out = {}
    if "input_size" in params:
        out["input_size"] = input_size
    if args.dropout is not None:
        out["dropout"] = args.dropout
    return out


def create_model(args, num_outputs: int, input_size: int) -> nn.Module:
    """Build the model; load ImageNet weights or a maskwatch checkpoint; freeze if asked."""
    from maskwatch.models import create_model as build
    from maskwatch.models import freeze_backbone
    from maskwatch.models.weights import apply_state

    model = build(args.model, num_outputs, pretrained=args.weights, **arch_args(args, input_size))
    if args.init_from:
        tensors, header = ckpt.read_state(args.init_from)
        if header.get("arch") != args.model:
            raise ModelError(
                f"{args.init_from}: is a {header.get('arch')} checkpoint, not {args.model}"
            )
        apply_state(model, tensors, args.model, args.init_from)
    if args.freeze_backbone:
        freeze_backbone(model)
    return model


def set_train_mode(model: nn.Module, frozen_backbone: bool) -> None:
    """train() the model; a frozen backbone keeps its batch norms in eval mode."""
    model.train()
    if frozen_backbone:
        head = model.head_module()
        head_modules = set(head.modules())
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m not in head_modules:
                m.eval()


def create_optimizer(args, model: nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": args.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    cls = torch.optim.AdamW if args.optimizer == "adamw" else torch.optim.Adam
    return cls(groups, lr=args.lr)


class Criterion(nn.Module):
    """Cross-entropy (softmax head) or BCE on one logit (sigmoid head), class-weighted."""

    def __init__(self, head: str, class_weights: torch.Tensor | None, smoothing: float = 0.0):
        super().__init__()
        self.head = head
        if head == "sigmoid":
            pos = None
            if class_weights is not None:
                pos = (class_weights[1] / class_weights[0]).reshape(1)
            self.loss = nn.BCEWithLogitsLoss(pos_weight=pos)
        else:
            self.loss = nn.CrossEntropyLoss(weight=class_weights, label_smoothing=smoothing)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.head == "sigmoid":
            return self.loss(logits.reshape(-1), target.float())
        return self.loss(logits, target)


def create_criterion(args, train_labels: np.ndarray, num_classes: int, device) -> Criterion:
    weights = None
    if args.balance == "weights":
        counts = np.bincount(train_labels, minlength=num_classes).astype(np.float64)
        w = len(train_labels) / (num_classes * np.maximum(counts, 1))
        weights = torch.tensor(w, dtype=torch.float32, device=device)
    return Criterion(args.loss, weights, args.label_smoothing).to(device)


def predicted(logits: torch.Tensor, head: str) -> torch.Tensor:
    if head == "sigmoid":
        return (logits.reshape(-1) > 0).long()
    return logits.argmax(1)


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    """Linear warm-up to ``base`` then cosine decay to 1% of it."""
    if warmup > 0 and step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


# ---------------------------------------------------------------------- one epoch


@dataclass
class Schedule:
    steps_per_epoch: int
    total: int
    warmup: int
    base_lr: float


def train_one_epoch(
    model, criterion, optimizer, loader, device, epoch: int, args, schedule: Schedule,
    mean, std, env: DistEnv | None = None,
) -> dict:
    """One pass over ``loader`` with augmentation; returns loss, accuracy and speed.

    Under DDP ``model`` is the wrapper, ``loader`` this rank's shard, and the returned
    figures are summed over all ranks.
    """
    env = env or DistEnv()
    aug = PRESETS[args.augment]
    rank_seed = 1_000_003 * env.rank  # 0 on one process: unchanged streams
    g = torch.Generator().manual_seed(args.seed * 7_919 + epoch + rank_seed)
    torch.manual_seed(args.seed * 104_729 + epoch + rank_seed)  # dropout
    model.train()
    set_train_mode(getattr(model, "module", model), args.freeze_backbone)
    delay = float(os.environ.get("MASKWATCH_STEP_DELAY", "0") or 0)
    total_loss, correct, seen = 0.0, 0, 0
    start = time.perf_counter()
    from tqdm import tqdm

    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{args.epochs}", unit="batch",
               disable=args.no_progress, file=sys.stderr, leave=False)
    for i, (images, labels) in enumerate(bar):
        lr = lr_at(epoch * schedule.steps_per_epoch + i, schedule.total, schedule.warmup,
                   schedule.base_lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        images, labels = images.to(device, non_blocking=True), labels.to(device)
        x = normalise(augment_batch(images, aug, g), mean, std)
        logits = model(x)
        loss = criterion(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        n = labels.shape[0]
        total_loss += float(loss.detach()) * n
        correct += int((predicted(logits.detach(), args.loss) == labels).sum())
        seen += n
        bar.set_postfix(loss=f"{total_loss / seen:.4f}", lr=f"{lr:.2e}")
        if delay:
            time.sleep(delay)
    elapsed = time.perf_counter() - start
    if env.distributed:
        total_loss, correct, seen = env.all_reduce_sum([total_loss, correct, seen]).tolist()
    return {
        "train_loss": total_loss / max(seen, 1),
        "train_acc": correct / max(seen, 1),
        "lr": optimizer.param_groups[0]["lr"],
        "train_images_per_s": seen / max(elapsed, 1e-9),
        "train_seconds": elapsed,
    }


@torch.inference_mode()
def evaluate(model, criterion, split: Split, device, args, mean, std,
             env: DistEnv | None = None) -> dict:
    """Loss, accuracy and balanced accuracy on a split (no augmentation).

    Under DDP each rank scores every W-th batch (the same batches one process would
    use) and the sums are reduced, so the figures equal a one-process evaluation.
    ``model`` is the plain model, not the DDP wrapper.
    """
    env = env or DistEnv()
    model.eval()
    classes = int(split.labels.max()) + 1 if len(split) else 1
    total_loss = 0.0
    hits, counts = np.zeros(classes), np.zeros(classes)
    n = len(split)
    starts = range(0, n, args.eval_batch_size)[env.rank::env.world_size]
    for start in starts:
        batch = np.asarray(split.images[start : start + args.eval_batch_size])
        y = split.labels[start : start + len(batch)]
        labels = torch.from_numpy(y).to(device)
        x = torch.from_numpy(to_input(batch, mean, std)).to(device)
        logits = model(x)
        total_loss += float(criterion(logits, labels)) * len(batch)
        pred = predicted(logits, args.loss).cpu().numpy()
        hits += np.bincount(y[pred == y], minlength=classes)[:classes]
        counts += np.bincount(y, minlength=classes)[:classes]
    sums = env.all_reduce_sum([total_loss, *hits, *counts])
    total_loss, hits, counts = sums[0], sums[1 : 1 + classes], sums[1 + classes :]
    present = counts > 0
    recalls = hits[present] / counts[present]
    return {
        "val_loss": float(total_loss / max(n, 1)),
        "val_acc": float(hits.sum() / n) if n else 0.0,
        "val_balanced_acc": float(np.mean(recalls)) if len(recalls) else 0.0,
    }


# ---------------------------------------------------------------- state and outputs


def model_info(args, classes, input_size, mean, std, extra: dict) -> ModelInfo:
    return ModelInfo(
        name=args.model, classes=list(classes), input_size=input_size, mean=list(mean),
        std=list(std), threshold=0.5, head=args.loss,
        # evaluate warns when it is given data listed here
        extra={"margin": args.margin, "trained_on": [
            str(Path(d).resolve()) for d in (args.data, args.val_data) if d], **extra},
    )


def save_training_state(path: Path, model, optimizer, state: dict) -> None:
    """Everything to resume: model, optimiser tensors, RNG states; the rest as JSON."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    scalars: dict = {}
    for pid, pstate in opt["state"].items():
        for key, value in pstate.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{pid}.{key}"] = value
            else:
                scalars.setdefault(str(pid), {})[key] = value
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    header = dict(state)
    header["optimizer"] = {"param_groups": opt["param_groups"], "scalars": scalars}
    ckpt.save_state(path, tensors, header)


def load_training_state(path: Path, model, optimizer) -> dict:
    tensors, header = ckpt.read_state(path)
    model_sd = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    model.load_state_dict(model_sd, strict=True)
    opt_state: dict = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, pid, name = key.split(".", 2)
            opt_state.setdefault(int(pid), {})[name] = value
    for pid, values in header["optimizer"]["scalars"].items():
        opt_state.setdefault(int(pid), {}).update(values)
    optimizer.load_state_dict(
        {"state": opt_state, "param_groups": header["optimizer"]["param_groups"]}
    )
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
    return header


METRIC_COLUMNS = [
    "epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "val_balanced_acc",
    "train_images_per_s", "train_seconds",
]


def write_metrics(out: Path, history: list[dict]) -> None:
    """metrics.csv, metrics.json and curves.png from the per-epoch history."""
    def write_csv(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, METRIC_COLUMNS, extrasaction="ignore")
            w.writeheader()
            for row in history:
                w.writerow({k: row.get(k, "") for k in METRIC_COLUMNS})

    # each file whole or not at all: a full disk fails the run in one line
    write_atomic(out / "metrics.csv", write_csv, "metrics")
    write_atomic(out / "metrics.json",
                 lambda tmp: tmp.write_text(json.dumps(history, indent=2) + "\n"), "metrics")
    write_atomic(out / "curves.png", lambda tmp: plot_curves(tmp, history), "plot")


def plot_curves(path: Path, history: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, title in ((axes[0], "loss", "loss"), (axes[1], "acc", "accuracy")):
        ax.plot(epochs, [h[f"train_{key}"] for h in history], "o-", label="train")
        if any(f"val_{key}" in h for h in history):
            ax.plot(epochs, [h.get(f"val_{key}", float("nan")) for h in history], "o-",
                    label="validation")
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)


def _jsonable(args) -> dict:
    return {k: v for k, v in vars(args).items() if k != "func"}


def prepare_run_dir(args, create: bool = True) -> tuple[argparse.Namespace, Path, bool]:
    """(effective args, run folder, resuming?); refuses to reuse a finished run's folder.

    ``create=False`` (ranks other than 0, after rank 0 made the folder) skips the
    emptiness check and the mkdir.
    """
    if args.resume:
        out = Path(args.resume)
        cfg_path = out / "config.json"
        if not cfg_path.is_file() or not (out / STATE_FILE).is_file():
            raise MaskwatchError(f"{out}: no run to resume (needs config.json and {STATE_FILE})")
        saved = json.loads(cfg_path.read_text())["args"]
        for key in RUNTIME_OPTIONS:
            saved[key] = getattr(args, key, saved.get(key))
        merged = argparse.Namespace(**{**_jsonable(args), **saved})
        merged.out = str(out)
        return merged, out, True
    if not args.data or not args.out:
        raise MaskwatchError("--data and --out are required (or --resume RUN_DIR)")
    out = Path(args.out)
    if not create:
        return args, out, False
    if out.exists() and any(out.iterdir()):
        raise MaskwatchError(
            f"{out}: folder exists and is not empty; choose a new --out or --resume it"
        )
    out.mkdir(parents=True, exist_ok=True)
    return args, out, False


# -------------------------------------------------------------------------- main


def main(args) -> dict:
    """Train a model as ``args`` says; returns the final summary (also in summary.json).

    Under torchrun every rank calls this; all return the same summary.
    """
    env = setup_runtime(args)
    try:
        return _main(args, env)
    finally:
        _LOGGING["enabled"] = True
        env.close()


def _main(args, env: DistEnv) -> dict:
    if not env.is_main:
        _LOGGING["enabled"] = False
        args.no_progress = True
    args, out, resuming = env.main_first(lambda first: prepare_run_dir(args, create=first))
    device = env.device
    from maskwatch.models import model_spec

    spec = model_spec(args.model)
    input_size = resolve_input_size(args)
    mean, std = list(spec.mean), list(spec.std)
    # rank 0 decodes (and caches) first; the others then read the cache
    data = env.main_first(lambda first: load_data(args, input_size))
    classes = data.classes
    num_outputs = 1 if args.loss == "sigmoid" else len(classes)
    if resuming:  # weights come from the state file; do not download them again
        args.weights, args.init_from = None, None

    def build(first: bool) -> nn.Module:
        torch.manual_seed(args.seed)  # model initialisation, the same on every rank
        return create_model(args, num_outputs, input_size)

    model = env.main_first(build).to(device)  # rank 0 fetches any weights first
    optimizer = create_optimizer(args, model)
    criterion = create_criterion(args, data.train.labels, len(classes), device)
    shard_size = len(shard_order(np.arange(len(data.train)), env.rank, env.world_size))
    steps = len(BatchLoader(data.train, np.arange(shard_size), args.batch_size))
    if steps == 0:
        raise MaskwatchError("too few training samples for one batch")
    schedule = Schedule(steps, steps * args.epochs, int(round(args.warmup_epochs * steps)),
                        args.lr)
    state = {"epoch": 0, "history": [], "best_val_loss": None, "best_epoch": None,
             "bad_epochs": 0, "stopped_early": False}
    if resuming:  # every rank loads the same last state
        state.update(load_training_state(out / STATE_FILE, model, optimizer))
        state.pop("optimizer", None)
        saved_world = state.pop("world_size", 1)
        log(f"resuming {out} after epoch {state['epoch']}")
        if saved_world != env.world_size:
            log(f"note: the run used {saved_world} process(es), now {env.world_size}: "
                "the shards and per-process batches differ from the interrupted run")
    elif env.is_main:
        config = {"args": _jsonable(args), "input_size": input_size, "mean": mean, "std": std,
                  "model": {"arch": args.model, "outputs": num_outputs,
                            "arch_args": model.maskwatch_arch["args"]},
                  "augment": (PRESETS[args.augment].to_dict() if PRESETS[args.augment] else None),
                  "device": str(device), "torch": torch.__version__,
                  "world_size": env.world_size, **data.summary}
        (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        log(f"training {args.model} on {len(data.train)} faces "
            f"({data.summary['train_counts']}), validating on "
            f"{len(data.val) if data.val else 0} ({data.summary['validation']}), {device}"
            + (f", {env.world_size} processes x batch {args.batch_size}"
               if env.distributed else ""))
    net = wrap_model(model, env)  # DDP when distributed; ``model`` stays the plain one

    for epoch in range(state["epoch"], args.epochs):
        if state["stopped_early"]:
            break
        order = epoch_order(data.train.labels, args.balance, args.seed, epoch)  # same seed
        order = shard_order(order, env.rank, env.world_size)  # on every rank; disjoint parts
        loader = BatchLoader(data.train, order, args.batch_size)
        row = {"epoch": epoch + 1}
        row.update(train_one_epoch(net, criterion, optimizer, loader, device, epoch, args,
                                   schedule, mean, std, env))
        env.sync_buffers(model)  # batch-norm statistics: the mean over the ranks
        if data.val is not None:
            row.update(evaluate(model, criterion, data.val, device, args, mean, std, env))
        state["history"].append(row)
        state["epoch"] = epoch + 1
        monitored = row.get("val_loss", row["train_loss"])
        improved = state["best_val_loss"] is None or monitored < state["best_val_loss"]
        extra = {k: round(v, 6) for k, v in row.items() if isinstance(v, float)}
        extra["epoch"] = epoch + 1
        info = model_info(args, classes, input_size, mean, std, extra)
        if improved:
            state.update(best_val_loss=monitored, best_epoch=epoch + 1, bad_epochs=0)
        else:
            state["bad_epochs"] += 1
        if args.patience and data.val is not None and state["bad_epochs"] >= args.patience:
            state["stopped_early"] = True
        env.barrier()  # every rank finished the epoch
        if env.is_main:
            if improved:
                ckpt.save_checkpoint(out / "best.safetensors", model, info)
            ckpt.save_checkpoint(out / "last.safetensors", model, info)
            save_training_state(out / STATE_FILE, model, optimizer,
                                {**state, "world_size": env.world_size})
            write_metrics(out, state["history"])
        env.barrier()  # the epoch's files are complete before any rank goes on
        log(
            f"epoch {epoch + 1}/{args.epochs}: train loss {row['train_loss']:.4f} "
            f"acc {row['train_acc']:.3f}"
            + (f", val loss {row['val_loss']:.4f} acc {row['val_acc']:.3f}"
               if "val_loss" in row else "")
            + f", {row['train_images_per_s']:.0f} img/s" + (" *" if improved else "")
        )
        if state["stopped_early"]:
            log(f"early stop: no lower validation loss for {args.patience} epochs")
    summary = {
        "run": str(out), "epochs": state["epoch"], "best_epoch": state["best_epoch"],
        "best_val_loss": state["best_val_loss"], "stopped_early": state["stopped_early"],
        "best": str(out / "best.safetensors"), "last": str(out / "last.safetensors"),
        "final": state["history"][-1] if state["history"] else {},
    }
    if env.is_main:
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
