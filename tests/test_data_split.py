"""`maskwatch data split` and `maskwatch data crop`: groups kept whole, reproducible, safe."""

from __future__ import annotations

import csv
import json
from collections import Counter, defaultdict

import numpy as np
import pytest
from PIL import Image

from maskwatch.cli import main
from maskwatch.data import load_dataset, parse_ratios, read_face
from maskwatch.errors import MaskwatchError


@pytest.fixture
def flat(tmp_path, make_face):
    """40 with_mask (incl. an augmentation group), 40 without_mask (incl. a near-dup pair)."""
    from conftest import face_array

    root = tmp_path / "flat"
    for i in range(36):
        make_face(root / "with_mask" / f"{i}.jpg", seed=i, masked=True)
    for n in range(4):
        make_face(root / "with_mask" / f"Augmented_0_{n}.jpg", seed=500 + n, masked=True)
    for i in range(39):
        make_face(root / "without_mask" / f"{i}.jpg", seed=1000 + i)
    Image.fromarray(face_array(1000, size=64)).resize((80, 80)).save(
        root / "without_mask" / "big0.jpg")
    return root


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_split_keeps_groups_and_is_reproducible(flat, tmp_path, capsys):
    out1, out2, out3 = tmp_path / "s1", tmp_path / "s2", tmp_path / "s3"
    args = ["--ratios", "0.6", "0.2", "0.2", "--quiet", "--workers", "1"]
    assert main(["data", "split", str(flat), "--out", str(out1), "--seed", "7", *args]) == 0
    assert main(["data", "split", str(flat), "--out", str(out2), "--seed", "7", *args]) == 0
    assert main(["data", "split", str(flat), "--out", str(out3), "--seed", "8", *args]) == 0
    m1 = out1 / "manifest.csv"
    assert m1.read_bytes() == (out2 / "manifest.csv").read_bytes()
    rows = read_rows(m1)
    assert len(rows) == 80
    by_name = {r["path"].rsplit("/", 1)[1] + r["label"]: r["split"] for r in rows}
    assert {by_name[f"Augmented_0_{n}.jpgwith_mask"] for n in range(4)} == {
        by_name["0.jpgwith_mask"]}
    assert by_name["big0.jpgwithout_mask"] == by_name["0.jpgwithout_mask"]
    counts = Counter((r["split"], r["label"]) for r in rows)
    for label in ("with_mask", "without_mask"):
        assert 22 <= counts[("train", label)] <= 26
        assert 6 <= counts[("val", label)] <= 10 and 6 <= counts[("test", label)] <= 10
    other = {r["path"]: r["split"] for r in read_rows(out3 / "manifest.csv")}
    assert other != {r["path"]: r["split"] for r in rows}
    # the manifest is a dataset: read back without copying images
    ds = load_dataset(m1)
    assert ds.layout == "manifest" and len(ds) == 80
    train = [s for s in ds.samples if s.split == "train"]
    assert read_face(train[0]).shape == (64, 64, 3)


def test_split_never_overwrites_without_force(flat, tmp_path, capsys):
    out = tmp_path / "s"
    out.mkdir()
    (out / "manifest.csv").write_text("precious")
    cmd = ["data", "split", str(flat), "--out", str(out), "--quiet", "--workers", "1"]
    assert main(cmd) == 2
    assert "already exists" in capsys.readouterr().err
    assert (out / "manifest.csv").read_text() == "precious"
    assert main([*cmd, "--force", "--json"]) == 0  # the old spelling of --overwrite
    assert (out / "manifest.csv").read_text().startswith("path,label,split")
    assert '"samples":80' in capsys.readouterr().out


def test_bad_ratios():
    with pytest.raises(MaskwatchError, match="ratios"):
        parse_ratios([0.5])
    with pytest.raises(MaskwatchError, match="ratios"):
        parse_ratios([0.5, -0.1, 0.2])
    assert parse_ratios([8, 1, 1]) == pytest.approx((0.8, 0.1, 0.1))


@pytest.fixture
def voc(tmp_path):
    """Eight scenes, three faces each (one 10 px face), plus a scene duplicated exactly."""
    from conftest import face_array

    root = tmp_path / "voc"
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    labels = ["with_mask", "without_mask", "mask_weared_incorrect"]
    for k in range(8):
        rgb = np.full((90, 120, 3), 40 * (k % 5), np.uint8)
        rgb[:40, :40] = face_array(k, size=40)
        rgb[40:80, 60:100] = face_array(100 + k, size=40)
        Image.fromarray(rgb).save(root / "images" / f"scene{k}.png")
        objs = [(labels[k % 3], (0, 0, 40, 40)), (labels[(k + 1) % 3], (60, 40, 100, 80)),
                ("with_mask", (110, 80, 120, 90))]
        body = "".join(f"<object><name>{n}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}"
                       f"</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
                       for n, b in objs)
        text = f"<annotation><filename>scene{k}.png</filename>{body}</annotation>"
        (root / "annotations" / f"scene{k}.xml").write_text(text)
    (root / "images" / "copy.png").write_bytes((root / "images" / "scene3.png").read_bytes())
    (root / "annotations" / "copy.xml").write_text(
        (root / "annotations" / "scene3.xml").read_text().replace("scene3", "copy"))
    return root


def test_crop_by_scene(voc, tmp_path, capsys):
    out = tmp_path / "crops"
    cmd = ["data", "crop", str(voc), "--out", str(out), "--ratios", "0.5", "0.25", "0.25",
           "--margin", "0.25", "--seed", "3", "--quiet", "--workers", "1"]
    assert main(cmd) == 0
    files = sorted(p for p in out.rglob("*.jpg"))
    assert len(files) == 18  # 9 scenes x 2 faces; the 10 px faces are skipped
    assert {p.relative_to(out).parts[0] for p in files} <= {"train", "val", "test"}
    labels = Counter(p.parent.name for p in files)
    assert set(labels) == {"with_mask", "without_mask", "incorrect_mask"}
    for p in files:  # 40 px boxes grown by 25 % each side, clipped at the image edge
        assert Image.open(p).size in {(50, 50), (60, 60)}
    rows = read_rows(out / "manifest.csv")
    scene_splits = defaultdict(set)
    for r in rows:
        scene_splits[r["group"]].add(r["split"])
    assert all(len(v) == 1 for v in scene_splits.values())
    assert scene_splits["scene3"] == scene_splits["copy"]  # exact duplicate scenes together
    ds = load_dataset(out)
    assert ds.layout == "class-folders" and len(ds) == 18
    # refuses a non-empty folder unless --overwrite, and leaves it as it was
    before = {p: p.stat().st_mtime_ns for p in files}
    assert main(cmd) == 2
    assert "not empty" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in files} == before


def test_crop_needs_boxes(flat, tmp_path, capsys):
    rc = main(["data", "crop", str(flat), "--out", str(tmp_path / "o"), "--quiet"])
    assert rc == 2 and "no boxes" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_audit_of_scenes(voc):
    from maskwatch.data import audit_dataset

    r = audit_dataset(load_dataset(voc), workers=1, progress=False)
    assert r["images"] == 9 and r["samples"] == 27
    assert r["classes"] == {"incorrect_mask": 5, "with_mask": 15, "without_mask": 7}
    assert [sorted(p.rsplit("/", 1)[1] for p in g) for g in r["duplicate_groups"]] == [
        ["copy.png", "scene3.png"]]
    assert r["cross_label_duplicates"] == []  # scenes hold several labels: not a finding


def test_split_and_crop_carry_difficult_faces_and_face_free_photos(voc, tmp_path, capsys):
    from conftest import face_array

    text = (voc / "annotations" / "scene0.xml").read_text()
    (voc / "annotations" / "scene0.xml").write_text(  # its second face: difficult
        text.replace("<object><name>without_mask", "<object><difficult>1</difficult>"
                     "<name>without_mask", 1))
    for k in range(4):  # photos annotated as holding nobody
        Image.fromarray(face_array(300 + k, size=60)).save(voc / "images" / f"empty{k}.png")
        (voc / "annotations" / f"empty{k}.xml").write_text(
            f"<annotation><filename>empty{k}.png</filename></annotation>")
    out = tmp_path / "s"
    assert main(["data", "split", str(voc), "--out", str(out), "--ratios", "0.5", "0.5",
                 "--quiet", "--workers", "1", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert sum(summary["images_without_faces"].values()) == 4
    rows = read_rows(out / "manifest.csv")
    assert [r["path"].rsplit("/", 1)[1] for r in rows if r["difficult"] == "1"] == [
        "scene0.png"]
    empty = [r for r in rows if not r["label"]]
    assert sorted(r["path"].rsplit("/", 1)[1] for r in empty) == [
        f"empty{k}.png" for k in range(4)]
    assert {r["split"] for r in empty} == {"train", "val"}  # spread as a class would be
    ds = load_dataset(out / "manifest.csv")
    assert len(ds) == 27 and len(ds.empty_images) == 4
    assert [s.path.name for s in ds.samples if s.difficult] == ["scene0.png"]
    # cropping for classification: the difficult face is a face, the empty photos hold none
    crops = tmp_path / "crops"
    for source in (voc, out / "manifest.csv"):
        assert main(["data", "crop", str(source), "--out", str(crops), "--quiet",
                     "--workers", "1", "--overwrite"]) == 0
        rows = read_rows(crops / "manifest.csv")
        assert len(rows) == 18 and all(r["label"] for r in rows)
        assert sum(r["difficult"] == "1" for r in rows) == 1


def _voc_scenes(root, n, box, size=96):
    """``n`` VOC scenes of one with_mask face each, at ``box``."""
    from conftest import write_face

    (root / "annotations").mkdir(parents=True)
    for i in range(n):
        write_face(root / "images" / f"s{i}.jpg", seed=i, size=size)
        (root / "annotations" / f"s{i}.xml").write_text(
            f"<annotation><filename>s{i}.jpg</filename><object><name>with_mask</name>"
            f"<bndbox><xmin>{box[0]}</xmin><ymin>{box[1]}</ymin><xmax>{box[2]}</xmax>"
            f"<ymax>{box[3]}</ymax></bndbox></object></annotation>")
    return root


def test_split_says_when_a_split_is_left_empty(tmp_path, make_face, capsys):
    for i in range(3):
        make_face(tmp_path / "few" / "with_mask" / f"{i}.jpg", seed=i)
    assert main(["data", "split", str(tmp_path / "few"), "-o", str(tmp_path / "out"),
                 "-q", "-j"]) == 0
    captured = capsys.readouterr()
    assert "split test is empty" in captured.err
    assert json.loads(captured.out)["empty_splits"] == ["test"]


def test_split_into_a_file_is_one_clear_error(tmp_path, make_face, capsys):
    make_face(tmp_path / "d" / "with_mask" / "a.jpg")
    (tmp_path / "afile").write_text("x")
    assert main(["data", "split", str(tmp_path / "d"), "-o", str(tmp_path / "afile"),
                 "-q"]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_crop_with_every_face_too_small_writes_nothing(tmp_path, capsys):
    voc = _voc_scenes(tmp_path / "voc", 3, (1, 1, 9, 9))
    out = tmp_path / "crops"
    assert main(["data", "crop", str(voc), "-o", str(out), "-q"]) == 2
    assert "smaller than --min-size 16" in capsys.readouterr().err
    assert not out.exists()  # no header-only manifest for a later command to accept


def test_interrupted_crop_leaves_no_partial_set(tmp_path, interrupt_saves):
    voc = _voc_scenes(tmp_path / "voc", 12, (8, 8, 80, 80))
    out = tmp_path / "crops"
    interrupt_saves(5)
    assert main(["data", "crop", str(voc), "-o", str(out), "-q"]) == 130
    assert not out.exists() or not any(out.rglob("*"))
    interrupt_saves(None)
    assert main(["data", "crop", str(voc), "-o", str(out), "-q"]) == 0  # no --overwrite
    assert len(load_dataset(out / "manifest.csv")) == 12
