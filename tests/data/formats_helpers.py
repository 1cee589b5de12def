"""Write a COCO dataset (the synthetic one) in the other layouts the package reads: YOLO, Pascal VOC, a Roboflow
COCO export. Written from the COCO JSON by hand, independently of the readers, so reading them back tests the
readers against the COCO set."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml


def _coco(root: Path, split: str) -> dict[str, Any]:
    return json.loads((root / "annotations" / f"instances_{split}.json").read_text())


def write_yolo(coco_root: Path, out: Path, splits: dict[str, str] | None = None) -> Path:
    """`out/data.yaml` + `out/images/<split>/` + `out/labels/<split>/*.txt` (normalised cx cy w h, 8 decimals).
    `splits`: COCO split -> YOLO split name. Class k = the k-th category by id."""
    splits = splits or {"train": "train", "val": "val"}
    cats = sorted(_coco(coco_root, next(iter(splits)))["categories"], key=lambda c: c["id"])
    index = {c["id"]: k for k, c in enumerate(cats)}
    for src, dst in splits.items():
        coco = _coco(coco_root, src)
        (out / "images" / dst).mkdir(parents=True, exist_ok=True)
        (out / "labels" / dst).mkdir(parents=True, exist_ok=True)
        by_image: dict[int, list[str]] = {im["id"]: [] for im in coco["images"]}
        sizes = {im["id"]: (im["width"], im["height"]) for im in coco["images"]}
        for a in coco["annotations"]:
            w, h = sizes[a["image_id"]]
            x, y, bw, bh = a["bbox"]
            by_image[a["image_id"]].append(f"{index[a['category_id']]} {(x + bw / 2) / w:.8f} {(y + bh / 2) / h:.8f} "
                                           f"{bw / w:.8f} {bh / h:.8f}")
        for im in coco["images"]:
            shutil.copy(coco_root / src / im["file_name"], out / "images" / dst / im["file_name"])
            stem = Path(im["file_name"]).stem
            (out / "labels" / dst / f"{stem}.txt").write_text("".join(line + "\n" for line in by_image[im["id"]]))
    spec = {"path": ".", **{dst: f"images/{dst}" for dst in splits.values()},
            "names": {k: c["name"] for k, c in enumerate(cats)}}
    (out / "data.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return out


def write_voc(coco_root: Path, out: Path, splits: dict[str, str] | None = None, difficult: set[int] = frozenset(),
              labels_file: bool = False) -> Path:
    """`out/Annotations/<stem>.xml`, `out/JPEGImages/<split>_<file_name>`, `out/ImageSets/Main/<split>.txt`; boxes
    1-based inclusive
(x -> xmin = x + 1, xmax = x + w: exact for the synthetic set's integer boxes). Annotation ids in `difficult`
    get <difficult>1</difficult>; `labels_file`: also write `labels.txt` in category-id order."""
    splits = splits or {"train": "train", "val": "val"}
    for d in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (out / d).mkdir(parents=True, exist_ok=True)
    cats = {}
    for src, dst in splits.items():
        coco = _coco(coco_root, src)
        cats = {c["id"]: c["name"] for c in coco["categories"]}
        stems = []
        for im in coco["images"]:
            name = f"{src}_{im['file_name']}"  # one image folder for every split: the split in the name
            stem = Path(name).stem
            stems.append(stem)
            shutil.copy(coco_root / src / im["file_name"], out / "JPEGImages" / name)
            objects = ""
            for a in (a for a in coco["annotations"] if a["image_id"] == im["id"]):
                x, y, w, h = a["bbox"]
                objects += (f"<object><name>{cats[a['category_id']]}</name><pose>Unspecified</pose>"
                            f"<truncated>0</truncated><difficult>{int(a['id'] in difficult)}</difficult>"
                            f"<bndbox><xmin>{x + 1:g}</xmin><ymin>{y + 1:g}</ymin><xmax>{x + w:g}</xmax>"
                            f"<ymax>{y + h:g}</ymax></bndbox></object>")
            (out / "Annotations" / f"{stem}.xml").write_text(
                f"<annotation><folder>VOC</folder><filename>{name}</filename><size><width>{im['width']}"
                f"</width><height>{im['height']}</height><depth>3</depth></size>{objects}</annotation>")
        (out / "ImageSets" / "Main" / f"{dst}.txt").write_text("".join(s + "\n" for s in stems))
    if labels_file:
        (out / "labels.txt").write_text("".join(cats[k] + "\n" for k in sorted(cats)))
    return out


def write_roboflow(coco_root: Path, out: Path, splits: dict[str, str] | None = None) -> Path:
    """`out/<split>/_annotations.coco.json` with the images beside it, Roboflow's split names (`valid`) and its
    placeholder category 0 (the project, the supercategory of every class, never annotated)."""
    splits = splits or {"train": "train", "val": "valid"}
    for src, dst in splits.items():
        coco = _coco(coco_root, src)
        (out / dst).mkdir(parents=True, exist_ok=True)
        for im in coco["images"]:
            shutil.copy(coco_root / src / im["file_name"], out / dst / im["file_name"])
        coco["categories"] = [{"id": 0, "name": "shapes", "supercategory": "none"},
                              *({**c, "supercategory": "shapes"} for c in coco["categories"])]
        (out / dst / "_annotations.coco.json").write_text(json.dumps(coco))
    return out
