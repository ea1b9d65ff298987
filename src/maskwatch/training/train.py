"""The training loop, in the style of torchvision's reference scripts.

``train_one_epoch`` and ``evaluate`` run one pass; ``main`` ties them together with
checkpoints, early stopping, metrics and curves. The pieces live beside it: data and
batches in ``data.py``, loss in ``losses.py``, optimiser and schedule in ``optim.py``,
resume state in ``checkpoint.py``, metrics and plots in ``logs.py``, options and the run
folder in ``options.py``.

Under ``torchrun`` (WORLD_SIZE > 1) the same loop runs data-parallel: see
``maskwatch.training.distributed``. Only rank 0 writes files, logs and progress bars.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from maskwatch.errors import MaskwatchError, ModelError
from maskwatch.inference.modelfile import ModelInfo
from maskwatch.inference.preprocess import to_input
from maskwatch.models import checkpoint as ckpt
from maskwatch.training.augment import PRESETS, augment_batch, normalise
from maskwatch.training.checkpoint import load_training_state, save_training_state
from maskwatch.training.data import BatchLoader, Split, epoch_order, load_data
from maskwatch.training.distributed import DistEnv, shard_order, wrap_model
from maskwatch.training.logs import log, set_logging, write_metrics
from maskwatch.training.losses import create_criterion, predicted
from maskwatch.training.optim import Schedule, create_optimizer, lr_at
from maskwatch.training.options import STATE_FILE, args_dict, prepare_run_dir

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


# ---------------------------------------------------------------------- one epoch


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
        value = float(loss.detach())
        if not math.isfinite(value):  # nothing after this is worth keeping
            raise MaskwatchError(
                f"training diverged: the loss became {value} at epoch {epoch + 1}, batch "
                f"{i + 1} (try a lower --lr); checkpoints of earlier epochs are kept")
        total_loss += value * n
        correct += int((predicted(logits.detach(), args.loss) == labels).sum())
        seen += n
        bar.set_postfix(loss=f"{total_loss / seen:.4f}", lr=f"{lr:.2e}")
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


def model_info(args, classes, input_size, mean, std, extra: dict) -> ModelInfo:
    """The metadata saved with each checkpoint (and later beside the exported ONNX)."""
    return ModelInfo(
        name=args.model, classes=list(classes), input_size=input_size, mean=list(mean),
        std=list(std), threshold=0.5, head=args.loss,
        # evaluate warns when it is given data listed here
        extra={"margin": args.margin, "trained_on": [
            str(Path(d).resolve()) for d in (args.data, args.val_data) if d], **extra},
    )


# -------------------------------------------------------------------------- main


def main(args) -> dict:
    """Train a model as ``args`` says; returns the final summary (also in summary.json).

    Under torchrun every rank calls this; all return the same summary.
    """
    env = setup_runtime(args)
    try:
        return _main(args, env)
    finally:
        set_logging(True)
        env.close()


def _main(args, env: DistEnv) -> dict:
    if not env.is_main:
        set_logging(False)
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
        config = {"args": args_dict(args), "input_size": input_size, "mean": mean, "std": std,
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
