"""Command-line options of ``maskwatch train`` and the run folder they are kept in (no
heavy imports here)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from maskwatch.argtypes import margin, non_negative_int, number, positive_int
from maskwatch.errors import MaskwatchError
from maskwatch.training.logs import log

#: Options that may differ when a run is resumed (they do not change the results).
RUNTIME_OPTIONS = ("device", "threads", "workers", "cache_dir", "no_progress", "resume")
#: The resume state in a run folder (see ``maskwatch.training.checkpoint``).
STATE_FILE = "last_state.safetensors"


def add_train_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add every ``maskwatch train`` option to ``p``."""
    d = p.add_argument_group("data")
    d.add_argument("-d", "--data",
                   help="dataset folder, CSV or manifest (any layout maskwatch reads)")
    d.add_argument("--val-data", default=None, help="separate validation dataset (optional)")
    d.add_argument(
        "--val-fraction", type=number(0.0, below=1.0), default=0.1,
        help="share of train carved out for validation, by sample group, when the data has "
        "no val split (0: no validation)",
    )
    d.add_argument("--classes", type=int, choices=(2, 3), default=2,
                   help="2: with/without mask; 3: adds incorrect_mask")
    d.add_argument("--merge-incorrect", action="store_true",
                   help="with --classes 2, count incorrect_mask faces as without_mask "
                   "(default: drop them)")
    d.add_argument("--margin", type=margin, default=0.1,
                   help="grow face boxes by this fraction per side (datasets with boxes)")
    d.add_argument("--mapping", default=None,
                   help="dataset class name -> label, e.g. 'masked=with_mask,bare=without_mask'")
    d.add_argument("--cache-dir", default=None,
                   help="where decoded faces are cached (default: ~/.cache/maskwatch)")
    d.add_argument("--no-cache", action="store_true", help="decode images without caching")
    d.add_argument("--workers", type=non_negative_int, default=0,
                   help="processes that decode images (0: one per CPU core)")

    m = p.add_argument_group("model")
    m.add_argument("-m", "--model", default="mobilenet_v2",
                   help="architecture from the registry (see --list-models)")
    m.add_argument("--list-models", action="store_true", help="list the architectures and exit")
    m.add_argument("--weights", default=None,
                   help="initial weights: a .pth/.safetensors file, an https URL, or "
                   "'imagenet' (the published weights; installed copy used when present)")
    m.add_argument("--init-from", default=None,
                   help="fine-tune from a maskwatch checkpoint (.safetensors)")
    m.add_argument("--freeze-backbone", action="store_true",
                   help="train only the classifier head (frozen-base recipe)")
    m.add_argument("--input-size", type=positive_int, default=None,
                   help="face size in pixels (default: the model's)")
    m.add_argument("--dropout", type=number(0.0, below=1.0), default=None,
                   help="dropout before the classifier (default: the model's)")
    m.add_argument("--loss", choices=("softmax", "sigmoid"), default="softmax",
                   help="softmax + cross-entropy, or one logit + sigmoid/BCE (2 classes)")

    o = p.add_argument_group("optimisation")
    o.add_argument("--epochs", type=positive_int, default=10, help="number of epochs")
    o.add_argument("--batch-size", type=positive_int, default=64, help="training batch size")
    o.add_argument("--optimizer", choices=("adamw", "adam"), default="adamw", help="optimiser")
    o.add_argument("--lr", type=number(0.0), default=1e-3, help="peak learning rate")
    o.add_argument("--weight-decay", type=number(0.0), default=1e-4, help="weight decay")
    o.add_argument("--warmup-epochs", type=number(0.0), default=1.0,
                   help="linear warm-up length in epochs, then cosine decay")
    o.add_argument("--label-smoothing", type=number(0.0, 1.0), default=0.0,
                   help="label smoothing (softmax loss)")
    o.add_argument("--balance", choices=("weights", "sampler", "none"), default="weights",
                   help="counter class imbalance with loss weights or a balanced sampler")
    o.add_argument("--augment", choices=("none", "light", "standard", "strong", "scene"),
                   default="standard", help="augmentation strength")
    o.add_argument("--patience", type=non_negative_int, default=5,
                   help="stop after this many epochs without a lower validation loss (0: never)")
    o.add_argument("--seed", type=non_negative_int, default=0,
                   help="random seed (split, order, augmentation)")

    r = p.add_argument_group("run")
    r.add_argument("-o", "--out", default=None,
                   help="run folder for checkpoints, metrics and plots")
    r.add_argument("--resume", default=None, metavar="RUN_DIR",
                   help="continue an interrupted run from its last checkpoint")
    r.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: CUDA when available")
    r.add_argument("--threads", type=non_negative_int, default=0,
                   help="CPU threads for torch (0: default)")
    r.add_argument("--eval-batch-size", type=positive_int, default=128,
                   help="validation batch size")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


#: Options naming files that ``--resume`` reads again: kept as absolute paths, so that a
#: run resumes from any working folder.
PATH_OPTIONS = ("data", "val_data")


def args_dict(args) -> dict:
    """The options as a JSON-ready dict (config.json); dataset paths made absolute."""
    out = {k: v for k, v in vars(args).items() if k != "func"}
    for key in PATH_OPTIONS:
        if out.get(key):
            out[key] = str(Path(out[key]).resolve())
    return out


def _saved_args(out: Path) -> dict:
    """The options a run folder's config.json records; one clear error when unreadable."""
    cfg_path = out / "config.json"
    try:
        saved = json.loads(cfg_path.read_text())["args"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        saved = None
    if not isinstance(saved, dict) or not saved.get("data"):
        raise MaskwatchError(f"{cfg_path}: not the config.json of a maskwatch train run")
    return saved


def _changed_options(args, saved: dict) -> list[str]:
    """Options given with --resume whose value is neither the default nor the run's."""
    defaults = vars(add_train_arguments(argparse.ArgumentParser()).parse_args([]))
    changed = []
    for key, value in vars(args).items():
        if key in RUNTIME_OPTIONS or key in ("out", "func") or key not in saved:
            continue
        was = saved[key]
        if key in PATH_OPTIONS and value and was:  # relative to here in older runs
            value, was = str(Path(value).resolve()), str(Path(was).resolve())
        if value != defaults.get(key) and value != was:
            changed.append(f"--{key.replace('_', '-')} {value} (the run has {saved[key]})")
    return changed


def prepare_run_dir(args, create: bool = True) -> tuple[argparse.Namespace, Path, bool]:
    """(effective args, run folder, resuming?); refuses to reuse a finished run's folder.

    ``create=False`` (ranks other than 0, after rank 0 made the folder) skips the
    emptiness check and the mkdir.
    """
    if args.resume:
        out = Path(args.resume)
        if not (out / "config.json").is_file():
            raise MaskwatchError(f"{out}: no run to resume (needs config.json and {STATE_FILE})")
        saved = _saved_args(out)
        changed = _changed_options(args, saved)
        if changed:
            raise MaskwatchError(
                f"--resume continues {out} with its own options, not {'; '.join(changed)}; "
                "to train on, start a new run with --init-from "
                f"{out / 'last.safetensors'}")
        for key in RUNTIME_OPTIONS:
            saved[key] = getattr(args, key, saved.get(key))
        merged = argparse.Namespace(**{**args_dict(args), **saved})
        merged.out = str(out)
        if not (out / STATE_FILE).is_file():
            if any((out / name).exists() for name in ("best.safetensors", "last.safetensors")):
                raise MaskwatchError(f"{out}: {STATE_FILE} is missing; the run cannot go on "
                                     "(start a new one, --init-from its last.safetensors)")
            log(f"{out}: stopped before its first epoch ended; starting it again")
            merged.resume = None
            return merged, out, False
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
