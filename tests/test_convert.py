"""Dataset converters: VOC, YOLO, ImageFolder, MOTChallenge -> COCO, and COCO -> YOLO.

Each converter runs on a hand-counted fixture (tiny images written here); the expected ids,
boxes and counts are worked out by hand in the comments. Where ../shared/data/real is present
the real BCCD (VOC) and TUD-Campus (MOT15) files are checked against an independent reading.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from vision_tasks.data.coco import CocoDataError, CocoIndex
from vision_tasks.data.convert import (
    coco_to_yolo,
    convert,
    convert_dataset,
    imagefolder_to_coco,
    mot_to_coco,
    summarise,
    voc_to_coco,
    write_mot,
    yolo_to_coco,
)
from vision_tasks.data.convert.cli import convert_main
from vision_tasks.tasks.classify import ClassifyDataset

REAL = Path(__file__).resolve().parents[1].parent / "shared/data/real"


def _image(path: Path, width: int, height: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((height, width, 3), 120, np.uint8))
    return path


def _boxes(dataset: dict) -> list[tuple]:
    return [
        (a["image_id"], a["category_id"], a["bbox"], a["iscrowd"]) for a in dataset["annotations"]
    ]


# ---- Pascal VOC ---------------------------------------------------------------------------------


def _voc_xml(filename: str | None, size: tuple | None, objects: list[tuple]) -> str:
    """objects: (name, xmin, ymin, xmax, ymax, difficult)."""
    parts = ["<annotation>"]
    if filename:
        parts.append(f"<filename>{filename}</filename>")
    if size:
        parts.append(f"<size><width>{size[0]}</width><height>{size[1]}</height></size>")
    for name, x0, y0, x1, y1, difficult in objects:
        box = f"<xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax>"
        flags = f"<truncated>1</truncated><difficult>{difficult}</difficult>"
        parts.append(f"<object><name>{name}</name>{flags}<bndbox>{box}</bndbox></object>")
    return "".join(parts) + "</annotation>"


@pytest.fixture
def voc_root(tmp_path: Path) -> Path:
    """a: dog + difficult cat; b: a point box (degenerate) + a dog over the edge; c: empty."""
    root = tmp_path / "voc"
    xmls = {
        "a": _voc_xml("a.jpg", (40, 30), [("dog", 1, 1, 10, 10, 0), ("cat", 5, 6, 20, 16, 1)]),
        "b": _voc_xml("b.jpg", (40, 30), [("cat", 7, 7, 7, 7, 0), ("dog", 30, 20, 45, 35, 0)]),
        "c": _voc_xml("c.jpg", (40, 30), []),
    }
    for stem, text in xmls.items():
        (root / "Annotations").mkdir(parents=True, exist_ok=True)
        (root / "Annotations" / f"{stem}.xml").write_text(text)
        _image(root / "JPEGImages" / f"{stem}.jpg", 40, 30)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "train.txt").write_text("a\nc\n\n")
    return root


def test_voc_boxes_follow_detectron2_and_count_what_is_dropped(voc_root: Path) -> None:
    dataset = voc_to_coco(voc_root)
    assert [c["name"] for c in dataset["categories"]] == ["cat", "dog"]  # sorted: ids 1, 2
    assert [(i["id"], i["file_name"], i["width"], i["height"]) for i in dataset["images"]] == [
        (1, "JPEGImages/a.jpg", 40, 30),
        (2, "JPEGImages/b.jpg", 40, 30),
        (3, "JPEGImages/c.jpg", 40, 30),
    ]
    # x = xmin - 1, w = xmax - xmin + 1; the point box (7,7,7,7) is dropped, the edge box kept
    assert _boxes(dataset) == [
        (1, 2, [0, 0, 10, 10], 0),
        (1, 1, [4, 5, 16, 11], 0),
        (2, 2, [29, 19, 16, 16], 0),
    ]
    assert [a["difficult"] for a in dataset["annotations"]] == [0, 1, 0]
    assert dataset["annotations"][1]["area"] == 16 * 11
    assert str(summarise("voc", dataset)) == (
        "voc: 3 images, 3 boxes, 2 classes; difficult kept=1; dropped: degenerate boxes=1"
    )


def test_voc_difficult_ignore_drop_classes_and_split(voc_root: Path, tmp_path: Path) -> None:
    ignored = voc_to_coco(voc_root, difficult="ignore")
    assert [a["iscrowd"] for a in ignored["annotations"]] == [0, 1, 0]
    assert ignored["info"]["marked"] == {"difficult as iscrowd": 1}
    dropped = voc_to_coco(voc_root, difficult="drop")
    assert len(dropped["annotations"]) == 2
    assert dropped["info"]["dropped"] == {"degenerate boxes": 1, "difficult objects": 1}
    fixed = voc_to_coco(voc_root, classes=["dog", "cat", "bird"])
    assert [c["name"] for c in fixed["categories"]] == ["dog", "cat", "bird"]
    assert [a["category_id"] for a in fixed["annotations"]] == [1, 2, 1]
    out = convert("voc", voc_root, tmp_path / "train.json", {"split": "train"})
    train = json.loads(out.read_text())
    assert [i["file_name"] for i in train["images"]] == ["JPEGImages/a.jpg", "JPEGImages/c.jpg"]
    index = CocoIndex(out, voc_root)  # strict: no box of a or c crosses the edge
    assert index.category_names == ["cat", "dog"] and len(index) == 2


def test_voc_splits_of_one_root_share_category_ids(voc_root: Path) -> None:
    # A bird only in d.xml, outside the train split: train must still number cat 2, dog 3.
    (voc_root / "Annotations" / "d.xml").write_text(
        _voc_xml("d.jpg", (40, 30), [("bird", 1, 1, 9, 9, 0)])
    )
    _image(voc_root / "JPEGImages" / "d.jpg", 40, 30)
    (voc_root / "ImageSets" / "Main" / "birds.txt").write_text("d\n")
    train, birds = voc_to_coco(voc_root, split="train"), voc_to_coco(voc_root, split="birds")
    assert train["categories"] == birds["categories"]
    assert [c["name"] for c in train["categories"]] == ["bird", "cat", "dog"]
    assert [a["category_id"] for a in train["annotations"]] == [3, 2]


@pytest.mark.parametrize(
    ("xml", "match"),
    [
        (_voc_xml("a.jpg", None, []), r"a\.xml: field 'size/width': .*missing"),
        (_voc_xml("a.jpg", (40, 0), []), r"a\.xml: field 'size/height': .*got '0'"),
        (
            _voc_xml("a.jpg", (40, 30), [("dog", "x", 1, 5, 5, 0)]),
            r"a\.xml: object 1: field 'bndbox/xmin': expected a number, got 'x'",
        ),
        (
            _voc_xml("a.jpg", (40, 30), [("dog", 1, 1, 5, 5, 0), ("", 1, 1, 5, 5, 0)]),
            r"a\.xml: object 2: field 'name'",
        ),
        (_voc_xml("a.jpg", (40, 30), [("dog", 1, 1, 5, 5, 2)]), r"field 'difficult'"),
        (_voc_xml("missing.jpg", (40, 30), []), r"a\.xml: field 'filename': .*missing\.jpg"),
        ("<annotation><size>", r"a\.xml: malformed XML"),
    ],
)
def test_voc_bad_input_names_file_and_field(voc_root: Path, xml: str, match: str) -> None:
    (voc_root / "Annotations" / "a.xml").write_text(xml)
    with pytest.raises(CocoDataError, match=match):
        voc_to_coco(voc_root)


def test_voc_refuses_unknown_classes_and_bad_split_lists(voc_root: Path) -> None:
    with pytest.raises(CocoDataError, match=r"a\.xml: object 2: field 'name': class 'cat'"):
        voc_to_coco(voc_root, classes=["dog"])
    with pytest.raises(CocoDataError, match=r"no split list ImageSets/Main/val\.txt"):
        voc_to_coco(voc_root, split="val")
    (voc_root / "ImageSets" / "Main" / "val.txt").write_text("a\nzzz\n")
    with pytest.raises(CocoDataError, match=r"val\.txt:2: no annotation file .*zzz\.xml"):
        voc_to_coco(voc_root, split="val")


def test_voc_tool_prints_one_summary_line_and_one_error_line(voc_root, tmp_path, capsys) -> None:
    out = convert_main(
        ["voc", str(voc_root), "--difficult", "drop", "--output", str(tmp_path / "v.json")]
    )
    lines = capsys.readouterr().out.splitlines()
    assert (
        lines[0] == "voc: 3 images, 2 boxes, 2 classes; dropped: degenerate boxes=1, "
        "difficult objects=1"
    )
    assert lines[1] == f"wrote {out}; pass --data.*_images {voc_root}"
    (voc_root / "Annotations" / "b.xml").write_text(_voc_xml("b.jpg", None, []))
    with pytest.raises(SystemExit) as exit_info:
        convert_main(["voc", str(voc_root), "--output", str(tmp_path / "v.json")])
    message = str(exit_info.value)
    assert message.startswith("error: ") and "b.xml: field 'size/width'" in message
    assert "\n" not in message


# ---- YOLO ---------------------------------------------------------------------------------------


@pytest.fixture
def yolo_root(tmp_path: Path) -> Path:
    """images/train: p (box, polygon, zero-width box), q (empty label), r (no label) + orphan."""
    root = tmp_path / "yolo"
    _image(root / "images/train/p.jpg", 40, 20)
    _image(root / "images/train/q.png", 40, 20)
    _image(root / "images/train/r.jpg", 40, 20)
    (root / "images/train/notes.txt").write_text("not an image")
    labels = root / "labels/train"
    labels.mkdir(parents=True)
    (labels / "p.txt").write_text("0 0.5 0.5 0.5 0.5\n1 0.1 0.1 0.6 0.1 0.6 0.6\n0 0.5 0.5 0 0.2\n")
    (labels / "q.txt").write_text("")
    (labels / "orphan.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    (root / "data.yaml").write_text("path: .\nnames:\n  0: red\n  1: blue\n")
    return root


def test_yolo_boxes_polygons_and_counts(yolo_root: Path) -> None:
    dataset = yolo_to_coco(yolo_root, yolo_root / "data.yaml", split="train")
    assert [c["name"] for c in dataset["categories"]] == ["red", "blue"]  # class index + 1
    assert [i["file_name"] for i in dataset["images"]] == [
        "images/train/p.jpg",
        "images/train/q.png",
        "images/train/r.jpg",
    ]
    # p is 40x20: cx .5 cy .5 w .5 h .5 -> [10, 5, 20, 10]; polygon -> (4,2) (24,2) (24,12)
    assert _boxes(dataset) == [
        (1, 1, [10.0, 5.0, 20.0, 10.0], 0),
        (1, 2, [4.0, 2.0, 20.0, 10.0], 0),
    ]
    polygon = dataset["annotations"][1]["segmentation"]
    assert polygon == [[4.0, 2.0, 24.0, 2.0, 24.0, 12.0]]
    assert "segmentation" not in dataset["annotations"][0]
    assert 90 <= dataset["annotations"][1]["area"] <= 110  # triangle 20 x 10 / 2, rasterised
    assert dataset["info"]["marked"] == {"images without label file": 1}
    assert dataset["info"]["dropped"] == {
        "non-image files": 1,
        "degenerate boxes": 1,
        "label files without image": 1,
    }


def test_yolo_names_from_a_plain_file_and_the_flat_layout(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    _image(root / "images/x.jpg", 10, 10)
    (root / "labels").mkdir()
    (root / "labels/x.txt").write_text("2 0.5 0.5 0.2 0.4\n")
    (root / "names.txt").write_text("a\nb\nc\n")
    dataset = yolo_to_coco(root, root / "names.txt")
    assert [c["name"] for c in dataset["categories"]] == ["a", "b", "c"]
    assert _boxes(dataset) == [(1, 3, [4.0, 3.0, 2.0, 4.0], 0)]
    index = CocoIndex(
        convert("yolo", root, tmp_path / "y.json", {"names": root / "names.txt"}), root
    )
    assert len(index.annotations(1)) == 1


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ("0 0.5 0.5 0.5", r"p\.txt:2: field 'line': .*got 4 values"),
        ("0 0.1 0.1 0.5 0.1 0.5 0.5 0.2", r"p\.txt:2: field 'line': .*got 8 values"),
        ("2 0.5 0.5 0.5 0.5", r"p\.txt:2: field 'class': expected a class index 0\.\.1"),
        ("a 0.5 0.5 0.5 0.5", r"p\.txt:2: field 'class'"),
        ("0 0.5 abc 0.5 0.5", r"p\.txt:2: field 'cy': expected a number, got 'abc'"),
        ("0 0.5 0.5 1.2 0.5", r"p\.txt:2: field 'w': value 1.2 is outside \[0, 1\]"),
        ("1 0.1 0.1 0.5 0.1 0.5 -0.3", r"p\.txt:2: field 'y3': value -0.3 is outside"),
        ("0 0.5 0.5 0.5 nan", r"p\.txt:2: field 'h'"),
    ],
)
def test_yolo_bad_label_lines_name_file_line_and_field(yolo_root: Path, line, match) -> None:
    (yolo_root / "labels/train/p.txt").write_text(f"0 0.5 0.5 0.5 0.5\n{line}\n")
    with pytest.raises(CocoDataError, match=match):
        yolo_to_coco(yolo_root, yolo_root / "data.yaml", split="train")


def test_yolo_tolerates_rounding_but_not_bad_names(yolo_root: Path) -> None:
    (yolo_root / "labels/train/p.txt").write_text("0 0.5 0.5 1.0005 1\n")
    dataset = yolo_to_coco(yolo_root, yolo_root / "data.yaml", split="train")
    assert dataset["annotations"][0]["bbox"][2] == pytest.approx(40.02)
    (yolo_root / "bad.yaml").write_text("names: {0: a, 2: b}\n")
    with pytest.raises(CocoDataError, match=r"bad\.yaml: field 'names': class indices must be 0"):
        yolo_to_coco(yolo_root, yolo_root / "bad.yaml", split="train")
    with pytest.raises(CocoDataError, match=r"no folder 'images/val'"):
        yolo_to_coco(yolo_root, yolo_root / "data.yaml", split="val")


# ---- ImageFolder --------------------------------------------------------------------------------


def test_imagefolder_gives_one_full_image_label_per_image(tmp_path: Path) -> None:
    root = tmp_path / "folders"
    _image(root / "dog/3.jpg", 30, 20)
    _image(root / "cat/1.jpg", 16, 12)
    _image(root / "cat/sub/2.png", 8, 8)  # nested: torchvision walks sub-folders too
    (root / "dog/notes.txt").write_text("x")
    (root / "README.md").write_text("x")
    out = convert("imagefolder", root, tmp_path / "f.json")
    dataset = json.loads(out.read_text())
    assert [c["name"] for c in dataset["categories"]] == ["cat", "dog"]
    files = [i["file_name"] for i in dataset["images"]]
    assert files == ["cat/1.jpg", "cat/sub/2.png", "dog/3.jpg"]
    assert _boxes(dataset) == [
        (1, 1, [0, 0, 16, 12], 0),
        (2, 1, [0, 0, 8, 8], 0),
        (3, 2, [0, 0, 30, 20], 0),
    ]
    assert dataset["info"]["dropped"] == {"files outside class folders": 1, "non-image files": 1}
    samples = ClassifyDataset(CocoIndex(out, root), 16, train=False, mode="image")
    assert [samples[i]["label"] for i in range(3)] == [0, 0, 1]
    (root / "empty").mkdir()
    with pytest.raises(CocoDataError, match="class folder 'empty' holds no image files"):
        imagefolder_to_coco(root)


# ---- MOTChallenge -------------------------------------------------------------------------------

# MOT17 columns: frame,id,x,y,w,h,conf,class,visibility
MOT17_GT = """\
1,1,2,3,10,12,1,1,1.0
1,2,-4,5,10,10,1,1,0.2
2,1,3,3,10,12,1,2,1.0
2,3,1,1,5,5,1,3,1.0
3,1,4,3,10,12,0,1,1.0
3,4,4,3,0,12,1,1,1.0
4,1,5,3,10,12,1,12,1.0
4,2,6,4,8,9,1,1,0.9
"""


@pytest.fixture
def mot_sequence(tmp_path: Path) -> Path:
    root = tmp_path / "MOT17-99"
    for frame in range(1, 5):
        _image(root / f"img1/{frame:06d}.jpg", 32, 24)
    (root / "seqinfo.ini").write_text(
        "[Sequence]\nname=MOT17-99\nimDir=img1\nframeRate=30\nseqLength=4\n"
        "imWidth=32\nimHeight=24\nimExt=.jpg\n"
    )
    (root / "gt").mkdir()
    (root / "gt/gt.txt").write_text(MOT17_GT)
    return root


def test_mot17_classes_as_trackeval_reads_them(mot_sequence: Path) -> None:
    dataset = mot_to_coco(mot_sequence, chunks=2, min_visibility=0.5)
    images = dataset["images"]
    assert [(i["file_name"], i["frame"], i["camera_id"]) for i in images] == [
        ("img1/000001.jpg", 1, 1),
        ("img1/000002.jpg", 2, 1),
        ("img1/000003.jpg", 3, 2),
        ("img1/000004.jpg", 4, 2),
    ]
    assert {i["sequence"] for i in images} == {"MOT17-99"}
    found = [
        (a["image_id"], a["track_id"], a["bbox"], a["iscrowd"]) for a in dataset["annotations"]
    ]
    assert found == [
        (1, 1, [2, 3, 10, 12], 0),
        (1, 2, [-4, 5, 10, 10], 1),  # visibility 0.2 < 0.5; edge-crossing box kept as written
        (2, 1, [3, 3, 10, 12], 1),  # class 2 person_on_vehicle: distractor
        (3, 1, [4, 3, 10, 12], 1),  # conf 0: zero-marked
        (4, 1, [5, 3, 10, 12], 1),  # class 12 reflection: distractor
        (4, 2, [6, 4, 8, 9], 0),
    ]  # car (class 3) and the zero-width box are dropped
    assert dataset["categories"] == [{"id": 1, "name": "person", "supercategory": "person"}]
    assert dataset["info"]["marked"] == {
        "below min visibility as iscrowd": 1,
        "distractors as iscrowd": 2,
        "zero-marked as iscrowd": 1,
    }
    assert dataset["info"]["dropped"] == {"non-pedestrian classes": 1, "degenerate boxes": 1}
    assert mot_to_coco(mot_sequence)["annotations"][1]["iscrowd"] == 0  # default visibility 0


def test_mot_sequence_frames_can_be_copied_and_load_with_skip(mot_sequence, tmp_path) -> None:
    out = convert("mot", mot_sequence, tmp_path / "m.json", {"frames": tmp_path / "frames"})
    dataset = json.loads(out.read_text())
    assert dataset["images"][0]["file_name"] == "MOT17-99/000001.jpg"
    assert (tmp_path / "frames/MOT17-99/000004.jpg").is_file()
    with pytest.raises(CocoDataError, match="extends outside the 32x24 image"):
        CocoIndex(out, tmp_path / "frames")  # strict refuses the edge box by design
    index = CocoIndex(out, tmp_path / "frames", policy="skip")
    assert index.skipped == {"bbox outside image": 1} and len(index) == 4


def test_mot_sequence_without_seqinfo_and_with_a_bad_one(mot_sequence: Path) -> None:
    (mot_sequence / "seqinfo.ini").unlink()
    (mot_sequence / "img1/000005.png").write_bytes(b"")  # not a .jpg: not a frame
    dataset = mot_to_coco(mot_sequence)  # name from the folder, 4 frames, size from the header
    assert [(i["sequence"], i["width"], i["height"]) for i in dataset["images"]] == [
        ("MOT17-99", 32, 24)
    ] * 4
    (mot_sequence / "seqinfo.ini").write_text("[Sequence]\nseqLength=many\n")
    with pytest.raises(CocoDataError, match=r"seqinfo\.ini: field 'seqlength': .*'many'"):
        mot_to_coco(mot_sequence)
    (mot_sequence / "seqinfo.ini").write_text("[Sequence]\nseqLength=6\n")
    with pytest.raises(CocoDataError, match=r"img1: frames missing: 000005\.jpg, 000006\.jpg"):
        mot_to_coco(mot_sequence)


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ("1,1,2,3,10", r"gt\.txt:9: expected at least 6 comma-separated fields .*got 5"),
        ("1,1,2,x,10,12,1,1,1", r"gt\.txt:9: field 'y': expected a number, got 'x'"),
        ("1.5,1,2,3,10,12,1,1,1", r"gt\.txt:9: field 'frame': expected an integer"),
        ("0,1,2,3,10,12,1,1,1", r"gt\.txt:9: field 'frame': frames count from 1"),
        ("4,2,2,3,10,12,1,1,1", r"gt\.txt:9: field 'id': identity 2 is already in frame 4"),
        ("5,9,2,3,10,12,1,1,1", r"gt\.txt:9: field 'frame': frame 5 is beyond .* 4 frames"),
    ],
)
def test_mot_bad_gt_lines_name_file_line_and_field(mot_sequence: Path, line, match) -> None:
    (mot_sequence / "gt/gt.txt").write_text(MOT17_GT + line + "\n")
    with pytest.raises(CocoDataError, match=match):
        mot_to_coco(mot_sequence)


def _video(path: Path, frames: int, width: int = 64, height: int = 48) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (width, height))
    for i in range(frames):
        writer.write(np.full((height, width, 3), 30 * i, np.uint8))
    writer.release()
    return path


# MOT15 columns: frame,id,x,y,w,h,conf,world x,y,z (every row a pedestrian)
MOT15_GT = (
    "1,1,3,4,20,30,1,-1,-1,-1\n1,2,40,5,30,40.5,1,-1,-1,-1\n3,1,4.25,4,20,30,1,-1,-1,-1\n"
    "6,2,50,6,20,44,1,2.5,3.1,0\n"
)


def test_mot_video_frames_chunks_and_the_way_back(tmp_path: Path) -> None:
    video, gt = _video(tmp_path / "walk.avi", 6), tmp_path / "walk_gt.txt"
    gt.write_text(MOT15_GT)
    dataset = mot_to_coco(video, gt=gt, frames=tmp_path / "frames", chunks=3)
    assert len(dataset["images"]) == 6
    assert [i["camera_id"] for i in dataset["images"]] == [1, 1, 2, 2, 3, 3]
    assert dataset["images"][5]["file_name"] == "walk/000006.jpg"
    assert (tmp_path / "frames/walk/000006.jpg").is_file()
    found = [
        (a["image_id"], a["track_id"], a["bbox"], a["iscrowd"]) for a in dataset["annotations"]
    ]
    assert found == [
        (1, 1, [3, 4, 20, 30], 0),
        (1, 2, [40, 5, 30, 40.5], 0),
        (3, 1, [4.25, 4, 20, 30], 0),
        (6, 2, [50, 6, 20, 44], 0),
    ]
    assert "info" in dataset and "dropped" not in dataset["info"]
    back = write_mot(dataset["images"], dataset["annotations"], tmp_path / "back.txt")
    written = np.loadtxt(back, delimiter=",")
    assert written[:, :7] == pytest.approx(np.loadtxt(gt, delimiter=",")[:, :7])
    gt.write_text(MOT15_GT + "7,1,3,4,20,30,1,-1,-1,-1\n")
    with pytest.raises(CocoDataError, match=r"walk_gt\.txt:5: field 'frame': frame 7 is beyond"):
        mot_to_coco(video, gt=gt, frames=tmp_path / "frames")


def test_mot_tool_puts_video_frames_beside_the_output(tmp_path: Path, capsys) -> None:
    video, gt = _video(tmp_path / "walk.avi", 6), tmp_path / "walk_gt.txt"
    gt.write_text(MOT15_GT)
    out = tmp_path / "out/walk.json"
    convert_main(["mot", str(video), "--gt", str(gt), "--chunks", "2", "--output", str(out)])
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "mot: 6 images, 4 boxes, 1 class; dropped: nothing",
        f"wrote {out}; pass --data.*_images {tmp_path / 'out/walk_frames'}",
    ]
    index = CocoIndex(out, tmp_path / "out/walk_frames", policy="skip")  # 2 boxes cross the edge
    assert index.skipped == {"bbox outside image": 2} and index.image_path(6).is_file()
    gt.write_text("1,1,3,4,20\n")
    with pytest.raises(SystemExit) as exit_info:
        convert_main(["mot", str(video), "--gt", str(gt), "--output", str(out)])
    assert str(exit_info.value) == (
        f"error: {gt}:1: expected at least 6 comma-separated fields (frame,id,x,y,w,h,...), got 5"
    )
    gt.write_text(MOT15_GT)
    with pytest.raises(CocoDataError, match="none.avi: no such sequence folder or video file"):
        mot_to_coco(tmp_path / "none.avi", gt=gt, frames=tmp_path / "f")
    (tmp_path / "broken.avi").write_bytes(b"not a video")
    with pytest.raises(CocoDataError, match="broken.avi: cannot open the video"):
        mot_to_coco(tmp_path / "broken.avi", gt=gt, frames=tmp_path / "f")
    with pytest.raises(CocoDataError, match="walk.avi: frames of a video need a frames folder"):
        mot_to_coco(video, gt=gt)


# ---- COCO -> YOLO -> COCO -----------------------------------------------------------------------


@pytest.fixture
def coco_json(tmp_path: Path) -> Path:
    """Two images; categories with ids 3 and 7; a crowd box, a polygon, fractional boxes."""
    root = tmp_path / "coco"
    _image(root / "a.jpg", 64, 48)
    _image(root / "sub/b.png", 50, 40)
    polygon = [10.5, 8.25, 30.75, 8.25, 30.75, 20.125, 12.0, 22.5]
    dataset = {
        "images": [
            {"id": 1, "file_name": "a.jpg", "width": 64, "height": 48},
            {"id": 5, "file_name": "sub/b.png", "width": 50, "height": 40},
        ],
        "categories": [{"id": 7, "name": "kite"}, {"id": 3, "name": "car"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 7, "bbox": [1.125, 2.3, 20.7, 10.01]},
            {
                "id": 2,
                "image_id": 1,
                "category_id": 3,
                "bbox": [10.5, 8.25, 20.25, 14.25],
                "segmentation": [polygon],
            },
            {"id": 3, "image_id": 5, "category_id": 3, "bbox": [0, 0, 50, 40], "iscrowd": 1},
            {"id": 4, "image_id": 5, "category_id": 7, "bbox": [33.3, 0.001, 16.7, 39.999]},
        ],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(dataset))
    return path


def test_coco_to_yolo_and_back_reproduces_the_boxes(coco_json: Path, tmp_path: Path) -> None:
    out = tmp_path / "yolo"
    summary = coco_to_yolo(coco_json, tmp_path / "coco", out)
    assert str(summary) == "coco2yolo: 2 images, 3 boxes, 2 classes; dropped: crowd annotations=1"
    assert yaml.safe_load((out / "data.yaml").read_text())["names"] == ["car", "kite"]  # id order
    assert (out / "images/sub/b.png").is_symlink()
    assert (out / "labels/sub/b.txt").read_text().split()[0] == "1"  # kite: class index 1
    back = yolo_to_coco(out, out / "data.yaml")
    assert [c["name"] for c in back["categories"]] == ["car", "kite"]
    assert [i["file_name"] for i in back["images"]] == ["images/a.jpg", "images/sub/b.png"]
    expected = [[1.125, 2.3, 20.7, 10.01], [10.5, 8.25, 20.25, 14.25], [33.3, 0.001, 16.7, 39.999]]
    boxes = [a["bbox"] for a in back["annotations"]]
    assert np.allclose(boxes, expected, rtol=1e-6, atol=1e-9)
    assert [a["category_id"] for a in back["annotations"]] == [2, 1, 2]  # kite, car, kite


def test_coco_to_yolo_segments_write_polygons_and_box_outlines(coco_json, tmp_path) -> None:
    out = tmp_path / "yolo_seg"
    summary = coco_to_yolo(coco_json, tmp_path / "coco", out, segments=True, copy_images=True)
    assert summary.marked == {"written as box outlines": 2}  # the crowd box is not written
    assert not (out / "images/a.jpg").is_symlink() and (out / "images/a.jpg").is_file()
    back = yolo_to_coco(out, out / "data.yaml")
    polygon = [10.5, 8.25, 30.75, 8.25, 30.75, 20.125, 12.0, 22.5]
    assert np.allclose(back["annotations"][1]["segmentation"][0], polygon, rtol=1e-6)
    assert np.allclose(back["annotations"][0]["bbox"], [1.125, 2.3, 20.7, 10.01], rtol=1e-6)
    bad = json.loads(coco_json.read_text())
    bad["annotations"][0]["bbox"] = [1, 2, -3, 4]
    coco_json.write_text(json.dumps(bad))
    with pytest.raises(CocoDataError, match="width -3 is not positive"):
        coco_to_yolo(coco_json, tmp_path / "coco", out)
    summary = coco_to_yolo(coco_json, tmp_path / "coco", out, policy="skip")
    assert summary.dropped == {"invalid bbox (policy skip)": 1, "crowd annotations": 1}


def test_coco2yolo_tool(coco_json: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "y"
    printed = _run_tool_lines(capsys, coco_json, tmp_path, out, [])
    assert printed[0].startswith("coco2yolo: 2 images, 3 boxes")
    assert sorted(p.name for p in (out / "labels").rglob("*.txt")) == ["a.txt", "b.txt"]
    # one flat split: data.yaml names it as both train and val, and the tool says so
    assert printed[-1].startswith("data.yaml: train and val are the same images")
    data = yaml.safe_load((out / "data.yaml").read_text())
    assert (data["train"], data["val"]) == ("images", "images")


def _run_tool_lines(capsys, coco_json: Path, tmp_path: Path, out: Path, extra: list) -> list:
    source = ["coco2yolo", str(coco_json), "--images", str(tmp_path / "coco"), "--output"]
    convert_main([*source, str(out), *extra])
    return capsys.readouterr().out.splitlines()


def test_coco_to_yolo_splits_share_one_folder_and_data_yaml(coco_json, tmp_path, capsys) -> None:
    out = tmp_path / "yolo"
    printed = _run_tool_lines(capsys, coco_json, tmp_path, out, ["--split", "train"])
    assert printed[0].startswith("coco2yolo train: 2 images, 3 boxes")
    assert printed[-1] == (
        "data.yaml: train=images/train; no val yet (Ultralytics needs both: convert it with "
        "--split val into the same folder)"
    )
    val = json.loads(coco_json.read_text())
    val["images"], val["annotations"] = val["images"][1:], val["annotations"][2:]
    val_json = tmp_path / "val.json"
    val_json.write_text(json.dumps(val))
    printed = _run_tool_lines(capsys, val_json, tmp_path, out, ["--split", "val"])
    assert printed[-1] == "data.yaml: train=images/train, val=images/val"
    data = yaml.safe_load((out / "data.yaml").read_text())
    assert data == {
        "train": "images/train",
        "val": "images/val",
        "nc": 2,
        "names": ["car", "kite"],
    }
    assert (out / "labels/train/a.txt").is_file() and (out / "images/val/sub/b.png").is_symlink()
    back = yolo_to_coco(out, out / "data.yaml", split="val")  # the Ultralytics layout, read back
    assert [i["file_name"] for i in back["images"]] == ["images/val/sub/b.png"]
    assert np.allclose(back["annotations"][0]["bbox"], [33.3, 0.001, 16.7, 39.999], rtol=1e-6)
    other = json.loads(coco_json.read_text())
    other["categories"][0]["name"] = "bird"
    val_json.write_text(json.dumps(other))
    with pytest.raises(CocoDataError, match=r"data.yaml: field 'names': names \['car', 'kite'\]"):
        coco_to_yolo(val_json, tmp_path / "coco", out, split="test")
    with pytest.raises(CocoDataError, match="--split '../x': expected a folder name"):
        coco_to_yolo(coco_json, tmp_path / "coco", out, split="../x")


# ---- real data (skipped where ../shared/data/real is absent) ------------------------------------

BCCD = REAL / "bccd/BCCD"
TUD = REAL / "mot"


def _bccd_expected(stems: list[str]) -> list[list]:
    """Per image: [name, x, y, w, h] of every valid box, read here without the converter."""
    expected = []
    for stem in stems:
        boxes = []
        for obj in ET.parse(BCCD / "Annotations" / f"{stem}.xml").getroot().iter("object"):
            x0, y0, x1, y1 = (
                float(obj.find(f"bndbox/{k}").text) for k in ("xmin", "ymin", "xmax", "ymax")
            )
            if x1 > x0 and y1 > y0:
                name = obj.find("name").text.strip()
                boxes.append([name, x0 - 1, y0 - 1, x1 - x0 + 1, y1 - y0 + 1])
        expected.append(boxes)
    return expected


@pytest.mark.skipif(not BCCD.is_dir(), reason="real BCCD data not present")
@pytest.mark.parametrize("split", [None, "trainval", "test"])
def test_real_bccd_every_valid_box_arrives(split: str | None, tmp_path: Path) -> None:
    if split is None:
        stems = sorted(p.stem for p in (BCCD / "Annotations").glob("*.xml"))
    else:
        stems = (BCCD / "ImageSets/Main" / f"{split}.txt").read_text().split()
    out = convert("voc", BCCD, tmp_path / "bccd.json", {"split": split})
    dataset = json.loads(out.read_text())
    names = {c["id"]: c["name"] for c in dataset["categories"]}
    assert set(names.values()) == {"RBC", "WBC", "Platelets"}
    assert [i["file_name"] for i in dataset["images"]] == [f"JPEGImages/{s}.jpg" for s in stems]
    found = [[] for _ in stems]
    for ann in dataset["annotations"]:
        found[ann["image_id"] - 1].append([names[ann["category_id"]], *ann["bbox"]])
    expected = _bccd_expected(stems)
    assert found == expected
    total = sum(
        len(list(ET.parse(BCCD / "Annotations" / f"{s}.xml").getroot().iter("object")))
        for s in stems
    )
    degenerate = total - sum(map(len, expected))
    assert dataset["info"].get("dropped", {}) == (
        {"degenerate boxes": degenerate} if degenerate else {}
    )
    if split == "test":
        assert len(CocoIndex(out, BCCD)) == len(stems)  # strict: every record and header valid


@pytest.mark.skipif(not (TUD / "TUD-Campus.mp4").is_file(), reason="real MOT data not present")
def test_real_tud_campus_every_gt_line_arrives(tmp_path: Path) -> None:
    video, gt = TUD / "TUD-Campus.mp4", TUD / "TUD-Campus_gt.txt"
    dataset = mot_to_coco(video, gt=gt, frames=tmp_path / "frames", chunks=2)
    capture = cv2.VideoCapture(str(video))
    frame_count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    capture.release()
    assert len(dataset["images"]) == frame_count == 71
    rows = np.loadtxt(gt, delimiter=",")
    rows = rows[np.lexsort((rows[:, 1], rows[:, 0]))]
    anns = dataset["annotations"]
    assert len(anns) == len(rows)
    assert [a["image_id"] for a in anns] == rows[:, 0].astype(int).tolist()
    assert [a["track_id"] for a in anns] == rows[:, 1].astype(int).tolist()
    assert np.array([a["bbox"] for a in anns]) == pytest.approx(rows[:, 2:6])
    assert not any(a["iscrowd"] for a in anns)
    assert {i["camera_id"] for i in dataset["images"]} == {1, 2}
    back = np.loadtxt(write_mot(dataset["images"], anns, tmp_path / "back.txt"), delimiter=",")
    assert back[:, :6] == pytest.approx(rows[:, :6])


def test_convert_dataset_refuses_unknown_layouts(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown layout 'kitti'"):
        convert_dataset("kitti", tmp_path, tmp_path / "x.json")


def test_coco_to_yolo_clips_boxes_within_the_edge_tolerance(coco_json, tmp_path) -> None:
    dataset = json.loads(coco_json.read_text())
    dataset["annotations"][0]["bbox"] = [60, 2, 4.8, 5]  # 0.8 px past the 64-px edge: allowed
    coco_json.write_text(json.dumps(dataset))
    summary = coco_to_yolo(coco_json, tmp_path / "coco", tmp_path / "y")
    assert summary.marked == {"clipped to the image": 1}
    first = (tmp_path / "y/labels/a.txt").read_text().splitlines()[0].split()
    assert [float(v) for v in first[1:]] == pytest.approx([62 / 64, 4.5 / 48, 4 / 64, 5 / 48])
