"""Bad rows and special files in datasets (issue 12, items 5-7): one line each, go on."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from test_data_layouts import scene, write_voc

from maskwatch.data import audit_dataset, load_dataset
from maskwatch.data.model import load_manifest

REPO_SRC = os.path.join(os.path.dirname(__file__), os.pardir, "src")
BAD_VALUES = ["nan", "inf", "-inf", "1e300", "1e400"]


@pytest.mark.parametrize("bad", BAD_VALUES)
def test_box_csv_bad_value_skips_that_row_only(tmp_path, bad):
    scene(tmp_path / "a.jpg")
    scene(tmp_path / "b.jpg", seed=1)
    (tmp_path / "boxes.csv").write_text(
        "name,x1,x2,y1,y2,classname\n"
        f"a.jpg,{bad},40,0,40,face_with_mask\n"
        "b.jpg,0,40,0,40,face_no_mask\n"
        "a.jpg," + "9" * 200_000 + ",40,0,40,face_with_mask\n"
        "a.jpg,0,30,0,30,face_with_mask\n"
    )
    ds = load_dataset(tmp_path / "boxes.csv",
                      mapping="face_with_mask=with_mask,face_no_mask=without_mask")
    assert [(s.path.name, s.label) for s in ds.samples] == [
        ("b.jpg", "without_mask"), ("a.jpg", "with_mask")]
    assert ds.skipped["bad box"] + ds.skipped["bad CSV row"] == 2
    assert any(":2:" in n for n in ds.notes) and any(":4:" in n for n in ds.notes)
    assert all("\n" not in n and len(n) < 400 for n in ds.notes)


@pytest.mark.parametrize("bad", BAD_VALUES)
def test_voc_bad_value_skips_that_box_only(tmp_path, bad):
    scene(tmp_path / "images" / "a.jpg")
    write_voc(tmp_path / "annotations" / "a.xml", "a.jpg",
              [("with_mask", (bad, 0, 40, 40)), ("without_mask", (50, 10, 90, 60))],
              size=(bad, 96))
    ds = load_dataset(tmp_path)
    assert [(s.label, s.box) for s in ds.samples] == [("without_mask", (50, 10, 90, 60))]
    assert ds.skipped["bad box"] == 1 and "a.xml" in ds.notes[0]


@pytest.mark.parametrize("bad", BAD_VALUES)
def test_yolo_bad_value_skips_that_line_only(tmp_path, bad):
    scene(tmp_path / "images" / "a.jpg", size=(100, 50))
    (tmp_path / "classes.txt").write_text("mask\nno-mask\n")
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "a.txt").write_text(f"0 {bad} 0.5 0.2 0.4\n1 0.5 0.5 0.2 0.4\n")
    ds = load_dataset(tmp_path)
    assert [s.label for s in ds.samples] == ["without_mask"]
    assert ds.skipped["bad box"] == 1 and "a.txt:1" in ds.notes[0]


def test_yolo_class_minus_one_is_a_bad_line_not_the_last_class(tmp_path):
    scene(tmp_path / "images" / "a.jpg", size=(100, 50))
    (tmp_path / "classes.txt").write_text("mask\nno-mask\n")
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "a.txt").write_text("-1 0.5 0.5 0.2 0.4\n0 0.5 0.5 0.2 0.4\n")
    ds = load_dataset(tmp_path)
    assert [s.label for s in ds.samples] == ["with_mask"]
    assert ds.skipped["bad label line"] == 1 and "a.txt:1" in ds.notes[0]


def test_yolo_label_file_not_utf8_is_skipped(tmp_path):
    scene(tmp_path / "images" / "a.jpg", size=(100, 50))
    scene(tmp_path / "images" / "b.jpg", size=(100, 50))
    (tmp_path / "classes.txt").write_text("mask\nno-mask\n")
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "a.txt").write_bytes(b"0 0.5 0.5 0.2 \xff\xfe\n")
    (tmp_path / "labels" / "b.txt").write_text("1 0.5 0.5 0.2 0.4\n")
    ds = load_dataset(tmp_path)
    assert [s.label for s in ds.samples] == ["without_mask"]
    assert ds.skipped["bad label file"] == 1


@pytest.mark.parametrize("bad", BAD_VALUES)
def test_manifest_bad_rows_are_skipped_with_a_note(tmp_path, bad):
    scene(tmp_path / "a.jpg")
    (tmp_path / "m.csv").write_text(
        "path,label,split,source,group,x1,y1,x2,y2\n"
        f"a.jpg,with_mask,train,s,g,{bad},0,40,40\n"
        "a.jpg,hat,train,s,g,0,0,40,40\n"
        "a.jpg,with_mask,nowhere,s,g,0,0,40,40\n"
        "a.jpg,without_mask,val,s,g,0,0,40,40\n"
    )
    ds = load_dataset(tmp_path / "m.csv")
    assert [(s.label, s.split, s.box) for s in ds.samples] == [
        ("without_mask", "val", (0, 0, 40, 40))]
    assert ds.skipped["bad manifest row"] == 3
    assert [n.split(":")[1] for n in ds.notes] == ["2", "3", "4"]


def test_audit_refuses_devices_and_fifos_without_hanging(tmp_path):
    """A manifest naming /dev/zero and a FIFO: both reported unreadable, the audit ends.
    Run in a child with a memory cap and a timeout, since the old code hung or ate RAM."""
    scene(tmp_path / "a.jpg")
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    (tmp_path / "m.csv").write_text("path,label\na.jpg,with_mask\n/dev/zero,with_mask\n"
                                    f"{fifo},without_mask\n")
    code = textwrap.dedent(f"""
        import json, resource
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
        from maskwatch.data import audit_dataset, load_dataset
        r = audit_dataset(load_dataset({str(tmp_path / 'm.csv')!r}), workers=1, progress=False)
        print(json.dumps(r["unreadable"]))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "PYTHONPATH": REPO_SRC})
    assert out.returncode == 0, out.stderr[-500:]
    errors = {u["path"]: u["error"] for u in __import__("json").loads(out.stdout)}
    assert set(errors) == {"/dev/zero", str(fifo)}
    assert all("not a regular file" in e for e in errors.values())


def test_audit_size_cap(tmp_path, monkeypatch):
    import maskwatch.imaging as imaging

    scene(tmp_path / "a.jpg")
    scene(tmp_path / "b.jpg", seed=2, size=(400, 300))
    monkeypatch.setattr(imaging.read_file_bytes, "__defaults__", (4000,))
    (tmp_path / "m.csv").write_text("path,label\na.jpg,with_mask\nb.jpg,with_mask\n")
    big = (tmp_path / "b.jpg").stat().st_size
    assert big > 4000 > (tmp_path / "a.jpg").stat().st_size
    r = audit_dataset(load_manifest(tmp_path / "m.csv"), workers=1, progress=False)
    assert [u["path"] for u in r["unreadable"]] == [str(tmp_path / "b.jpg")]
    assert "over the limit" in r["unreadable"][0]["error"]
