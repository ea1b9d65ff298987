"""`maskwatch data audit`: findings on small generated datasets with every kind of bad file."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from maskwatch.cli import main
from maskwatch.data import audit_dataset, format_report, inspect_image, load_dataset
from maskwatch.data.hashing import connected_groups, near_pairs


def png_bomb(path, width=20000, height=20000):
    """A tiny PNG whose header claims width x height pixels (a decompression bomb)."""
    Image.new("L", (8, 8)).save(path)
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


def snapshot(root):
    return {p: hashlib.sha1(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def messy(tmp_path, make_face):
    """A Train/Test class-folder dataset with bad files, duplicates and leakage."""
    from conftest import face_array

    root = tmp_path / "messy"
    tr, te = root / "Train", root / "Test"
    for i in range(6):
        make_face(tr / "WithMask" / f"{i}.jpg", seed=i, masked=True)
        make_face(tr / "WithoutMask" / f"{i}.jpg", seed=100 + i)
    make_face(te / "WithMask" / "t0.jpg", seed=50, masked=True)
    shutil.copy(tr / "WithMask" / "0.jpg", te / "WithMask" / "copy.jpg")        # exact, leak
    big = Image.fromarray(face_array(3, masked=True, size=64)).resize((96, 96))
    big.save(te / "WithMask" / "bigger.jpg", quality=80)                         # near, leak
    shutil.copy(tr / "WithoutMask" / "1.jpg", tr / "WithMask" / "dup_label.jpg")  # two labels
    bad = te / "WithoutMask"
    bad.mkdir(parents=True)
    (bad / "empty.jpg").write_bytes(b"")
    good = (tr / "WithoutMask" / "2.jpg").read_bytes()
    (bad / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (bad / "text.jpg").write_bytes(b"hello, not an image")
    png_bomb(bad / "bomb.png")                      # past Pillow's own limit
    png_bomb(bad / "bomb2.png", 12000, 12000)        # past maskwatch's MAX_PIXELS only
    make_face(bad / "png_named.jpg", seed=201, format="PNG")
    Image.fromarray(face_array(202)).convert("P", palette=Image.Palette.ADAPTIVE).save(
        bad / "palette.png")
    deep = (face_array(203).astype(np.uint16)[..., 0] * 257)
    Image.fromarray(deep).save(bad / "deep16.png")
    assert Image.open(bad / "deep16.png").mode.startswith("I")
    Image.fromarray(face_array(204)).convert("CMYK").save(bad / "cmyk.jpg")
    rotated = Image.fromarray(face_array(205, size=64)[:, :40])
    exif = Image.Exif()
    exif[274] = 6
    rotated.save(bad / "rotated.jpg", exif=exif)
    return root


def test_audit_findings(messy):
    before = snapshot(messy)
    ds = load_dataset(messy)
    report = audit_dataset(ds, workers=1, progress=False)
    assert snapshot(messy) == before, "audit must not change anything"
    assert report["images"] == 26
    assert report["splits"]["train"] == {"with_mask": 7, "without_mask": 6}
    errors = {e["path"].rsplit("/", 1)[1]: e["error"] for e in report["unreadable"]}
    assert set(errors) == {"empty.jpg", "truncated.jpg", "text.jpg", "bomb.png", "bomb2.png"}
    assert "0 bytes" in errors["empty.jpg"]
    assert "truncated" in errors["truncated.jpg"]
    assert "not an image" in errors["text.jpg"]
    assert "decompression bomb" in errors["bomb.png"]
    assert "over the limit" in errors["bomb2.png"]
    assert [m["path"].rsplit("/", 1)[1] for m in report["misnamed"]] == ["png_named.jpg"]
    assert report["modes"]["P"] == 1 and report["modes"]["CMYK"] == 1
    assert report["modes"]["RGB"] == 18 and sum(report["modes"].values()) == 21
    assert report["formats"] == {"JPEG": 18, "PNG": 3}
    assert report["sizes"]["width"]["max"] == 96 and report["sizes"]["width"]["min"] == 64
    assert report["sizes"]["height"]["max"] == 96 and report["sizes"]["height"]["min"] == 40
    names = sorted(sorted(p.rsplit("/", 1)[1] for p in g) for g in report["duplicate_groups"])
    assert names == [["0.jpg", "copy.jpg"], ["1.jpg", "dup_label.jpg"]]
    assert report["duplicate_groups_cross_split"] == 1
    assert report["duplicate_groups_cross_label"] == 1
    leaked = sorted(d["path"].rsplit("/", 1)[1] for g in report["cross_split_duplicates"]
                    for d in g if d["split"] == ["test"])
    assert leaked == ["bigger.jpg", "copy.jpg"]
    assert report["leakage"] == {"test->train": 2, "train->test": 2}
    [cross_label] = report["cross_label_duplicates"]
    assert {d["label"][0] for d in cross_label} == {"with_mask", "without_mask"}
    text = format_report(report)
    assert "Unreadable files: 5" in text and "leakage" in text and "with_mask" in text


def test_inspect_image_upright_size_of_exif_rotated(messy):
    facts = inspect_image(messy / "Test" / "WithoutMask" / "rotated.jpg")
    assert facts.error is None and (facts.width, facts.height) == (64, 40)


def test_audit_cli_json_and_process_pool(tmp_path, make_face, capsys):
    for i in range(70):
        make_face(tmp_path / "d" / ("with_mask" if i % 2 else "no_mask") / f"{i}.png", seed=i)
    rc = main(["data", "audit", str(tmp_path / "d"), "--json", "--quiet", "--workers", "2"])
    out = capsys.readouterr().out
    assert rc == 0 and len(out.splitlines()) == 1
    report = json.loads(out)
    for key in ("images", "classes", "unreadable", "duplicate_groups", "cross_split_duplicates",
                "cross_label_duplicates"):
        assert key in report
    assert report["images"] == 70 and report["classes"] == {"with_mask": 35, "without_mask": 35}
    assert report["duplicate_groups"] == [] and report["near_duplicate_groups"] == []


def test_audit_cli_human_and_errors(messy, tmp_path, capsys):
    assert main(["data", "audit", str(messy), "--quiet", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "Samples per split and class" in out and "truncated" in out
    assert main(["data", "audit", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"maskwatch: error: {tmp_path / 'missing'}: no such file or folder"]
    (tmp_path / "void").mkdir()
    assert main(["data", "audit", str(tmp_path / "void")]) == 2
    assert "folder is empty" in capsys.readouterr().err


def test_near_pairs_matches_brute_force():
    rng = np.random.default_rng(0)
    base = [int(v) for v in rng.integers(0, 2**63, 400, dtype=np.int64)]
    hashes = base + [h ^ (1 << int(b)) ^ (1 << int(c)) for h, b, c in
                     zip(base[:50], rng.integers(0, 64, 50), rng.integers(0, 64, 50))]
    hashes += [base[7], None, base[9] ^ 0b11111]  # exact copy, unreadable, distance 5
    found = {(a, b) for a, b, _ in near_pairs(hashes)}
    brute = {(i, j) for i in range(len(hashes)) for j in range(i + 1, len(hashes))
             if hashes[i] is not None and hashes[j] is not None
             and bin(hashes[i] ^ hashes[j]).count("1") <= 4}
    assert found == brute and len(found) >= 51


def test_connected_groups_joins_chains_and_keeps_singletons():
    edges = [(0, 3), (3, 5, 2), (6, 7), (5, 0)]  # triples as near_pairs gives them
    assert connected_groups(8, edges) == [[0, 3, 5], [1], [2], [4], [6, 7]]
    assert connected_groups(3, []) == [[0], [1], [2]]

