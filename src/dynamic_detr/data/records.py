"""Parse and validate a COCO annotation file: the one place that decides what is usable.

`load_records` is shared by the training dataset (`CocoDetection`) and the linter (`check_dataset`):

* structural problems (file missing / not JSON / missing keys, malformed or duplicate ids, an annotation
  naming an unknown category, no usable image) raise `DatasetError` when `strict`, and are recorded as
  errors (and repaired as well as possible, e.g. keep the first of two duplicate ids) otherwise;
* per-record problems (bad box, annotation of an unknown image, a `file_name` escaping the image folder,
  a missing image file, an image over `MAX_ASPECT_RATIO`:1) drop that record and are recorded as `Issue`s;
  a box partly outside its image is clipped. The dataset turns the issues into one summary warning, `data
  check` prints them all.

The policy table lives in docs/data.md.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import DatasetError

CLIP_TOLERANCE = 1.0
"""Boxes leaving their image by at most this many pixels are clipped silently (COCO has many such
boxes from float rounding); beyond it the clip is reported."""

MAX_ASPECT_RATIO = 100
"""Images whose long side is more than this many times their short side are bad input (refused by the dataset,
skipped by `predict`): resized to the model's input size (long side capped) their short side is a few pixels at
most; a 1 x 1000 strip at `cpu_small`'s 288 px cap would get 0.29 px (floored to 0 and crashed before the
resize was clamped to >= 1 px). 100:1 still admits panoramas and long thin scans."""


@dataclass(frozen=True)
class Issue:
    """One problem found while validating. `severity` is what `data check` reports ("error" | "warning");
    `kind` groups issues for the dataset's summary warning."""

    severity: str
    kind: str
    message: str


@dataclass
class Records:
    """Validated content of `root/annotations/instances_<split>.json`.

    `images` keep their file order; every image's `file_name` is safe and (if files were checked) exists.
    `annotations[image_id]` holds that image's validated annotations (boxes clipped, `area` filled in).
    `categories` are sorted by id: the contiguous label of a category is its position there.
    """

    ann_file: Path
    image_dir: Path
    images: list[dict[str, Any]]
    annotations: dict[int, list[dict[str, Any]]]
    categories: list[dict[str, Any]]
    info: dict[str, Any] = field(default_factory=dict)
    licenses: list[Any] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)
    num_raw_images: int = 0
    num_raw_annotations: int = 0

    def image_path(self, image: dict[str, Any]) -> Path:
        return self.image_dir / image["file_name"]

    def coco_dict(self) -> dict[str, Any]:
        """A pycocotools-ready dataset dict of exactly these images and annotations."""
        anns = [a for img in self.images for a in self.annotations[img["id"]]]
        return {"info": self.info, "licenses": self.licenses, "images": self.images,
                "annotations": anns, "categories": self.categories}

    def count(self, kind: str) -> int:
        return sum(1 for i in self.issues if i.kind == kind)


def annotation_path(root: Path, split: str) -> Path:
    return Path(root) / "annotations" / f"instances_{split}.json"


def image_dir(root: Path, split: str) -> Path:
    return Path(root) / split


def read_json(path: Path) -> dict[str, Any]:
    """The annotation file as a dict with list-valued `images`, `annotations`, `categories`."""
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise DatasetError(f"{path}: annotation file not found") from None
    except IsADirectoryError:
        raise DatasetError(f"{path}: is a directory, expected a COCO annotation JSON file") from None
    except OSError as e:
        raise DatasetError(f"{path}: cannot read annotation file ({e.strerror or e})") from None
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not valid JSON (not UTF-8 text)") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a JSON object with images/annotations/categories, "
                           f"got a {type(data).__name__}")
    missing = [k for k in ("images", "annotations", "categories") if k not in data]
    if missing:
        raise DatasetError(f"{path}: missing required key{'s' if len(missing) > 1 else ''} "
                           f"{', '.join(repr(k) for k in missing)} (a COCO file has images, annotations, "
                           "categories)")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data[key], list):
            raise DatasetError(f"{path}: '{key}' must be a list, got {type(data[key]).__name__}")
    return data


# --------------------------------------------------------------------------- small validators
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


_DRIVE = re.compile(r"^[A-Za-z]:")


def unsafe_path_reason(file_name: str) -> str | None:
    """Why `file_name` may not be joined to the image folder (absolute, `..`, drive letter), or None."""
    name = file_name.replace("\\", "/")
    if name.startswith("/") or _DRIVE.match(name):
        return "is an absolute path"
    if ".." in PurePosixPath(name).parts:
        return "escapes the image folder ('..')"
    if name.strip("/.") == "":
        return "is empty"
    return None


def box_problem(bbox: Any) -> str | None:
    """Why a COCO `bbox` [x, y, w, h] is unusable regardless of its image, or None."""
    if not isinstance(bbox, list | tuple) or len(bbox) != 4:
        return "box must be a list [x, y, width, height]"
    if not all(_is_number(v) for v in bbox):
        return "box has non-numeric values"
    if not all(math.isfinite(v) for v in bbox):
        return "box has NaN or infinite values"
    if bbox[2] <= 0:
        return "box has non-positive width"
    if bbox[3] <= 0:
        return "box has non-positive height"
    return None


def aspect_problem(width: int, height: int) -> str | None:
    """Why an image of this size is unusable (long side over `MAX_ASPECT_RATIO` x the short one), or None."""
    short, long = min(width, height), max(width, height)
    if long > MAX_ASPECT_RATIO * short:
        ratio = f"{long / short:g}" if short > 0 else "infinite"
        return f"a {width}x{height} image: aspect ratio {ratio}:1 exceeds the {MAX_ASPECT_RATIO}:1 limit"
    return None


def clip_box(bbox: list[float], width: int, height: int) -> tuple[list[float] | None, float]:
    """Clip [x, y, w, h] to the image. Returns (clipped box or None if nothing is left, overshoot in px)."""
    x0, y0, x1, y1 = bbox[0], bbox[1], bbox[0] + bbox[2], bbox[1] + bbox[3]
    overshoot = max(0.0, -x0, -y0, x1 - width, y1 - height)
    cx0, cy0 = min(max(x0, 0.0), width), min(max(y0, 0.0), height)
    cx1, cy1 = min(max(x1, 0.0), width), min(max(y1, 0.0), height)
    if cx1 - cx0 <= 0 or cy1 - cy0 <= 0:
        return None, overshoot
    return [float(cx0), float(cy0), float(cx1 - cx0), float(cy1 - cy0)], overshoot


# --------------------------------------------------------------------------- the loader
class _Validator:
    def __init__(self, ann_file: Path, strict: bool) -> None:
        self.ann_file = ann_file
        self.strict = strict
        self.issues: list[Issue] = []

    def fatal(self, kind: str, message: str) -> None:
        """A structural problem: stop when strict, else record as an error and let the caller repair."""
        if self.strict:
            raise DatasetError(message)
        self.issues.append(Issue("error", kind, message))

    def skip(self, kind: str, message: str, severity: str = "error") -> None:
        self.issues.append(Issue(severity, kind, message))


def load_records(root: Path, split: str, *, strict: bool = True, check_files: bool = True) -> Records:
    """Read and validate `root/annotations/instances_<split>.json` (images in `root/<split>/`).

    strict: raise `DatasetError` on the first structural problem (training); else record it (`data check`).
    check_files: drop images whose file does not exist (one directory listing, plus a stat per nested name).
    """
    ann_file = annotation_path(root, split)
    img_dir = image_dir(root, split)
    data = read_json(ann_file)
    v = _Validator(ann_file, strict)

    categories = _validate_categories(data["categories"], v)
    cat_ids = {c["id"] for c in categories}
    images, refused = _validate_images(data["images"], v, img_dir, check_files)
    annotations, num_raw = _validate_annotations(data["annotations"], images, refused, cat_ids, v)

    info = data.get("info") if isinstance(data.get("info"), dict) else {}
    licenses = data.get("licenses") if isinstance(data.get("licenses"), list) else []
    kept = list(images.values())
    return Records(ann_file=ann_file, image_dir=img_dir, images=kept,
                   annotations={img["id"]: annotations.get(img["id"], []) for img in kept},
                   categories=categories, info=info, licenses=licenses, issues=v.issues,
                   num_raw_images=len(data["images"]), num_raw_annotations=num_raw)


def _validate_categories(raw: list[Any], v: _Validator) -> list[dict[str, Any]]:
    where = v.ann_file
    cats: dict[int, dict[str, Any]] = {}
    for k, c in enumerate(raw):
        if not isinstance(c, dict) or not _is_int(c.get("id")):
            v.fatal("bad_category", f"{where}: categories[{k}]: missing or non-integer 'id'")
            continue
        if not isinstance(c.get("name"), str) or not c["name"]:
            v.fatal("bad_category", f"{where}: category {c['id']}: missing or empty 'name'")
            continue
        if c["id"] in cats:
            v.fatal("duplicate_id", f"{where}: category {c['id']}: duplicate category id")
            continue
        cats[c["id"]] = {"id": c["id"], "name": c["name"], "supercategory": c.get("supercategory", "")}
    if not cats:
        # nothing to learn and nothing to lint against: stop even when not strict
        raise DatasetError(f"{where}: no usable categories (the 'categories' list is empty or malformed)")
    return [cats[i] for i in sorted(cats)]


def _validate_images(raw: list[Any], v: _Validator, img_dir: Path,
                     check_files: bool) -> tuple[dict[int, dict], set[int]]:
    """Usable images by id, and the ids of images refused with an issue of their own."""
    where = v.ann_file
    images: dict[int, dict[str, Any]] = {}
    refused: set[int] = set()
    for k, img in enumerate(raw):
        if not isinstance(img, dict) or not _is_int(img.get("id")):
            v.fatal("bad_image", f"{where}: images[{k}]: missing or non-integer 'id'")
            continue
        iid = img["id"]
        if iid in images:
            v.fatal("duplicate_id", f"{where}: image {iid}: duplicate image id")
            continue
        name = img.get("file_name")
        if not isinstance(name, str):
            v.fatal("bad_image", f"{where}: image {iid}: missing or non-string 'file_name'")
            refused.add(iid)
            continue
        w, h = img.get("width"), img.get("height")
        if not (_is_int(w) and _is_int(h) and w > 0 and h > 0):
            v.fatal("bad_image", f"{where}: image {iid}: 'width' and 'height' must be positive integers, "
                                 f"got {w!r} x {h!r}")
            refused.add(iid)
            continue
        reason = unsafe_path_reason(name)
        if reason:
            v.skip("unsafe_path", f"{where}: image {iid}: file_name '{name}' {reason}; image refused")
            refused.add(iid)
            continue
        problem = aspect_problem(w, h)
        if problem:
            v.skip("extreme_aspect", f"{img_dir / name}: {problem} (image {iid}); image refused")
            refused.add(iid)
            continue
        images[iid] = dict(img)

    if check_files and images:
        if not img_dir.is_dir():
            raise DatasetError(f"{img_dir}: image folder not found (expected the images of "
                               f"{where.name} there)")
        listing = set(os.listdir(img_dir))

        def exists(name: str) -> bool:  # one listing for flat names, a stat for nested ones
            return name in listing if "/" not in name and "\\" not in name else (img_dir / name).is_file()

        missing = [iid for iid, img in images.items() if not exists(img["file_name"])]
        if missing and len(missing) == len(images):
            first = images[missing[0]]["file_name"]
            raise DatasetError(f"{img_dir}: none of the {len(images)} images of {where.name} is there "
                               f"(e.g. '{first}')")
        for iid in missing:
            path = img_dir / images[iid]["file_name"]
            v.skip("missing_file", f"{path}: image file not found (image {iid})")
            del images[iid]
            refused.add(iid)
    return images, refused


def _validate_annotations(raw: list[Any], images: dict[int, dict], refused: set[int], cat_ids: set[int],
                          v: _Validator) -> tuple[dict[int, list[dict]], int]:
    where = v.ann_file
    seen: set[int] = set()
    out: dict[int, list[dict[str, Any]]] = {}
    unknown_cats: Counter[int] = Counter()
    for k, a in enumerate(raw):
        if not isinstance(a, dict) or not _is_int(a.get("id")):
            v.fatal("bad_annotation", f"{where}: annotations[{k}]: missing or non-integer 'id'")
            continue
        aid = a["id"]
        if aid in seen:
            v.fatal("duplicate_id", f"{where}: annotation {aid}: duplicate annotation id")
            continue
        seen.add(aid)
        iid, cid = a.get("image_id"), a.get("category_id")
        if not _is_int(iid) or not _is_int(cid):
            v.fatal("bad_annotation", f"{where}: annotation {aid}: 'image_id' and 'category_id' must be "
                                      f"integers, got {iid!r} / {cid!r}")
            continue
        if cid not in cat_ids:
            unknown_cats[cid] += 1
            if unknown_cats[cid] == 1:
                v.fatal("unknown_category", f"{where}: annotation {aid} (image {iid}): unknown category "
                                            f"{cid}")
            continue
        img = images.get(iid)
        if img is None:
            if iid not in refused:  # a refused image's own issue already names it
                v.skip("unknown_image", f"{where}: annotation {aid}: refers to unknown image {iid}; dropped")
            continue
        prefix = f"{where}: annotation {aid} (image {iid})"
        problem = box_problem(a.get("bbox"))
        if problem:
            v.skip("bad_box", f"{prefix}: {problem}; dropped")
            continue
        box, overshoot = clip_box(list(a["bbox"]), img["width"], img["height"])
        if box is None:
            v.skip("bad_box", f"{prefix}: box {_fmt(a['bbox'])} lies outside the "
                              f"{img['width']}x{img['height']} image; dropped")
            continue
        if overshoot > CLIP_TOLERANCE:
            v.skip("clipped_box", f"{prefix}: box {_fmt(a['bbox'])} extends {overshoot:.1f} px outside the "
                                  f"{img['width']}x{img['height']} image; clipped", severity="warning")
        ann = dict(a)
        ann["bbox"] = box
        area = a.get("area")
        if not (_is_number(area) and math.isfinite(area) and area > 0):
            ann["area"] = box[2] * box[3]
        ann["iscrowd"] = 1 if a.get("iscrowd") else 0
        out.setdefault(iid, []).append(ann)
    return out, len(raw)


def _fmt(bbox: list[float]) -> str:
    return "[" + ", ".join(f"{x:g}" for x in bbox) + "]"
