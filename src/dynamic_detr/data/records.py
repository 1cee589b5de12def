"""Parse and validate a COCO annotation file: the one place that decides what is usable.

`load_records` is shared by the training dataset (`CocoDetection`) and the linter (`check_dataset`):

* structural problems (file missing / not JSON / missing keys, malformed or duplicate ids, an annotation
  naming an unknown category, no usable image) raise `DatasetError` when `strict`, and are recorded as
  errors (and repaired as well as possible, e.g. keep the first of two duplicate ids) otherwise;
* per-record problems (bad box, annotation of an unknown image, a `file_name` escaping the image folder,
  a missing image file, an image over `MAX_ASPECT_RATIO`:1) drop that record and are recorded as `Issue`s;
  a box partly outside its image is clipped. The dataset turns the issues into one summary warning, `data
  check` prints them all.

What survives validation is held compactly (`Records`): numpy arrays and one UTF-8 buffer of file names, no
Python object per image or annotation, so DataLoader workers (forked) share them without copy-on-write growth
(reading a Python object writes its reference count, which copies its memory page into the worker:
pytorch/pytorch#13246). Only what training and bbox evaluation read is kept (segmentation polygons are not).

The policy table lives in docs/data.md.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import os
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import DatasetError

if TYPE_CHECKING:
    from .layout import SplitSource

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


@dataclass(eq=False)  # arrays: no field-wise ==
class Records:
    """Validated content of `root/annotations/instances_<split>.json`, held compactly.

    Images (index `i`, file order) are rows of `image_ids`, `widths`, `heights`; file names are UTF-8 in
    `name_bytes`, name `i` at `name_offsets[i]:name_offsets[i + 1]`. Image `i`'s validated annotations (file
    order, boxes clipped, `area` filled in) are rows `ann_offsets[i]:ann_offsets[i + 1]` of the `ann_*`
    arrays. Every `file_name` is safe and (if files were checked) exists. `categories` are sorted by id: the
    contiguous label of a category is its position there (`ann_labels`). Id arrays are int64 (object dtype
    only for ids beyond int64, which JSON allows). Use the accessors (`image(i)`, `annotations(i)`, ...)
    for dicts; they are built per call.
    """

    ann_file: Path
    image_dir: Path
    image_ids: np.ndarray
    """int64 [N]."""
    widths: np.ndarray
    """int64 [N], as in the JSON."""
    heights: np.ndarray
    name_bytes: np.ndarray
    """uint8: the file names, UTF-8 (surrogatepass), back to back."""
    name_offsets: np.ndarray
    """int64 [N + 1]."""
    ann_offsets: np.ndarray
    """int64 [N + 1]."""
    ann_ids: np.ndarray
    """int64 [M]."""
    ann_labels: np.ndarray
    """int64 [M]: position of the annotation's category in `categories`."""
    ann_boxes: np.ndarray
    """float64 [M, 4]: x, y, w, h, clipped to the image (float64: the JSON's values exactly, so AP is exact)."""
    ann_areas: np.ndarray
    """float64 [M]."""
    ann_crowd: np.ndarray
    """bool [M]."""
    categories: list[dict[str, Any]]
    info: dict[str, Any] = field(default_factory=dict)
    licenses: list[Any] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)
    num_raw_images: int = 0
    num_raw_annotations: int = 0

    def __len__(self) -> int:
        return len(self.image_ids)

    @property
    def num_annotations(self) -> int:
        return len(self.ann_ids)

    @property
    def nbytes(self) -> int:
        """Bytes held by the arrays (categories, info, licenses and issues aside: small)."""
        return sum(getattr(self, f).nbytes for f in _ARRAYS)

    def image_id(self, i: int) -> int:
        return int(self.image_ids[i])

    def file_name(self, i: int) -> str:
        lo, hi = self.name_offsets[i], self.name_offsets[i + 1]
        return self.name_bytes[lo:hi].tobytes().decode("utf-8", "surrogatepass")

    def image_path(self, i: int) -> Path:
        return self.image_dir / self.file_name(i)

    def image(self, i: int) -> dict[str, Any]:
        """{"id", "file_name", "width", "height"} of image `i` (other fields of the JSON are not kept)."""
        return {"id": self.image_id(i), "file_name": self.file_name(i), "width": int(self.widths[i]),
                "height": int(self.heights[i])}

    def ann_slice(self, i: int) -> slice:
        return slice(int(self.ann_offsets[i]), int(self.ann_offsets[i + 1]))

    def annotations(self, i: int) -> list[dict[str, Any]]:
        """Image `i`'s annotations as COCO dicts: id, image_id, category_id, bbox, area, iscrowd."""
        rows = self.ann_slice(i)
        return self._ann_dicts(rows, [self.image_id(i)] * (rows.stop - rows.start))

    def coco_dict(self) -> dict[str, Any]:
        """A pycocotools-ready dataset dict of exactly these images and annotations (what bbox evaluation reads:
        no segmentation)."""
        images = [{"id": iid, "file_name": self.file_name(i), "width": w, "height": h} for i, (iid, w, h)
                  in enumerate(zip(self.image_ids.tolist(), self.widths.tolist(), self.heights.tolist(),
                                   strict=True))]
        return {"info": self.info, "licenses": self.licenses, "images": images,
                "annotations": self._ann_dicts(slice(0, self.num_annotations),
                                               np.repeat(self.image_ids, np.diff(self.ann_offsets)).tolist()),
                "categories": self.categories}

    def _ann_dicts(self, rows: slice, owners: list[int]) -> list[dict[str, Any]]:
        cat_ids = [c["id"] for c in self.categories]
        return [{"id": aid, "image_id": iid, "category_id": cat_ids[label], "bbox": box, "area": area,
                 "iscrowd": int(crowd)}
                for aid, iid, label, box, area, crowd in zip(
                    self.ann_ids[rows].tolist(), owners, self.ann_labels[rows].tolist(),
                    self.ann_boxes[rows].tolist(), self.ann_areas[rows].tolist(), self.ann_crowd[rows].tolist(),
                    strict=True)]

    def count(self, kind: str) -> int:
        return sum(1 for i in self.issues if i.kind == kind)


_ARRAYS = ("image_ids", "widths", "heights", "name_bytes", "name_offsets", "ann_offsets", "ann_ids", "ann_labels",
           "ann_boxes", "ann_areas", "ann_crowd")


def _int_array(values: list[int]) -> np.ndarray:
    try:
        return np.array(values, dtype=np.int64)
    except OverflowError:  # an id beyond int64 (valid JSON, never seen in practice): kept exact as Python ints
        return np.array(values, dtype=object)


def _offsets(counts: Any) -> np.ndarray:
    out = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(np.asarray(counts, dtype=np.int64), out=out[1:])
    return out


def release_free_memory() -> None:
    """Give the freed heap back to the OS (glibc `malloc_trim`; a no-op elsewhere): parsing a COCO-size JSON
    peaks at several GB of Python objects, which the allocator would otherwise keep in the main process and
    in every forked worker. Call once the parsed JSON is gone (it holds no cycles: freed without a gc pass)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # not glibc (musl): nothing to do
            ctypes.CDLL("libc.so.6").malloc_trim(0)


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
    except RecursionError:
        raise DatasetError(f"{path}: not a COCO annotation file (JSON nested too deeply to read)") from None
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


def load_records(root: Path, split: str, *, strict: bool = True, check_files: bool = True,
                 source: SplitSource | None = None) -> Records:
    """Read and validate split `split` of the dataset at `root`: `root/annotations/instances_<split>.json` (images
    in `root/<split>/`) or any other layout `layout.resolve_split` finds; `source` gives it explicitly (the
    config's format and any-path fields: `layout.split_source`). YOLO and VOC splits are converted to a COCO
    dict first; every format then goes through this same validation.

    strict: raise `DatasetError` on the first structural problem (training); else record it (`data check`).
    check_files: drop images whose file does not exist (one directory listing, plus a stat per nested name).
    The parsed JSON is dropped on return; call `release_free_memory()` afterwards to return its heap.
    """
    from .layout import resolve_split

    source = source or resolve_split(root, split)
    ann_file = source.ann_file
    v = _Validator(ann_file, strict)
    data, img_dir = source.load(v, check_files=check_files)

    categories = _validate_categories(data["categories"], v)
    cat_label = {c["id"]: k for k, c in enumerate(categories)}
    images, refused = _validate_images(data["images"], v, img_dir, check_files)
    anns = _validate_annotations(data["annotations"], images, refused, cat_label, v)

    info = data.get("info") if isinstance(data.get("info"), dict) else {}
    licenses = data.get("licenses") if isinstance(data.get("licenses"), list) else []
    kept = list(images.values())
    names = [img["file_name"].encode("utf-8", "surrogatepass") for img in kept]
    # annotations grouped by image (serving order), file order kept within an image (as pycocotools' index)
    owner = np.fromiter(anns.owner, dtype=np.int64, count=len(anns.owner))
    order = np.argsort(owner, kind="stable")
    return Records(
        ann_file=ann_file, image_dir=img_dir,
        image_ids=_int_array([img["id"] for img in kept]),
        widths=_int_array([img["width"] for img in kept]), heights=_int_array([img["height"] for img in kept]),
        name_bytes=np.frombuffer(b"".join(names), dtype=np.uint8).copy(),
        name_offsets=_offsets([len(n) for n in names]),
        ann_offsets=_offsets(np.bincount(owner, minlength=len(kept))),
        ann_ids=_int_array(anns.ids)[order],
        ann_labels=np.array(anns.labels, dtype=np.int64)[order],
        ann_boxes=np.array(anns.boxes, dtype=np.float64).reshape(-1, 4)[order],
        ann_areas=np.array(anns.areas, dtype=np.float64)[order],
        ann_crowd=np.array(anns.crowd, dtype=bool)[order],
        categories=categories, info=info, licenses=licenses, issues=v.issues,
        num_raw_images=len(data["images"]), num_raw_annotations=len(data["annotations"]))


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
class _AnnColumns:
    """The kept annotations, column-wise, in file order; `owner` is the position of the image in `images`."""

    owner: list[int] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    boxes: list[float] = field(default_factory=list)
    """Flat: 4 per annotation."""
    areas: list[float] = field(default_factory=list)
    crowd: list[bool] = field(default_factory=list)


def _validate_annotations(raw: list[Any], images: dict[int, dict], refused: set[int], cat_label: dict[int, int],
                          v: _Validator) -> _AnnColumns:
    seen: set[int] = set()
    position = {iid: k for k, iid in enumerate(images)}
    out = _AnnColumns()
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
