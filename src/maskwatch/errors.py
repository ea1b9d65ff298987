"""Errors that the CLI reports as one clear line."""


class MaskwatchError(Exception):
    """A problem with the user's input or environment, reported without a traceback."""


class ImageError(MaskwatchError):
    """An image file that cannot be read."""


class LayoutError(MaskwatchError):
    """A dataset folder that matches no known layout."""


class ModelError(MaskwatchError):
    """A model or checkpoint file that cannot be loaded."""
