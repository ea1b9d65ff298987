"""Safe image reading (one clear error per bad file, upright RGB out) and input listing."""

from __future__ import annotations

import glob
import io
import math
import os
import stat
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from maskwatch.errors import ImageError, MaskwatchError

#: HEIC/HEIF (what iPhones save photos as): read through ``pillow-heif``.
HEIF_SUFFIXES = {".heic", ".heif"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".jfif",
                  *HEIF_SUFFIXES}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"}

#: Largest image accepted, in pixels (a 10,000 x 10,000 photo fits). Override with
#: MASKWATCH_MAX_PIXELS. Larger files are refused as possible decompression bombs.
MAX_PIXELS = int(os.environ.get("MASKWATCH_MAX_PIXELS", 120_000_000))
#: Largest file read whole into memory (the audit hashes every file), in bytes.
MAX_FILE_BYTES = int(float(os.environ.get("MASKWATCH_MAX_FILE_MB", 256)) * 1024 * 1024)


#: Inputs named by URI are read through pyarrow's filesystems (installed with
#: ``maskwatch[ray]``); file:// is the local stand-in the tests use.
URI_SCHEMES = ("s3://", "gs://", "gcs://", "file://")


def is_video_path(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def is_uri(text: str | Path) -> bool:
    """True for an object-store (or file://) URI: ``s3://bucket/key``, ``gs://...``."""
    return isinstance(text, str) and text.lower().startswith(URI_SCHEMES)


def _filesystem(uri: str):
    try:
        from pyarrow import fs
    except ImportError:
        raise MaskwatchError(f"{uri}: object-store inputs need pyarrow: "
                             "pip install 'maskwatch[ray]'") from None
    try:
        return fs, *fs.FileSystem.from_uri(uri)
    except (OSError, ValueError) as exc:
        raise MaskwatchError(f"{uri}: {str(exc).splitlines()[0][:200]}") from None


def read_uri(uri: str) -> bytes:
    """The bytes of an object-store file, through pyarrow (credentials from the usual
    environment variables and config files of S3 or Google Cloud)."""
    _, filesystem, path = _filesystem(uri)
    try:
        with filesystem.open_input_stream(path) as f:
            return f.read()
    except FileNotFoundError:
        raise ImageError(f"{uri}: no such file") from None
    except OSError as exc:
        raise ImageError(f"{uri}: cannot read ({str(exc).splitlines()[0][:200]})") from None


def list_uri(uri: str, suffixes: set[str]) -> list[str]:
    """Files under an object-store prefix (recursive, sorted) whose suffix is in
    ``suffixes``; a URI naming one file comes back as it is."""
    fs, filesystem, path = _filesystem(uri)
    try:
        info = filesystem.get_file_info(path)
        if info.type == fs.FileType.File:
            return [uri]
        if info.type == fs.FileType.NotFound:
            raise MaskwatchError(f"{uri}: no such file or prefix")
        found = filesystem.get_file_info(fs.FileSelector(path, recursive=True))
    except OSError as exc:
        raise MaskwatchError(f"{uri}: cannot list ({str(exc).splitlines()[0][:200]})") from None
    scheme = uri.split("://", 1)[0]
    query = "?" + uri.split("?", 1)[1] if "?" in uri else ""  # e.g. ?endpoint_override=...
    return sorted(f"{scheme}://{f.path}{query}" for f in found
                  if f.type == fs.FileType.File and Path(f.path).suffix.lower() in suffixes)


def files_under(folder: Path) -> list[Path]:
    """The files in ``folder`` and its subfolders, sorted as paths sort; like
    ``sorted(p for p in folder.rglob("*") if p.is_file())`` (links to files count, linked
    folders are not entered, unreadable folders are skipped) without a stat of every file.
    A broken link is listed too, so that the caller reports it instead of losing it."""
    found: list[str] = []
    pending = [os.fspath(folder)]
    while pending:
        try:
            with os.scandir(pending.pop()) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            pending.append(entry.path)
                        elif entry.is_file() or (entry.is_symlink()
                                                 and not os.path.exists(entry.path)):
                            found.append(entry.path)
                    except OSError:
                        continue
        except OSError:
            continue
    return sorted(map(Path, found))


def expand_inputs(
    inputs: Iterable[str], suffixes: set[str] | None = None, keep_unmatched: bool = False
) -> Iterator[Path]:
    """Yield files from paths, folders (recursive, sorted) and glob patterns.

    A path that does not exist and matches no glob raises MaskwatchError, unless
    ``keep_unmatched`` (then it is yielded so the caller can report it and go on).
    """
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            for f in files_under(path):
                if suffixes is None or f.suffix.lower() in suffixes:
                    yield f
        elif path.is_file():
            yield path
        elif any(ch in item for ch in "*?["):
            matches = sorted(glob.glob(item, recursive=True))
            if not matches and not keep_unmatched:
                raise MaskwatchError(f"{item}: no file matches this pattern")
            for m in matches:
                if Path(m).is_file() and (suffixes is None or Path(m).suffix.lower() in suffixes):
                    yield Path(m)
        elif keep_unmatched:
            yield path
        else:
            raise MaskwatchError(f"{item}: no such file or folder")


def list_images(items: Iterable[str]) -> list[Path | str]:
    """Files from paths, folders (recursive, sorted) and globs, and (as str) the images
    under object-store URIs. Non-image files inside folders are left out; named files are
    kept, even missing ones, so they get reported."""
    items = list(items)
    out: list[Path | str] = [u for item in items if is_uri(item)
                             for u in list_uri(item, IMAGE_SUFFIXES)]
    items = [item for item in items if not is_uri(item)]
    folders = [Path(p) for p in items if Path(p).is_dir()]
    for path in expand_inputs(items, suffixes=None, keep_unmatched=True):
        if path.suffix.lower() not in IMAGE_SUFFIXES and any(
            path.is_relative_to(f) for f in folders
        ):
            continue
        out.append(path)
    return out


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode (palette, 16-bit, CMYK, LA, RGBA...) to 8-bit RGB."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        hi = arr.max() if arr.size else 0.0
        scale = 255.0 / hi if hi > 255 else 1.0
        img = Image.fromarray(np.clip(arr * scale, 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    return img if img.mode == "RGB" else img.convert("RGB")  # no copy of what is RGB


#: EXIF orientation -> the transpose that makes the image upright.
_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90,
}


def _check_regular(path: Path, name: str) -> None:
    """Refuse what is not a regular, non-empty file (folders, devices, FIFOs, sockets)."""
    try:
        st = path.stat()  # one system call for every check
    except FileNotFoundError:
        raise ImageError(f"{name}: no such file") from None
    except OSError as exc:
        raise ImageError(f"{name}: cannot read ({exc.strerror or exc})") from None
    if stat.S_ISDIR(st.st_mode):
        raise ImageError(f"{name}: is a folder, not an image")
    if not stat.S_ISREG(st.st_mode):
        raise ImageError(f"{name}: not a regular file (a device, pipe or socket)")
    if st.st_size == 0:
        raise ImageError(f"{name}: empty file (0 bytes)")


def read_file_bytes(path: str | Path, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of a regular file of at most ``max_bytes``; ImageError for anything else.

    Opened without blocking, so a FIFO cannot hang the caller, and checked on the open
    descriptor, so /dev/zero or a symlink to it is refused before anything is read.
    """
    name = str(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise ImageError(f"{name}: cannot read ({exc.strerror or exc})") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ImageError(f"{name}: not a regular file (a device, pipe or socket)")
        if st.st_size > max_bytes:
            raise ImageError(f"{name}: {st.st_size:,} bytes, over the limit of {max_bytes:,} "
                             "(MASKWATCH_MAX_FILE_MB)")
        try:
            data = f.read(max_bytes + 1)
        except OSError as exc:
            raise ImageError(f"{name}: cannot read ({exc.strerror or exc})") from None
    if len(data) > max_bytes:  # grew while being read
        raise ImageError(f"{name}: over the limit of {max_bytes:,} bytes (MASKWATCH_MAX_FILE_MB)")
    return data


def _reduce(img: Image.Image, work_pixels: int, at_least: int = 1) -> Image.Image:
    """Decode ``img`` at a reduced size so that it holds at most about ``work_pixels``
    (a JPEG shrunk at least ``at_least`` times, a DCT scale denominator).

    JPEG decodes straight at 1/2, 1/4 or 1/8 scale (draft); other formats are shrunk in
    their own mode (1 byte a pixel for 1-bit, grey and palette images) before any RGB
    conversion, so the full-size RGB copy is never made.
    """
    w, h = img.size
    k = math.ceil(math.sqrt(w * h / work_pixels))
    if img.format == "JPEG":
        k = max(k, at_least)
    if k <= 1:
        img.load()
        return img
    if img.format == "JPEG" and img.mode in ("RGB", "L", "CMYK", "YCbCr"):
        img.draft(img.mode, (max(1, w // k), max(1, h // k)))
    img.load()
    w2, h2 = img.size
    if w2 * h2 <= work_pixels:
        return img
    k = math.ceil(math.sqrt(w2 * h2 / work_pixels))
    size = (max(1, w2 // k), max(1, h2 // k))
    try:
        return img.reduce(k)
    except ValueError:  # 1-bit, palette, 16-bit: nearest keeps the mode, allocates no more
        return img.resize(size, Image.Resampling.NEAREST)


_HEIF: list[bool] = []  # whether pillow-heif's opener is registered, once tried


def _open_heif(name: str) -> None:
    """Teach Pillow HEIC/HEIF (``pillow-heif``, imported on the first such file only: it
    costs ~0.1 s); ImageError with what to install when it is missing."""
    if not _HEIF:
        try:
            import pillow_heif
        except ImportError:
            _HEIF.append(False)
        else:
            pillow_heif.register_heif_opener()
            _HEIF.append(True)
    if not _HEIF[0]:
        raise ImageError(f"{name}: HEIC/HEIF photos need pillow-heif (pip install pillow-heif)")


def _check_pixels(name: str, w: int, h: int, cap: int) -> None:
    if w * h > cap:
        raise ImageError(
            f"{name}: {w}x{h} is {w * h:,} pixels, over the limit of {cap:,} "
            "(MASKWATCH_MAX_PIXELS)"
        )
    if w == 0 or h == 0:
        raise ImageError(f"{name}: image has no pixels")


def open_image_scaled(
    source, max_pixels: int | None = None, work_pixels: int | None = None,
    min_size: int | None = None, reduce: Reduce | None = None,
) -> tuple[Image.Image, tuple[float, float]]:
    """Open an image as upright 8-bit RGB, shrunk to about ``work_pixels`` when larger.

    ``min_size``: for a reader that shrinks the image anyway (the classifier), a JPEG is
    decoded at the smallest DCT scale (1/2, 1/4, 1/8) that keeps both sides at least
    ``min_size`` pixels; other formats decode at full size. ``reduce``: instead, a
    function of the stored (width, height) giving the largest reduction wanted (see
    :func:`dct_denominator`).

    Returns the image and (sx, sy): multiply its coordinates by these to get the original
    image's. Raises ImageError with a one-line reason for a missing, empty, truncated,
    unrecognised or oversized file, or for something that is not a regular file.
    """
    cap = MAX_PIXELS if max_pixels is None else max_pixels
    name = str(source) if isinstance(source, (str, Path)) else getattr(source, "name", "image")
    if isinstance(source, (str, Path)):
        _check_regular(Path(source), name)
    if Path(name).suffix.lower() in HEIF_SUFFIXES:
        _open_heif(name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(source)
            w, h = img.size
            _check_pixels(name, w, h, cap)
            orientation = img.getexif().get(274, 1)
            if work_pixels:
                img = _reduce(img, work_pixels, _wanted_reduction(w, h, min_size, reduce))
            else:
                k = _wanted_reduction(w, h, min_size, reduce)
                if k > 1 and img.format == "JPEG" and img.mode in ("RGB", "L", "YCbCr"):
                    img.draft(img.mode, (w // k, h // k))  # draft takes the scale k
                img.load()
            sx, sy = w / img.size[0], h / img.size[1]
            if orientation in _ORIENTATION:  # shrunk copies lose their EXIF: turn by hand
                img = img.transpose(_ORIENTATION[orientation])
            if orientation in (5, 6, 7, 8):
                sx, sy = sy, sx
            return _to_rgb(img), (sx, sy)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image file Pillow can read") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "truncated" in msg.lower() or "broken data stream" in msg.lower():
            raise ImageError(f"{name}: truncated or corrupt image ({msg})") from None
        raise ImageError(f"{name}: cannot decode image ({msg})") from None


def open_image(source, max_pixels: int | None = None) -> Image.Image:
    """Open an image file (or file object) as upright 8-bit RGB Pillow image, full size.

    Raises ImageError as ``open_image_scaled`` does.
    """
    return open_image_scaled(source, max_pixels)[0]


def load_rgb(source, max_pixels: int | None = None, min_size: int | None = None) -> np.ndarray:
    """Read an image (a path, file object or object-store URI) as an upright HxWx3 uint8
    RGB array (see open_image; ``min_size`` as in open_image_scaled)."""
    if is_uri(source):
        return decode_bytes(read_uri(source), max_pixels, name=source)
    if isinstance(source, (str, Path)):
        fast = _load_jpeg_fast(Path(source), max_pixels, min_size)
        if fast is not None:
            return fast[0]
    return np.asarray(open_image_scaled(source, max_pixels, min_size=min_size)[0])


#: A function of an image's stored (width, height) giving the largest reduction (1: none)
#: its reader wants; JPEG decodes at the DCT scale (see :func:`dct_denominator`) under it.
Reduce = Callable[[int, int], float]


def dct_denominator(reduction: float) -> int:
    """The largest JPEG DCT scale denominator (1, 2, 4 or 8: libjpeg decodes at 1/2, 1/4
    or 1/8 size for a fraction of a full decode's work) not above ``reduction``."""
    return next((k for k in (8, 4, 2) if reduction >= k), 1)


def copy_factor(width: int, height: int, copy_size: int) -> int:
    """How many times an annotated copy of a width x height picture is shrunk: 1, 2, 4 or
    8 (the scales a JPEG decodes at), keeping a long side of at least ``copy_size`` (0:
    1, full size) and a short side of at least one pixel."""
    if copy_size <= 0:
        return 1
    return dct_denominator(min(max(width, height) / copy_size, min(width, height)))


def _wanted_reduction(w: int, h: int, min_size: int | None, reduce: Reduce | None) -> int:
    if reduce is not None:
        wanted = reduce(w, h)
    elif min_size:
        wanted = min(w // min_size, h // min_size)
    else:
        return 1
    return dct_denominator(min(wanted, w, h))


def load_rgb_reduced(source, reduce: Reduce, max_pixels: int | None = None
                     ) -> tuple[np.ndarray, tuple[float, float]]:
    """Read an image as :func:`load_rgb` does, a JPEG at the DCT scale ``reduce`` allows
    (other formats and URIs at full size), with the (sx, sy) factors that take its
    pixels back to the full-size upright image's."""
    if is_uri(source):
        rgb = decode_bytes(read_uri(source), max_pixels, name=source)
        return rgb, (1.0, 1.0)
    if isinstance(source, (str, Path)):
        fast = _load_jpeg_fast(Path(source), max_pixels, None, reduce)
        if fast is not None:
            rgb, (w, h) = fast
            return rgb, (w / rgb.shape[1], h / rgb.shape[0])
    img, scale = open_image_scaled(source, max_pixels, reduce=reduce)
    return np.asarray(img), scale


#: EXIF orientation -> the numpy view that makes a decoded array upright (as _ORIENTATION).
_ORIENT_ARRAY = {
    2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2), 8: lambda a: np.rot90(a, 1),
}


#: How far :func:`jpeg_needs_pillow_header` walks (a header of fill bytes is no reason to
#: loop over a whole file in Python).
JPEG_HEADER_WALK = 1 << 20


def jpeg_needs_pillow_header(data: bytes) -> bool | None:
    """Whether a JPEG's segments before its scan hold an APP1 block (EXIF or XMP, where an
    orientation can hide), so that Pillow must read the header: None when ``data`` is not
    a JPEG whose segments can be walked. Face crops rarely have one; camera photos do.
    Headers longer than :data:`JPEG_HEADER_WALK` bytes are left to Pillow (True)."""
    if data[:2] != b"\xff\xd8":
        return None
    i, n = 2, min(len(data), JPEG_HEADER_WALK)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0xDA:  # start of scan: the header is over
            return False
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        if marker == 0xE1:
            return True
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return n < len(data)  # cut short: Pillow reads the rest of the header


#: The colour spaces (libjpeg-turbo's names) Pillow opens as RGB or L: the fast path's.
_FAST_COLOURSPACES = {"RGB", "YCbCr", "Gray"}


def _load_jpeg_fast(path: Path, max_pixels: int | None, min_size: int | None,
                    reduce: Reduce | None = None
                    ) -> tuple[np.ndarray, tuple[int, int]] | None:
    """An RGB or grey JPEG file decoded by libjpeg-turbo through ``simplejpeg``: the same
    pixels as Pillow's decoder (same library, same settings) in about half the time, and
    the full-size upright image's (width, height). libjpeg-turbo reads the size (checked
    against the limit) unless an APP1 block may hold an EXIF or XMP orientation: then
    Pillow reads the header as everywhere else. None for anything else, or when
    simplejpeg refuses the data (a truncated file): Pillow then reads it and gives its
    usual error."""
    try:
        import simplejpeg
    except ImportError:  # pragma: no cover - a dependency; Pillow decodes without it
        return None
    name = str(path)
    _check_regular(path, name)
    try:
        with open(path, "rb") as f:
            data = f.read(2)
            if data != b"\xff\xd8":  # not a JPEG: Pillow reads it, and only it
                return None
            data += f.read()
        pillow_header = jpeg_needs_pillow_header(data)
        if pillow_header is None:
            return None
        orientation = 1
        if pillow_header:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                img = Image.open(io.BytesIO(data))
            if img.format != "JPEG" or img.mode not in ("RGB", "L"):
                return None
            w, h = img.size
            orientation = img.getexif().get(274, 1)
        else:
            h, w, colourspace, _ = simplejpeg.decode_jpeg_header(data)
            if colourspace not in _FAST_COLOURSPACES:
                return None
        _check_pixels(name, w, h, MAX_PIXELS if max_pixels is None else max_pixels)
        # the DCT scale Pillow's draft() takes (1/2, 1/4 or 1/8 at most, never 3/8...), as
        # the smallest output libjpeg-turbo may give: the same array as open_image_scaled
        scale = _wanted_reduction(w, h, min_size, reduce)
        rgb = simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=-(-h // scale),
                                     min_width=-(-w // scale))
    except (OSError, ValueError, SyntaxError, UnidentifiedImageError,
            Image.DecompressionBombError):
        return None  # Pillow reads it again and says what is wrong
    if orientation in _ORIENT_ARRAY:
        rgb = np.ascontiguousarray(_ORIENT_ARRAY[orientation](rgb))
    return rgb, ((h, w) if orientation in (5, 6, 7, 8) else (w, h))


def as_rgb(image, max_pixels: int | None = None) -> np.ndarray:
    """An HxWx3 uint8 RGB array from a file path, a Pillow image or an array.

    Arrays are taken as RGB (HxW grey and HxWx4 RGBA are converted; floats must be
    0-255); Pillow images and files are converted from any mode, files turned upright.
    """
    if isinstance(image, (str, Path)):
        return load_rgb(image, max_pixels)
    if isinstance(image, Image.Image):
        return np.asarray(_to_rgb(image))
    if not isinstance(image, np.ndarray):
        raise ImageError(f"expected a file path, a PIL image or an RGB array, got "
                         f"{type(image).__name__}")
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = image[..., :3]
    if image.ndim != 3 or image.shape[2] != 3:
        raise ImageError(f"expected an HxWx3 RGB array, got shape {image.shape}")
    if image.dtype != np.uint8:
        if image.dtype.kind == "f" and image.size and float(np.nanmax(image)) <= 1.0:
            raise ImageError("got a float array in 0..1: pass uint8 RGB (multiply by 255)")
        image = np.clip(image, 0, 255).astype(np.uint8)
    return image


def decode_upload(
    data: bytes, max_pixels: int | None = None, work_pixels: int | None = None,
    name: str = "upload", reduce: Reduce | None = None,
) -> tuple[np.ndarray, tuple[float, float]]:
    """Decode image bytes (an upload) to an RGB array of at most about ``work_pixels``
    (a JPEG shrunk further as ``reduce`` allows), and the (sx, sy) factors back to the
    original's coordinates (see open_image_scaled)."""
    if not data:
        raise ImageError(f"{name}: empty file (0 bytes)")
    buf = io.BytesIO(data)
    buf.name = name
    img, scale = open_image_scaled(buf, max_pixels, work_pixels, reduce=reduce)
    return np.asarray(img), scale


def decode_bytes(data: bytes, max_pixels: int | None = None, name: str = "upload") -> np.ndarray:
    """Decode image bytes (an upload) to a full-size RGB array, with load_rgb's checks."""
    return decode_upload(data, max_pixels, None, name)[0]


def encode_jpeg(rgb: np.ndarray, quality: int = 92) -> bytes:
    """An HxWx3 uint8 RGB (or HxW grey) array as JPEG bytes, 4:2:0 chroma as Pillow writes
    them: libjpeg-turbo straight from the array through ``simplejpeg`` (0.7x the time of
    Pillow, which copies the pixels first); Pillow for anything else, with its error."""
    try:
        import simplejpeg
    except ImportError:  # pragma: no cover - a dependency
        simplejpeg = None
    rgb = np.asarray(rgb)
    if simplejpeg is not None and rgb.dtype == np.uint8 and (
            rgb.ndim == 2 or (rgb.ndim == 3 and rgb.shape[2] == 3)):
        grey = rgb.ndim == 2
        return simplejpeg.encode_jpeg(
            np.ascontiguousarray(rgb[..., None] if grey else rgb), quality=quality,
            colorspace="GRAY" if grey else "RGB", colorsubsampling="Gray" if grey else "420")
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=quality)  # its error for anything else
    return buf.getvalue()


def save_rgb(path: str | Path, rgb: np.ndarray, quality: int = 92) -> None:
    """Write an RGB array; the format follows the suffix (JPEG by default)."""
    from maskwatch.files import write_atomic

    path = Path(path)
    if path.suffix.lower() in (".jpg", ".jpeg", ""):
        write_atomic(path, lambda tmp: tmp.write_bytes(encode_jpeg(rgb, quality)), "image")
    else:
        img = Image.fromarray(rgb)
        fmt = Image.registered_extensions().get(path.suffix.lower())
        if fmt is None:
            raise ImageError(f"{path}: unknown image format {path.suffix!r}")
        write_atomic(path, lambda tmp: img.save(tmp, fmt), "image")
