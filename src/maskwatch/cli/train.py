"""``maskwatch train``: train a face classifier."""

from __future__ import annotations

import os
import sys

ORDER = 20

DESCRIPTION = """Train a face-mask classifier on any dataset layout maskwatch reads.

Faces are decoded once into a cache; each epoch augments them on the fly. The run folder
gets best.safetensors (lowest validation loss), last.safetensors + last_state.safetensors
(for --resume), metrics.csv/json, curves.png and config.json.

Several GPUs or machines: start the same command with torchrun (DistributedDataParallel,
NCCL on GPUs, gloo on CPU). --batch-size is per process; only rank 0 writes files."""

EXAMPLES = [
    "maskwatch train -d faces.csv -o runs/mnv2 -m mobilenet_v2 --weights imagenet "
    "--input-size 128 --epochs 15",
    "maskwatch train --resume runs/mnv2",
    "torchrun --nproc_per_node 4 -m maskwatch train -d faces.csv -o runs/mnv2 ...",
]


def register(subparsers) -> None:
    from maskwatch.cli.common import add_command
    from maskwatch.training.options import add_train_arguments

    p = add_command(subparsers, "train", help="train a face classifier", description=DESCRIPTION,
                    examples=EXAMPLES)
    add_train_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    if args.list_models:
        from maskwatch.models import list_models, model_spec

        for name in list_models():
            spec = model_spec(name)
            print(f"{name:20s} {spec.input_size:4d} px  {spec.description}")
        return 0
    from maskwatch.training.train import main

    try:
        summary = main(args)
    except KeyboardInterrupt:
        _resume_hint(args.resume or args.out)
        raise
    if os.environ.get("RANK", "0") not in ("", "0"):
        return 0  # under torchrun only rank 0 reports
    loss = summary["best_val_loss"]
    print(
        f"best checkpoint: {summary['best']} (epoch {summary['best_epoch']}, "
        f"loss {loss:.4f})" if loss is not None else f"run folder: {summary['run']}"
    )
    return 0


def _resume_hint(run: str | None) -> None:
    """After Ctrl+C: say what was kept and how to go on (rank 0 only)."""
    from pathlib import Path

    from maskwatch.training.options import STATE_FILE

    if not run or os.environ.get("RANK", "0") not in ("", "0"):
        return
    if not (Path(run) / "config.json").is_file():
        print("maskwatch: nothing was saved yet; run the command again", file=sys.stderr)
        return
    kept = ("the finished epochs are kept" if (Path(run) / STATE_FILE).is_file()
            else "no epoch had finished")
    print(f"maskwatch: {kept}; go on with: maskwatch train --resume {run}", file=sys.stderr)
