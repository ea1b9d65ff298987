"""The canonical class names, the spellings datasets use for them, and which faces count."""

from __future__ import annotations

import re

WITH_MASK = "with_mask"
WITHOUT_MASK = "without_mask"
INCORRECT_MASK = "incorrect_mask"
CANONICAL = (WITH_MASK, WITHOUT_MASK, INCORRECT_MASK)

_ALIASES = {
    WITH_MASK: {"withmask", "mask", "masked", "with", "face_with_mask", "yes", "good"},
    WITHOUT_MASK: {
        "withoutmask", "nomask", "no_mask", "no-mask", "without", "unmasked",
        "face_no_mask", "face_without_mask", "no", "bad", "nonmask", "non_mask",
    },
    INCORRECT_MASK: {
        "incorrectmask", "incorrect_mask", "mask_weared_incorrect", "mask_worn_incorrectly",
        "maskwearedincorrect", "incorrect", "improper", "improper_mask",
        "face_with_mask_incorrect", "mask_incorrect", "wrong_mask",
    },
}


def _key(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", name.strip().lower())


_LOOKUP: dict[str, str] = {}
for _canon, _names in _ALIASES.items():
    _LOOKUP[_canon] = _canon
    for _n in _names:
        _LOOKUP[_key(_n)] = _canon
        _LOOKUP[_key(_n).replace("_", "")] = _canon


def normalise_label(name: str, mapping: dict[str, str] | None = None) -> str | None:
    """Return the canonical label for a dataset's class name, or None if unknown.

    ``mapping`` (dataset name -> canonical name) takes precedence over the built-in
    spellings; a mapping value of ``""`` drops that class.
    """
    if mapping:
        for src, dst in mapping.items():
            if _key(src) == _key(name):
                return dst or None
    key = _key(name)
    return _LOOKUP.get(key) or _LOOKUP.get(key.replace("_", ""))


def is_counted(face) -> bool:
    """Whether a face counts in counts, shares, alerts and monitoring: False only for one
    marked ``counted`` False (an uncertain face box, see ``Detector``). Takes a face
    object or its JSON record; faces without the mark count."""
    if isinstance(face, dict):
        return face.get("counted", True) is not False
    return bool(getattr(face, "counted", True))


def sort_classes(labels) -> list[str]:
    """Sort labels in canonical order (with_mask, without_mask, incorrect_mask)."""
    return sorted(set(labels), key=lambda c: CANONICAL.index(c) if c in CANONICAL else 99)
