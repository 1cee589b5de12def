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
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .validate import Issue, Validator, validate_annotations, validate_categories, validate_images

if TYPE_CHECKING:
    from .layout import SplitSource

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


# --------------------------------------------------------------------------- the loader
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
    v = Validator(ann_file, strict)
    data, img_dir = source.load(v, check_files=check_files)

    categories = validate_categories(data["categories"], v)
    cat_label = {c["id"]: k for k, c in enumerate(categories)}
    images, refused = validate_images(data["images"], v, img_dir, check_files)
    anns = validate_annotations(data["annotations"], images, refused, cat_label, v)

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


