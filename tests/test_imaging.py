"""Safe image reading: every bad input gives one clear ImageError."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image

from maskwatch.errors import ImageError
from maskwatch.imaging import decode_bytes, load_rgb


def _gradient(w: int = 40, h: int = 30) -> np.ndarray:
    x = np.linspace(0, 255, w, dtype=np.uint8)
    return np.stack([np.tile(x, (h, 1))] * 3, axis=2)


def test_reads_plain_jpeg(tmp_path):
    path = tmp_path / "a.jpg"
    Image.fromarray(_gradient()).save(path)
    rgb = load_rgb(path)
    assert rgb.shape == (30, 40, 3) and rgb.dtype == np.uint8


def test_min_size_decodes_a_jpeg_smaller_but_never_below_it(tmp_path):
    path = tmp_path / "big.jpg"
    Image.fromarray(_gradient(400, 300)).save(path)
    assert load_rgb(path).shape == (300, 400, 3)
    assert load_rgb(path, min_size=96).shape == (150, 200, 3)  # DCT scale 1/2: 300 // 96 = 3
    assert load_rgb(path, min_size=30).shape == (38, 50, 3)  # 1/8
    assert load_rgb(path, min_size=300).shape == (300, 400, 3)
    png = tmp_path / "big.png"  # other formats decode whole
    Image.fromarray(_gradient(400, 300)).save(png)
    assert load_rgb(png, min_size=96).shape == (300, 400, 3)
    # turned upright after the reduced decode
    rotated = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[274] = 6
    Image.fromarray(_gradient(400, 300)).save(rotated, exif=exif)
    assert load_rgb(rotated, min_size=96).shape == (200, 150, 3)


def test_png_named_jpg_is_read_by_content(tmp_path):
    path = tmp_path / "really_png.jpg"
    Image.fromarray(_gradient()).save(path, format="PNG")
    assert load_rgb(path).shape == (30, 40, 3)


@pytest.mark.parametrize("mode", ["P", "L", "LA", "RGBA", "CMYK", "I;16"])
def test_modes_become_rgb(tmp_path, mode):
    img = Image.fromarray(_gradient())
    if mode == "I;16":
        arr = np.asarray(img.convert("L")).astype(np.uint16) * 257
        img = Image.fromarray(arr)  # 16-bit greyscale
        path = tmp_path / "x.png"
    elif mode == "CMYK":
        img = img.convert("CMYK")
        path = tmp_path / "x.jpg"
    else:
        img = img.convert(mode)
        path = tmp_path / "x.png"
    img.save(path)
    rgb = load_rgb(path)
    assert rgb.shape == (30, 40, 3) and rgb.dtype == np.uint8
    # the left-to-right gradient survives the conversion
    assert rgb[:, -1].mean() > rgb[:, 0].mean() + 100


def test_exif_rotation_is_applied(tmp_path):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(_gradient(40, 30)).save(path, exif=exif)
    assert load_rgb(path).shape == (40, 30, 3)


def test_missing_empty_truncated_and_not_image(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        load_rgb(tmp_path / "nope.jpg")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match="0 bytes"):
        load_rgb(empty)
    text = tmp_path / "text.jpg"
    text.write_text("hello, not an image")
    with pytest.raises(ImageError, match="not an image"):
        load_rgb(text)
    good = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200, 3), np.uint8)).save(
        good, "JPEG"
    )
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(good.getvalue()[: len(good.getvalue()) // 3])
    with pytest.raises(ImageError, match="cut.jpg"):
        load_rgb(cut)
    with pytest.raises(ImageError, match="folder"):
        load_rgb(tmp_path)


def test_pixel_cap_refuses_decompression_bombs(tmp_path):
    path = tmp_path / "big.png"
    Image.new("L", (3000, 3000)).save(path)  # compresses to a few KB
    with pytest.raises(ImageError, match="over the limit"):
        load_rgb(path, max_pixels=1_000_000)
    assert load_rgb(path, max_pixels=10_000_000).shape == (3000, 3000, 3)


def test_decode_bytes(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(_gradient()).save(buf, "PNG")
    assert decode_bytes(buf.getvalue()).shape == (30, 40, 3)
    with pytest.raises(ImageError, match="0 bytes"):
        decode_bytes(b"")
    with pytest.raises(ImageError):
        decode_bytes(b"GIF89a broken")


@pytest.mark.parametrize("orientation", range(1, 9))
def test_fast_jpeg_path_gives_pillows_upright_pixels(tmp_path, orientation):
    from maskwatch.imaging import _load_jpeg_fast, open_image_scaled

    rng = np.random.default_rng(orientation)
    rgb = rng.integers(0, 255, (60, 90, 3), np.uint8)
    rgb[:10, :20] = 255  # a corner that shows which way is up
    exif = Image.Exif()
    exif[274] = orientation
    path = tmp_path / "o.jpg"
    Image.fromarray(rgb).save(path, "JPEG", quality=95, exif=exif.tobytes())
    fast, size = _load_jpeg_fast(path, None, None)
    assert fast.flags.c_contiguous and size == fast.shape[1::-1]
    assert fast.shape == ((90, 60, 3) if orientation >= 5 else (60, 90, 3))
    assert np.array_equal(fast, np.asarray(open_image_scaled(path)[0]))


@pytest.mark.parametrize("size,min_size", [((800, 600), 96), ((800, 600), 200),
                                           ((130, 90), 96), ((64, 48), 96), ((803, 601), 100)])
def test_fast_jpeg_path_takes_pillows_dct_scale(tmp_path, size, min_size):
    from maskwatch.imaging import _load_jpeg_fast, open_image_scaled

    rgb = np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), np.uint8)
    path = tmp_path / "s.jpg"
    Image.fromarray(rgb).save(path, "JPEG")
    fast = _load_jpeg_fast(path, None, min_size)[0]
    slow = np.asarray(open_image_scaled(path, min_size=min_size)[0])
    assert fast.shape == slow.shape and min(fast.shape[:2]) >= min(min_size, *size[::-1])
    assert np.array_equal(fast, slow)


def test_fast_jpeg_path_leaves_other_files_to_pillow(tmp_path):
    from maskwatch.imaging import _load_jpeg_fast

    rgb = np.random.default_rng(1).integers(0, 255, (40, 50, 3), np.uint8)
    grey = tmp_path / "grey.jpg"
    Image.fromarray(rgb[..., 0]).save(grey, "JPEG")
    assert load_rgb(grey).shape == (40, 50, 3)  # grey JPEGs come out as RGB too
    assert np.array_equal(load_rgb(grey)[..., 0], load_rgb(grey)[..., 2])
    cmyk = tmp_path / "cmyk.jpg"
    Image.fromarray(rgb).convert("CMYK").save(cmyk, "JPEG")
    png = tmp_path / "png.jpg"  # a PNG under a JPEG name
    Image.fromarray(rgb).save(png, "PNG")
    assert _load_jpeg_fast(cmyk, None, None) is None and load_rgb(cmyk).shape == (40, 50, 3)
    assert _load_jpeg_fast(png, None, None) is None and load_rgb(png).shape == (40, 50, 3)
    cut = tmp_path / "cut.jpg"
    Image.fromarray(rgb).save(cut, "JPEG")
    data = cut.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    assert _load_jpeg_fast(cut, None, None) is None  # Pillow says what is wrong
    with pytest.raises(ImageError, match="truncated"):
        load_rgb(cut)
    with pytest.raises(ImageError, match="over the limit"):
        load_rgb(grey, max_pixels=100)


XMP_ROTATED = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf='
               b'"http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description xmlns:tiff='
               b'"http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>')


def test_jpeg_header_walk_finds_app1_blocks():
    from maskwatch.imaging import jpeg_needs_pillow_header

    def jpeg(**kw) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(_gradient()).save(buf, "JPEG", **kw)
        return buf.getvalue()

    exif = Image.Exif()
    exif[274] = 3
    plain = jpeg()
    assert jpeg_needs_pillow_header(plain) is False
    assert jpeg_needs_pillow_header(jpeg(exif=exif.tobytes())) is True
    assert jpeg_needs_pillow_header(jpeg(xmp=XMP_ROTATED)) is True
    assert jpeg_needs_pillow_header(plain[:2] + b"\xff\xff" + plain[2:]) is False  # fill
    # an APP1 after the frame header still counts (Pillow reads every segment to the scan)
    sof = plain.index(b"\xff\xc0")
    app1 = b"\xff\xe1\x00\x08Exif\x00\x00"
    assert jpeg_needs_pillow_header(plain[:sof] + app1 + plain[sof:]) is True
    png = io.BytesIO()
    Image.fromarray(_gradient()).save(png, "PNG")
    assert jpeg_needs_pillow_header(png.getvalue()) is None
    assert jpeg_needs_pillow_header(plain[:2] + b"garbage") is None
    # a header padded past the walk's limit with fill bytes is left to Pillow
    padded = plain[:2] + b"\xff" * (2 << 20) + plain[2:]
    assert jpeg_needs_pillow_header(padded) is True


def test_fast_jpeg_path_reads_plain_headers_without_pillow(tmp_path, monkeypatch):
    """Face crops without EXIF/XMP skip Pillow entirely; the limit and the pixels hold."""
    import maskwatch.imaging as imaging

    rgb = np.random.default_rng(2).integers(0, 255, (70, 110, 3), np.uint8)
    plain, xmp = tmp_path / "plain.jpg", tmp_path / "xmp.jpg"
    Image.fromarray(rgb).save(plain, "JPEG")
    Image.fromarray(rgb).save(xmp, "JPEG", xmp=XMP_ROTATED)
    expected = np.asarray(imaging.open_image_scaled(plain)[0])
    upright = np.asarray(imaging.open_image_scaled(xmp)[0])
    assert upright.shape == (110, 70, 3)  # Pillow turns it by its XMP orientation

    def no_pillow(*args, **kwargs):
        raise AssertionError("Pillow opened a plain JPEG")

    with monkeypatch.context() as m:
        m.setattr(imaging.Image, "open", no_pillow)
        assert np.array_equal(imaging._load_jpeg_fast(plain, None, None)[0], expected)
        with pytest.raises(ImageError, match="over the limit"):
            imaging.load_rgb(plain, max_pixels=1000)
        with pytest.raises(AssertionError, match="Pillow opened"):
            imaging._load_jpeg_fast(xmp, None, None)  # an APP1 block: Pillow's header
    assert np.array_equal(imaging._load_jpeg_fast(xmp, None, None)[0], upright)


def test_fast_jpeg_path_reads_two_bytes_of_other_files(tmp_path, monkeypatch):
    import maskwatch.imaging as imaging

    png = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (300, 300, 3), np.uint8)).save(png)
    read = []

    class Counting(io.FileIO):
        def read(self, size=-1):
            data = super().read(size)
            read.append(len(data))
            return data

    monkeypatch.setattr(imaging, "open", lambda path, mode: Counting(path, "r"), raising=False)
    assert imaging._load_jpeg_fast(png, None, None) is None
    assert read == [2]  # the PNG is left to Pillow unread


def test_encode_jpeg_writes_what_pillow_would(tmp_path):
    from maskwatch.imaging import encode_jpeg, save_rgb

    yy, xx = np.mgrid[0:120, 0:160]
    rgb = np.stack([xx * 1.5, yy * 2, (xx + yy) % 256], axis=2).astype(np.uint8)
    ours = np.asarray(Image.open(io.BytesIO(encode_jpeg(rgb, 92)))).astype(int)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=92)
    pillows = np.asarray(Image.open(buf)).astype(int)
    assert ours.shape == rgb.shape
    assert np.abs(ours - rgb).mean() < 1.5 * np.abs(pillows - rgb).mean() + 0.5
    # a mirrored view (not contiguous) and a grey array encode too
    assert Image.open(io.BytesIO(encode_jpeg(rgb[:, ::-1]))).size == (160, 120)
    assert Image.open(io.BytesIO(encode_jpeg(rgb[..., 0]))).mode == "L"
    with pytest.raises(OSError):  # what Pillow says of an array JPEG cannot hold
        encode_jpeg(np.zeros((4, 4, 4), np.uint8))
    save_rgb(tmp_path / "a.jpg", rgb)
    assert np.abs(load_rgb(tmp_path / "a.jpg").astype(int) - rgb).mean() < 3


def test_files_under_lists_what_rglob_lists(tmp_path):
    """Folders are walked with os.scandir; the listing and its order are rglob's."""
    from pathlib import Path

    from maskwatch.imaging import files_under, list_images

    root = tmp_path / "photos"
    for rel in ["b.jpg", "a/z.jpg", "a-b/y.jpg", "a/deep/x.png", ".hidden.jpg", "notes.txt"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "o.jpg").write_bytes(b"x")
    (root / "linked").symlink_to(outside, target_is_directory=True)  # not entered
    (root / "link.jpg").symlink_to(outside / "o.jpg")  # a link to a file counts
    (root / "broken.jpg").symlink_to(tmp_path / "gone.jpg")  # listed, to be reported
    expected = sorted(p for p in Path(root).rglob("*") if p.is_file() or p.name == "broken.jpg")
    assert files_under(root) == expected
    assert [p.name for p in expected] == [".hidden.jpg", "x.png", "z.jpg", "y.jpg", "b.jpg",
                                          "broken.jpg", "link.jpg", "notes.txt"]
    assert [p.name for p in list_images([str(root)])] == [
        ".hidden.jpg", "x.png", "z.jpg", "y.jpg", "b.jpg", "broken.jpg", "link.jpg"]


def test_a_broken_link_among_faces_is_reported_not_lost(tmp_path, make_face, capsys):
    """A class folder's broken link is counted and named by the data layer, and `classify`
    on the folder reports it as a failed input (rc 1) instead of skipping it unsaid."""
    from maskwatch.cli import main
    from maskwatch.data import load_dataset

    make_face(tmp_path / "d" / "with_mask" / "a.jpg", seed=1, masked=True)
    make_face(tmp_path / "d" / "without_mask" / "b.jpg", seed=2)
    (tmp_path / "d" / "with_mask" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    os.mkfifo(tmp_path / "d" / "without_mask" / "pipe.jpg")  # never opened: it would block
    ds = load_dataset(tmp_path / "d")
    assert len(ds.samples) == 2 and ds.skipped["broken link"] == 1
    assert any("gone.jpg: broken link" in n for n in ds.notes)
    assert ds.skipped["not a regular file"] == 1 and any("pipe.jpg" in n for n in ds.notes)
    assert main(["classify", str(tmp_path / "d"), "--json"]) == 1
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 2 and "gone.jpg" in captured.err


def test_heic_photos_are_read_and_missing_support_is_said(tmp_path, monkeypatch):
    import maskwatch.imaging as imaging
    from maskwatch.imaging import list_images

    pillow_heif = pytest.importorskip("pillow_heif")
    pillow_heif.register_heif_opener()
    x = np.linspace(0, 255, 160, dtype=np.float32)
    rgb = np.stack(np.broadcast_arrays(x[None, :], x[:120, None], 128 + 0 * x[None, :]),
                   axis=2).astype(np.uint8)
    path = tmp_path / "phone.heic"
    Image.fromarray(rgb).save(path, quality=95)
    (tmp_path / "notes.txt").write_text("not a photo")
    assert list_images([str(tmp_path)]) == [path]  # a folder's HEIC photos are listed
    out = load_rgb(path)
    assert out.shape == rgb.shape and np.abs(out.astype(int) - rgb).mean() < 6
    monkeypatch.setattr(imaging, "_HEIF", [False])  # as without pillow-heif
    with pytest.raises(ImageError, match="phone.heic: HEIC/HEIF photos need pillow-heif"):
        load_rgb(path)
