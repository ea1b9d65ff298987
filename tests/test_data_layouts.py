"""Dataset layouts: recognition, labels, boxes, manifests and bad input."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from maskwatch.data import (
    Sample,
    load_dataset,
    parse_voc,
    read_face,
    read_manifest,
    write_manifest,
)
from maskwatch.errors import ImageError, LayoutError, MaskwatchError

VOC_OBJECT = """<object><name>{name}</name><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>
<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"""


def write_voc(path, filename, objects, size=(128, 96)):
    body = "".join(VOC_OBJECT.format(name=n, x1=b[0], y1=b[1], x2=b[2], y2=b[3])
                   for n, b in objects)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<annotation><filename>{filename}</filename><size><width>{size[0]}"
                    f"</width><height>{size[1]}</height><depth>3</depth></size>{body}"
                    "</annotation>")


def scene(path, seed=0, size=(128, 96)):
    """A scene photo: a gradient with a seeded face-like patch at the top left."""
    from conftest import face_array

    rgb = np.zeros((size[1], size[0], 3), np.uint8)
    rgb[..., 0] = np.linspace(0, 255, size[0], dtype=np.uint8)[None, :]
    rgb[:32, :32] = face_array(seed, size=32)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)
    return path


def test_class_folders_with_kaggle_splits_and_spellings(tmp_path, make_face):
    root = tmp_path / "12k" / "Face Mask Dataset"
    make_face(root / "Train" / "WithMask" / "1.jpg", seed=1, masked=True)
    make_face(root / "Train" / "WithMask" / "Augmented_1_555.jpg", seed=2, masked=True)
    make_face(root / "Test" / "WithMask" / "Augmented_1_777.jpg", seed=3, masked=True)
    make_face(root / "Test" / "WithMask" / "1.jpg", seed=6, masked=True)
    make_face(root / "Validation" / "WithoutMask" / "9.png", seed=4)
    make_face(root / "Train" / "mask_weared_incorrect" / "5.jpg", seed=5)
    (root / "Train" / "WithMask" / "notes.txt").write_text("not an image")
    ds = load_dataset(tmp_path / "12k")
    assert ds.layout == "class-folders"
    assert ds.classes == ["with_mask", "without_mask", "incorrect_mask"]
    assert ds.counts() == {"train": {"incorrect_mask": 1, "with_mask": 2},
                           "test": {"with_mask": 2}, "val": {"without_mask": 1}}
    assert ds.skipped["not an image file"] == 1
    groups = {s.path.name + "@" + s.split: s.group for s in ds.samples}
    # augmented copies join their base (the train original) even from another split
    assert groups["Augmented_1_555.jpg@train"] == groups["1.jpg@train"]
    assert groups["Augmented_1_777.jpg@test"] == groups["1.jpg@train"]
    assert groups["1.jpg@test"] != groups["1.jpg@train"]
    assert all(s.box is None for s in ds.samples)


@pytest.mark.parametrize("with_name,without_name", [
    ("with_mask", "without_mask"), ("mask", "no-mask"), ("WithMask", "no_mask"),
])
def test_class_folder_spellings_lowercase_splits(tmp_path, make_face, with_name, without_name):
    make_face(tmp_path / "data" / "valid" / with_name / "a.jpg", seed=1, masked=True)
    make_face(tmp_path / "data" / "train" / without_name / "b.jpg", seed=2)
    ds = load_dataset(tmp_path)
    assert {(s.label, s.split) for s in ds.samples} == {("with_mask", "val"),
                                                       ("without_mask", "train")}


@pytest.mark.parametrize("root", ["good", "masks", "with_mask"])
def test_a_dataset_named_like_a_class_keeps_its_class_folders(tmp_path, make_face, root):
    """A dataset folder whose own name is a class spelling (`good`, `masks`) labels its
    faces by their class folders; only a folder holding none is one class's folder."""
    make_face(tmp_path / root / "with_mask" / "a.jpg", seed=1, masked=True)
    make_face(tmp_path / root / "without_mask" / "b.jpg", seed=2)
    ds = load_dataset(tmp_path / root)
    assert sorted((s.path.name, s.label) for s in ds.samples) == [
        ("a.jpg", "with_mask"), ("b.jpg", "without_mask")]
    make_face(tmp_path / "no_mask" / "2024" / "c.jpg", seed=3)  # one class, in sub-folders
    assert [s.label for s in load_dataset(tmp_path / "no_mask").samples] == ["without_mask"]


def test_unknown_class_folder_is_noted(tmp_path, make_face):
    make_face(tmp_path / "with_mask" / "a.jpg", seed=1)
    make_face(tmp_path / "sunglasses" / "b.jpg", seed=2)
    ds = load_dataset(tmp_path)
    assert [s.label for s in ds.samples] == ["with_mask"]
    assert any("sunglasses" in n for n in ds.notes)


def test_voc_boxes_clipped_outside_and_margin(tmp_path):
    img = scene(tmp_path / "images" / "s0.png", seed=1)
    write_voc(tmp_path / "annotations" / "s0.xml", "s0.jpg", [
        ("with_mask", (0, 0, 32, 32)),
        ("without_mask", (100, 60, 140, 100)),   # runs past the 128x96 image: clipped
        ("mask_weared_incorrect", (200, 200, 220, 230)),  # wholly outside: skipped
        ("helmet", (1, 1, 5, 5)),                # unknown class: skipped, counted
        ("with_mask", (20, 20, 20, 40)),         # no width: an empty box, not "outside"
        ("with_mask", (60, 50, 40, 30)),         # corners swapped: set right
    ])
    ds = load_dataset(tmp_path)
    assert ds.layout == "voc"
    assert [(s.label, s.box) for s in ds.samples] == [
        ("with_mask", (0, 0, 32, 32)), ("without_mask", (100, 60, 128, 96)),
        ("with_mask", (40, 30, 60, 50))]
    assert ds.skipped["box outside the image"] == 1 and ds.skipped["empty box"] == 1
    assert any("box (20, 20, 20, 40) has no area" in n for n in ds.notes)
    assert ds.skipped["class 'helmet'"] == 1
    assert ds.clipped == 2  # the box run past the edge, and the one set right
    assert all(s.path == img and s.group == "s0" for s in ds.samples)
    face = read_face(ds.samples[0])
    assert face.shape == (32, 32, 3)
    assert np.array_equal(face, np.asarray(Image.open(img).convert("RGB"))[:32, :32])
    assert read_face(ds.samples[1], margin=0.25).shape == (96 - 51, 128 - 93, 3)
    assert read_face(ds.samples[0], margin=0.5).shape == (48, 48, 3)  # clipped at 0


def test_voc_xml_with_entities_is_refused(tmp_path):
    xml = tmp_path / "annotations" / "bomb.xml"
    xml.parent.mkdir()
    xml.write_text('<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "lol">]>'
                   "<annotation><filename>&x;</filename></annotation>")
    with pytest.raises(LayoutError, match="entities"):
        parse_voc(xml)
    scene(tmp_path / "images" / "ok.png")
    write_voc(tmp_path / "annotations" / "ok.xml", "ok.png", [("with_mask", (0, 0, 32, 32))])
    ds = load_dataset(tmp_path)  # one bad file is reported, not fatal
    assert len(ds.samples) == 1 and ds.skipped["bad annotation file"] == 1
    assert any("entities" in n for n in ds.notes)


def test_voc_only_bad_xml_and_malformed(tmp_path):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "a.xml").write_text("<annotation><object>")
    (tmp_path / "images").mkdir()
    with pytest.raises(LayoutError, match="not valid XML"):
        load_dataset(tmp_path)


def test_box_csv_with_mapping_and_unknown_classes(tmp_path):
    scene(tmp_path / "images" / "a.jpg", seed=1)
    scene(tmp_path / "images" / "b.jpg", seed=2)
    (tmp_path / "train.csv").write_text(
        "Name,X1,X2,Y1,Y2,ClassName\n"
        "a.jpg,0,32,0,32,face_with_mask\n"
        "a.jpg,40,80,10,50,face_no_mask\n"
        "b.jpg,5,25,5,25,hat\n"
        "b.jpg,5,25,5,25,hat\n"
        "missing.jpg,0,10,0,10,face_with_mask\n")
    ds = load_dataset(tmp_path, mapping="face_with_mask=with_mask,face_no_mask=without_mask")
    assert ds.layout == "csv"
    assert [(s.path.name, s.label, s.box) for s in ds.samples] == [
        ("a.jpg", "with_mask", (0, 0, 32, 32)), ("a.jpg", "without_mask", (40, 10, 80, 50))]
    assert ds.skipped["class 'hat'"] == 2 and ds.skipped["image not found"] == 1
    assert read_face(ds.samples[1]).shape == (40, 40, 3)
    # the CSV file itself is also accepted
    assert len(load_dataset(tmp_path / "train.csv", mapping={"hat": "without_mask"})) == 4
    with pytest.raises(LayoutError, match="SOURCE=TARGET"):
        load_dataset(tmp_path, mapping="face_with_mask")
    with pytest.raises(LayoutError, match="unknown class"):
        load_dataset(tmp_path, mapping="hat=sombrero")


@pytest.mark.parametrize("names_source", ["classes.txt", "yaml-list", "yaml-block", "arg"])
def test_yolo_labels(tmp_path, names_source):
    scene(tmp_path / "images" / "train" / "a.jpg", size=(100, 50))
    lbl = tmp_path / "labels" / "train" / "a.txt"
    lbl.parent.mkdir(parents=True)
    lbl.write_text("0 0.5 0.5 0.2 0.4\n1 0.05 0.1 0.2 0.2\nbad line\n")
    names = None
    if names_source == "classes.txt":
        (tmp_path / "classes.txt").write_text("mask\nno-mask\n")
    elif names_source == "yaml-list":
        (tmp_path / "data.yaml").write_text("path: .\nnames: ['mask', 'no-mask']\n")
    elif names_source == "yaml-block":
        (tmp_path / "data.yaml").write_text("names:\n  0: mask\n  1: no-mask\nnc: 2\n")
    else:
        names = "mask,no-mask"
    scene(tmp_path / "images" / "val" / "nobody.jpg", size=(100, 50))  # an empty label file
    (tmp_path / "labels" / "val").mkdir()
    (tmp_path / "labels" / "val" / "nobody.txt").write_text("")
    ds = load_dataset(tmp_path, names=names)
    assert ds.layout == "yolo"
    assert [(s.label, s.split, s.box) for s in ds.samples] == [
        ("with_mask", "train", (40, 15, 60, 35)), ("without_mask", "train", (0, 0, 15, 10))]
    assert ds.skipped["bad label line"] == 1
    nobody = tmp_path / "images" / "val" / "nobody.jpg"
    assert ds.empty_images == [nobody] and ds.empty_image_splits == {nobody: "val"}


def test_yolo_without_names_is_a_clear_error(tmp_path):
    scene(tmp_path / "images" / "a.jpg")
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    with pytest.raises(LayoutError, match="classes.txt"):
        load_dataset(tmp_path)


def test_manifest_round_trip(tmp_path, make_face):
    a = make_face(tmp_path / "imgs" / "a.jpg", seed=1)
    outside = make_face(tmp_path.parent / f"{tmp_path.name}_x" / "b.png", seed=2)
    samples = [Sample(a, "with_mask", "train", "src", "g1", None),
               Sample(outside, "without_mask", "test", "src", "g2", (1, 2, 30, 40))]
    m = write_manifest(tmp_path / "m" / "manifest.csv", samples)
    text = m.read_text()
    assert text.splitlines()[0] == "path,label,split,source,group,x1,y1,x2,y2"
    with pytest.raises(MaskwatchError, match="already exists"):
        write_manifest(m, samples)
    back = read_manifest(m)
    assert [s.path.resolve() for s in back] == [a.resolve(), outside.resolve()]
    assert [(s.label, s.split, s.group, s.box) for s in back] == [
        ("with_mask", "train", "g1", None), ("without_mask", "test", "g2", (1, 2, 30, 40))]
    ds = load_dataset(m)
    assert ds.layout == "manifest" and len(ds) == 2
    assert read_face(ds.samples[1]).shape == (38, 29, 3)


def test_manifest_bad_label(tmp_path):
    m = tmp_path / "manifest.csv"
    m.write_text("path,label\nx.jpg,zebra\n")
    with pytest.raises(LayoutError, match="unknown label 'zebra'"):
        load_dataset(m)


def test_missing_empty_and_unknown_layouts(tmp_path, make_face):
    with pytest.raises(LayoutError, match="no such file or folder"):
        load_dataset(tmp_path / "nope")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(LayoutError, match="folder is empty"):
        load_dataset(tmp_path / "empty")
    make_face(tmp_path / "random" / "pics" / "a.jpg")
    with pytest.raises(LayoutError, match="one folder per class.*Pascal VOC.*YOLO"):
        load_dataset(tmp_path / "random")
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(LayoutError, match="not a dataset file"):
        load_dataset(tmp_path / "x.txt")


def test_read_face_bad_files(tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match="0 bytes"):
        read_face(Sample(empty, "with_mask"))
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"this is not a JPEG at all")
    with pytest.raises(ImageError, match="not an image"):
        read_face(Sample(junk, "with_mask"))
    good = tmp_path / "g.png"
    Image.new("RGB", (20, 20)).save(good)
    with pytest.raises(ImageError, match="outside"):
        read_face(Sample(good, "with_mask", box=(30, 30, 40, 40)))


def test_manifest_keeps_difficult_faces_and_face_free_photos(tmp_path):
    a, b = scene(tmp_path / "imgs" / "a.jpg"), scene(tmp_path / "imgs" / "b.jpg", seed=1)
    c = scene(tmp_path / "imgs" / "c.jpg", seed=2)
    samples = [Sample(a, "with_mask", "train", "src", "a", (0, 0, 32, 32)),
               Sample(a, "without_mask", "train", "src", "a", (60, 10, 70, 20), True)]
    m = write_manifest(tmp_path / "manifest.csv", samples, empty_images=[(b, "test"), c])
    lines = m.read_text().splitlines()
    assert lines[0] == "path,label,split,source,group,x1,y1,x2,y2,difficult"
    assert lines[1:] == ["imgs/a.jpg,with_mask,train,src,a,0,0,32,32,0",
                         "imgs/a.jpg,without_mask,train,src,a,60,10,70,20,1",
                         "imgs/b.jpg,,test,,,,,,,", "imgs/c.jpg,,,,,,,,,"]
    ds = load_dataset(m)
    assert [(s.label, s.box, s.difficult) for s in ds.samples] == [
        ("with_mask", (0, 0, 32, 32), False), ("without_mask", (60, 10, 70, 20), True)]
    assert ds.empty_images == [tmp_path / "imgs" / "b.jpg", tmp_path / "imgs" / "c.jpg"]
    assert not ds.notes
    # written again from what was read: the same file
    again = write_manifest(tmp_path / "again.csv", ds.samples, empty_images=ds.empty_images)
    assert again.read_text().replace(",test,", ",,") == m.read_text().replace(",test,", ",,")
    # without a difficult face the column is left out, as before; face-free rows stay
    plain = write_manifest(tmp_path / "plain.csv", samples[:1], empty_images=[c])
    assert plain.read_text().splitlines() == [
        "path,label,split,source,group,x1,y1,x2,y2",
        "imgs/a.jpg,with_mask,train,src,a,0,0,32,32", "imgs/c.jpg,,,,,,,,"]
    assert load_dataset(plain).empty_images == [tmp_path / "imgs" / "c.jpg"]


def test_manifest_difficult_column_is_optional_and_checked(tmp_path):
    scene(tmp_path / "a.jpg")
    (tmp_path / "old.csv").write_text("path,label,x1,y1,x2,y2\na.jpg,with_mask,0,0,32,32\n")
    assert [s.difficult for s in load_dataset(tmp_path / "old.csv").samples] == [False]
    (tmp_path / "m.csv").write_text(
        "path,label,x1,y1,x2,y2,difficult\n"
        "a.jpg,with_mask,0,0,32,32,TRUE\n"
        "a.jpg,with_mask,0,0,32,32,\n"
        "a.jpg,with_mask,0,0,32,32,maybe\n"
        "a.jpg,,0,0,32,32,\n"  # a box needs a label: not a face-free photo
        ",,,,,,\n")
    ds = load_dataset(tmp_path / "m.csv")
    assert [s.difficult for s in ds.samples] == [True, False]
    assert ds.empty_images == []
    assert [n.split(":", 2)[1:] for n in ds.notes] == [
        ["4", " difficult is 'maybe', not 1 or 0"], ["5", " unknown label ''"]]


def test_audit_reads_photos_annotated_as_holding_no_face(tmp_path, capsys):
    """Face-free photos are audited too: unreadable ones are listed, and one that is the
    same photo as a scene with annotated faces is flagged (one annotation is wrong)."""
    from maskwatch.cli import main
    from maskwatch.data import audit_dataset

    root = tmp_path / "voc"
    scene(root / "images" / "a.png", seed=1)
    write_voc(root / "annotations" / "a.xml", "a.png", [("with_mask", (2, 2, 30, 30))])
    (root / "images" / "b.png").write_bytes((root / "images" / "a.png").read_bytes())
    rng = np.random.default_rng(5)
    Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(
        root / "images" / "c.png")
    (root / "images" / "d.png").write_bytes(b"not a png")
    for name in "bcd":
        write_voc(root / "annotations" / f"{name}.xml", f"{name}.png", [])
    report = audit_dataset(load_dataset(root), workers=1, progress=False)
    assert report["images"] == 1 and report["images_without_faces"] == 3
    assert report["faceless_duplicates"] == [[str(root / "images" / "b.png"),
                                              str(root / "images" / "a.png")]]
    assert [u["path"] for u in report["unreadable"]] == [str(root / "images" / "d.png")]
    assert main(["data", "audit", str(root), "-q"]) == 0
    out = capsys.readouterr().out
    assert "Photos annotated as holding no face: 3" in out and "images/b.png ~ images/a.png" in out


def test_yolo_label_without_its_image_is_named(tmp_path):
    scene(tmp_path / "images" / "a.jpg")
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "a.txt").write_text("0 0.5 0.5 0.2 0.4\n")
    (tmp_path / "labels" / "gone.txt").write_text("0 0.5 0.5 0.2 0.4\n")
    ds = load_dataset(tmp_path, names="mask")
    assert ds.skipped["image not found"] == 1
    assert any("gone.txt" in n for n in ds.notes)


def test_manifest_with_only_a_header_is_refused(tmp_path):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path,label,split,source,group,x1,y1,x2,y2\n")
    with pytest.raises(LayoutError, match="no rows"):
        load_dataset(manifest)
