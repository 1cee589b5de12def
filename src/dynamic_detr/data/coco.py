"""COCO-format detection dataset: `DIR/annotations/instances_<split>.json`, images under `DIR/<split>/`, or any
layout `layout.resolve_split` finds (a COCO file at any path, a Roboflow export, YOLO, Pascal VOC).

Validation (what stops, what is skipped) is `records.load_records`; see docs/data.md for the policy.
Pixels are read lazily in `__getitem__`; a file that fails to decode there (or decodes to an aspect ratio over
`validate.MAX_ASPECT_RATIO`:1) is replaced by the next readable sample, which keeps its own target and lists the
failures in `target["unreadable"]` (counted in `load_failures`, warned once), so that a long run never dies on one
bad file. The evaluation collate drops such a stand-in (served again at its own index) and reports the failed
image instead, so evaluation skips it rather than scoring another image twice.

The records are compact (`records.Records`: numpy arrays, no Python object per image or annotation), so forked
DataLoader workers share them without copy-on-write growth; targets are built per `__getitem__`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors

from ..errors import DatasetError
from .image_io import ImageReadError, read_image
from .layout import SplitSource, resolve_split
from .records import Records, load_records, release_free_memory
from .validate import aspect_problem

log = logging.getLogger(__name__)


class DatasetWarning(UserWarning):
    """Records were skipped or repaired while loading a dataset."""


_SKIP_KINDS = {
    "bad_box": "annotations with a bad box",
    "unknown_image": "annotations of unknown images",
    "unsafe_path": "images whose file_name escapes the image folder",
    "missing_file": "images whose file is missing",
    "extreme_aspect": "images with an extreme aspect ratio",
    "clipped_box": "boxes clipped to their image",
    "unreadable": "images that cannot be opened",
    "no_size": "VOC files without a size (read from the image)",
    "no_labels": "splits without any label file",
}


class CocoDetection(torch.utils.data.Dataset):
    """A COCO detection split with contiguous labels.

    `dataset[i]` is `(image, target)`: image `tv_tensors.Image` uint8 [3, H, W] (upright RGB) before
    `transforms`; target `boxes` `tv_tensors.BoundingBoxes` [N, 4] XYXY absolute pixels (float32),
    `labels` int64 [N] in 0..C-1, `image_id` int (the dataset's id), `orig_size` int64 [2] = (h, w) of the
    decoded file. Crowd annotations (`iscrowd=1`) are not training targets (DETR) but stay in `coco_gt()`.
    A sample served in place of undecodable images keeps its own target plus `unreadable`: [(image id,
    message naming the file)] of the images it stands in for.

    Attributes: `category_ids[label] = dataset category id`, `class_names[label]`, `cat_id_to_label`,
    `image_ids` (in serving order; a list built per call from `records.image_ids`), `records` (the validated,
    compact `Records`), `source` (where the split was found: `layout.SplitSource`).

    `source`: the split's location and format (`layout.split_source(root, split, cfg.data)` applies the config's
    `data.format` and any-path fields); default: detected (`layout.resolve_split`).
    """

    def __init__(self, root: Path | str, split: str, transforms: Callable | None = None, *,
                 source: SplitSource | None = None) -> None:
        self.root = Path(root)
        self.split = split
        self.transforms = transforms
        self.source: SplitSource = source or resolve_split(self.root, split)
        self.records: Records = load_records(self.root, split, strict=True, check_files=True, source=self.source)
        release_free_memory()  # the parsed JSON's heap: not carried into the run and its forked workers
        cats = self.records.categories
        self.category_ids: list[int] = [c["id"] for c in cats]
        self.class_names: list[str] = [c["name"] for c in cats]
        self.cat_id_to_label: dict[int, int] = {cid: i for i, cid in enumerate(self.category_ids)}
        self.load_failures: Counter[str] = Counter()
        self._warned: set[str] = set()
        self._warn_summary()

    @property
    def image_ids(self) -> list[int]:
        return self.records.image_ids.tolist()

    def aspect_groups(self) -> np.ndarray:
        """int8 [N] per index: 1 portrait (height > width in the JSON), 0 landscape or square; for
        `data.sampler.GroupedBatchSampler`."""
        return (self.records.heights > self.records.widths).astype(np.int8)

    # ------------------------------------------------------------------ construction helpers
    def _target_arrays(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """boxes float32 [N, 4] XYXY and labels int64 [N] of image `i`'s non-crowd annotations (built per
        call from the shared arrays, as fresh copies: nothing per image is kept)."""
        r = self.records
        rows = r.ann_slice(i)
        keep = ~r.ann_crowd[rows]
        boxes = torch.from_numpy(r.ann_boxes[rows][keep].astype(np.float32)).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]  # xywh -> xyxy (in float32, as the values were built before)
        labels = torch.from_numpy(r.ann_labels[rows][keep])  # boolean indexing copies
        return boxes, labels

    def _warn_summary(self) -> None:
        issues = self.records.issues
        if not issues:
            return
        counts = Counter(i.kind for i in issues)
        parts = [f"{n} {_SKIP_KINDS.get(kind, kind)}" for kind, n in counts.items()]
        first = next((i for i in issues if i.severity == "error"), issues[0]).message
        paths = ""
        if self.source.layout.startswith("COCO (paths"):
            paths = f" --ann {self.source.ann_file} --images {self.source.image_dir}"
        warnings.warn(
            f"{self.records.ann_file}: skipped or repaired {', '.join(parts)}; first: {first}. "
            f"Run `dynamic-detr data check --data {self.root} --split {self.split}{paths}` for the full list.",
            DatasetWarning, stacklevel=3)

    # ------------------------------------------------------------------ dataset protocol
    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[tv_tensors.Image, dict[str, Any]]:
        n = len(self)
        if not 0 <= index < n:
            if -n <= index < 0:
                index += n
            else:
                raise IndexError(f"index {index} out of range for {n} images")
        failed: list[tuple[int, str]] = []
        for attempt in range(n):
            i = (index + attempt) % n
            try:
                image, target = self._load(i)
            except ImageReadError as e:
                self._note_failure(str(e))
                failed.append((self.records.image_id(i), str(e)))
                continue
            if failed:  # a stand-in with its own target; the eval collate drops it and reports `failed`
                target["unreadable"] = failed
            if self.transforms is not None:
                image, target = self.transforms(image, target)
            return image, target
        raise DatasetError(f"{self.records.image_dir}: none of the {n} images of split '{self.split}' "
                           "could be read")

    def _load(self, i: int) -> tuple[tv_tensors.Image, dict[str, Any]]:
        info = self.records.image(i)
        path = self.records.image_dir / info["file_name"]
        image = read_image(path)
        h, w = image.shape[-2:]
        problem = aspect_problem(w, h)
        if problem:  # the JSON's size passed validation, the file's does not
            raise ImageReadError(f"{path}: {problem} (image {info['id']})")
        boxes, labels = self._target_arrays(i)
        if (w, h) != (info["width"], info["height"]):
            # the JSON disagrees with the (upright) file: keep the file's frame, clamp, drop empty boxes
            self._note_failure(f"{path}: image is {w}x{h} but {self.records.ann_file.name} says "
                               f"{info['width']}x{info['height']} (image {info['id']}); boxes clamped",
                               kind="size_mismatch")
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
            keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            boxes, labels = boxes[keep], labels[keep]
        target = {
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(h, w)),
            "labels": labels,
            "image_id": int(info["id"]),
            "orig_size": torch.tensor([h, w], dtype=torch.int64),
        }
        return image, target

    def _note_failure(self, message: str, kind: str = "unreadable") -> None:
        self.load_failures[kind] += 1
        log.debug("%s", message)
        if kind not in self._warned:
            self._warned.add(kind)
            action = "replaced by another sample" if kind == "unreadable" else "used as is"
            warnings.warn(f"{message}; {action} (further problems are counted in `load_failures`, "
                          "not warned)", DatasetWarning, stacklevel=3)

    # ------------------------------------------------------------------ evaluation
    def coco_gt(self):
        """`pycocotools.coco.COCO` of exactly the images and annotations served (crowd ones included), built
        from the compact records (not by re-reading the file): annotations carry id, image_id, category_id, bbox,
        area, iscrowd, which is all bbox evaluation reads (the same values, so the same AP); no segmentation;
        images carry id, file_name, width, height. Built per call (the dicts live only as long as the COCO)."""
        from pycocotools.coco import COCO

        gt = COCO()
        gt.dataset = self.records.coco_dict()
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            gt.createIndex()
        return gt
