"""Errors that the CLI reports as one clear line."""


class MaskwatchError(Exception):
    """A problem with the user's input or environment, reported without a traceback."""


class ImageError(MaskwatchError):
    """An image file that cannot be read."""


class LayoutError(MaskwatchError):
    """A dataset folder that matches no known layout."""


class ModelError(MaskwatchError):
    """A model or checkpoint file that cannot be loaded."""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of ``exc``'s message (at most ``limit`` characters), or its type's
    name when it has none: the detail of a one-line error about a library's exception."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]
