"""The validation rules of a detection dataset: what makes an image, an annotation or a category unusable, and
the issues recorded for them (the policy table is in docs/data.md). `records.load_records` runs them."""

from __future__ import annotations

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
MAX_IMAGE_SIDE = 2**20
"""Largest width or height a record may give (1,048,576 px; Pillow refuses far fewer pixels by default): a bigger
one, up to integers no float holds (10**400), is a broken record, refused before any arithmetic on it."""


@dataclass(frozen=True)
class Issue:
    """One problem found while validating. `severity` is what `data check` reports ("error" | "warning");
    `kind` groups issues for the dataset's summary warning."""

    severity: str
    kind: str
    message: str


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


def _finite(v: float) -> bool:
    """math.isfinite for a JSON number; an integer too large for a float (10**400) is not finite either."""
    try:
        return math.isfinite(v)
    except OverflowError:
        return False


def box_problem(bbox: Any) -> str | None:
    """Why a COCO `bbox` [x, y, w, h] is unusable regardless of its image, or None."""
    if not isinstance(bbox, list | tuple) or len(bbox) != 4:
        return "box must be a list [x, y, width, height]"
    if not all(_is_number(v) for v in bbox):
        return "box has non-numeric values"
    if not all(_finite(v) for v in bbox):
        return "box has NaN, infinite or out-of-range values"
    if bbox[2] <= 0:
        return "box has non-positive width"
    if bbox[3] <= 0:
        return "box has non-positive height"
    return None


def _short(v: Any) -> str:
    """repr(v), cut to 40 characters (a 400-digit number in a message helps nobody)."""
    text = repr(v)
    return text if len(text) <= 40 else f"{text[:37]}..."


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


class Validator:
    """Collects the issues of one split; converters report through it too (`fatal` / `skip`, per-record
    locations for messages)."""

    def __init__(self, ann_file: Path, strict: bool) -> None:
        self.ann_file = ann_file
        self.strict = strict
        self.issues: list[Issue] = []
        self.where_image: dict[int, str] = {}
        """Where an image id's record came from when it is not the annotation file (a VOC xml): for messages."""
        self.where_ann: dict[int, str] = {}
        """The same for annotation ids (a YOLO label file and line, a VOC xml and object)."""

    def image_at(self, iid: Any) -> str:
        return self.where_image.get(iid, str(self.ann_file)) if _is_int(iid) else str(self.ann_file)

    def ann_at(self, aid: Any) -> str:
        return self.where_ann.get(aid, str(self.ann_file)) if _is_int(aid) else str(self.ann_file)

    def fatal(self, kind: str, message: str) -> None:
        """A structural problem: stop when strict, else record as an error and let the caller repair."""
        if self.strict:
            raise DatasetError(message)
        self.issues.append(Issue("error", kind, message))

    def skip(self, kind: str, message: str, severity: str = "error") -> None:
        self.issues.append(Issue(severity, kind, message))


def validate_categories(raw: list[Any], v: Validator) -> list[dict[str, Any]]:
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


def validate_images(raw: list[Any], v: Validator, img_dir: Path,
                     check_files: bool) -> tuple[dict[int, dict], set[int]]:
    """Usable images by id, and the ids of images refused with an issue of their own."""
    where = v.ann_file
    images: dict[int, dict[str, Any]] = {}
    refused: set[int] = set()
    for k, img in enumerate(raw):
        if not isinstance(img, dict) or not _is_int(img.get("id")):
            v.fatal("bad_image", f"{v.ann_file}: images[{k}]: missing or non-integer 'id'")
            continue
        iid = img["id"]
        where = v.image_at(iid)
        if iid in images:
            v.fatal("duplicate_id", f"{where}: image {iid}: duplicate image id")
            continue
        name = img.get("file_name")
        if not isinstance(name, str):
            v.fatal("bad_image", f"{where}: image {iid}: missing or non-string 'file_name'")
            refused.add(iid)
            continue
        w, h = img.get("width"), img.get("height")
        if not (_is_int(w) and _is_int(h) and 0 < w <= MAX_IMAGE_SIDE and 0 < h <= MAX_IMAGE_SIDE):
            v.fatal("bad_image", f"{where}: image {iid}: 'width' and 'height' must be integers from 1 to "
                                 f"{MAX_IMAGE_SIDE}, got {_short(w)} x {_short(h)}")
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
        images[iid] = img

    if check_files and images:
        if not img_dir.is_dir():
            raise DatasetError(f"{img_dir}: image folder not found (expected the images of "
                               f"{v.ann_file.name} there)")
        listing = set(os.listdir(img_dir))

        def exists(name: str) -> bool:  # one listing for flat names, a stat for nested ones
            return name in listing if "/" not in name and "\\" not in name else (img_dir / name).is_file()

        missing = [iid for iid, img in images.items() if not exists(img["file_name"])]
        if missing and len(missing) == len(images):
            first = images[missing[0]]["file_name"]
            raise DatasetError(f"{img_dir}: none of the {len(images)} images of {v.ann_file.name} is there "
                               f"(e.g. '{first}')")
        for iid in missing:
            path = img_dir / images[iid]["file_name"]
            v.skip("missing_file", f"{path}: image file not found (image {iid})")
            del images[iid]
            refused.add(iid)
    return images, refused


@dataclass
class AnnColumns:
    """The kept annotations, column-wise, in file order; `owner` is the position of the image in `images`."""

    owner: list[int] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    boxes: list[float] = field(default_factory=list)
    """Flat: 4 per annotation."""
    areas: list[float] = field(default_factory=list)
    crowd: list[bool] = field(default_factory=list)


def validate_annotations(raw: list[Any], images: dict[int, dict], refused: set[int], cat_label: dict[int, int],
                          v: Validator) -> AnnColumns:
    seen: set[int] = set()
    position = {iid: k for k, iid in enumerate(images)}
    out = AnnColumns()
    unknown_cats: Counter[int] = Counter()
    for k, a in enumerate(raw):
        if not isinstance(a, dict) or not _is_int(a.get("id")):
            v.fatal("bad_annotation", f"{v.ann_file}: annotations[{k}]: missing or non-integer 'id'")
            continue
        aid = a["id"]
        where = v.ann_at(aid)
        if aid in seen:
            v.fatal("duplicate_id", f"{where}: annotation {aid}: duplicate annotation id")
            continue
        seen.add(aid)
        iid, cid = a.get("image_id"), a.get("category_id")
        if not _is_int(iid) or not _is_int(cid):
            v.fatal("bad_annotation", f"{where}: annotation {aid}: 'image_id' and 'category_id' must be "
                                      f"integers, got {iid!r} / {cid!r}")
            continue
        if cid not in cat_label:
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
        problem = box_problem(a.get("bbox"))
        if problem:
            v.skip("bad_box", f"{where}: annotation {aid} (image {iid}): {problem}; dropped")
            continue
        box, overshoot = clip_box(list(a["bbox"]), img["width"], img["height"])
        if box is None:
            v.skip("bad_box", f"{where}: annotation {aid} (image {iid}): box {_fmt(a['bbox'])} lies outside the "
                              f"{img['width']}x{img['height']} image; dropped")
            continue
        if overshoot > CLIP_TOLERANCE:
            v.skip("clipped_box", f"{where}: annotation {aid} (image {iid}): box {_fmt(a['bbox'])} extends "
                                  f"{overshoot:.1f} px outside the {img['width']}x{img['height']} image; clipped",
                   severity="warning")
        area = a.get("area")
        if not (_is_number(area) and _finite(area) and area > 0):
            area = box[2] * box[3]
        out.owner.append(position[iid])
        out.ids.append(aid)
        out.labels.append(cat_label[cid])
        out.boxes.extend(box)
        out.areas.append(float(area))
        out.crowd.append(bool(a.get("iscrowd")))
    return out


def _fmt(bbox: list[float]) -> str:
    return "[" + ", ".join(f"{x:g}" for x in bbox) + "]"
