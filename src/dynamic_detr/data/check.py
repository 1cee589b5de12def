"""`dynamic-detr data check`: lint a COCO split and summarise it.

Everything `CocoDetection` would skip or repair is reported (errors for records it drops, warnings for
records it repairs), every image is opened (header, then the whole stream is decoded: JPEGs at 1/8 scale,
which still reads every byte) and its upright size compared with the JSON. Files are read by a thread pool
(PIL releases the GIL while decoding), with a tqdm bar on a TTY.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .image_io import ImageProbe, ImageReadError, probe_image
from .layout import SplitSource
from .records import load_records
from .validate import aspect_problem

SMALL, MEDIUM = 32**2, 96**2
"""COCO area thresholds: small < 32^2 <= medium < 96^2 <= large."""


@dataclass
class CheckReport:
    """Findings and summary statistics of one split. `ok` is False when there is any error."""

    ann_file: Path
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    num_images: int = 0
    """Images the dataset would serve (refused / missing ones excluded)."""
    num_listed_images: int = 0
    """Images listed in the JSON."""
    num_objects: int = 0
    """Usable annotations, crowd ones included."""
    num_crowd: int = 0
    num_empty_images: int = 0
    """Images without any (usable) annotation: kept, they are valid negatives."""
    per_class: dict[str, int] = field(default_factory=dict)
    """Usable annotations per category name, in category-id order."""
    size_share: dict[str, float] = field(default_factory=dict)
    """Fraction of usable annotations that are small / medium / large by COCO `area`."""
    image_modes: dict[str, int] = field(default_factory=dict)
    """PIL modes of the decoded files (e.g. RGB, L, RGBA, I;16), all converted to RGB when loading."""
    exif_rotated: int = 0
    """Images with an EXIF orientation other than 1 (loaded upright)."""

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        """A few human-readable lines (no findings; print `errors` / `warnings` separately)."""
        listed = f" (of {self.num_listed_images} listed)" if self.num_listed_images != self.num_images else ""
        crowd = f" ({self.num_crowd} crowd)" if self.num_crowd else ""
        lines = [f"{self.ann_file}: {self.num_images} images{listed}, {self.num_objects} objects{crowd}, "
                 f"{len(self.per_class)} classes, {self.num_empty_images} images without objects"]
        if self.per_class:
            lines.append("  per class: " + ", ".join(f"{k} {v}" for k, v in self.per_class.items()))
        if self.size_share:
            shares = ", ".join(f"{k} {100 * v:.1f}%" for k, v in self.size_share.items())
            lines.append(f"  sizes (COCO area): {shares}")
        if self.image_modes:
            modes = ", ".join(f"{k} {v}" for k, v in sorted(self.image_modes.items()))
            extra = f"; {self.exif_rotated} EXIF-rotated" if self.exif_rotated else ""
            lines.append(f"  image modes: {modes}{extra}")
        lines.append(f"  {len(self.errors)} errors, {len(self.warnings)} warnings")
        return "\n".join(lines)


def _probe(path: Path, decode: bool) -> ImageProbe | str:
    try:
        return probe_image(path, decode=decode)
    except ImageReadError as e:
        return str(e)
    except Exception as e:  # a checker must not die on an exotic file: report it
        return f"{path}: cannot decode image ({type(e).__name__}: {e})"


def check_dataset(root: Path | str, split: str, *, decode: bool = True, workers: int | None = None,
                  progress: bool | None = None, source: SplitSource | None = None) -> CheckReport:
    """Lint `root/annotations/instances_<split>.json` and the images of `root/<split>/` (or the split as `source`
    or `layout.resolve_split` finds it: any COCO path, Roboflow, YOLO, VOC; the same checks for every format).

    Raises `DatasetError` only when there is nothing to lint (annotation file missing or not COCO JSON,
    no usable category, image folder missing or empty of listed images); everything else is in the report.
    decode: also decode every image (default); False reads headers only.
    progress: tqdm bar (default: when stderr is a TTY).
    """
    from tqdm import tqdm

    records = load_records(Path(root), split, strict=False, check_files=True, source=source)
    report = CheckReport(ann_file=records.ann_file)
    for issue in records.issues:
        (report.errors if issue.severity == "error" else report.warnings).append(issue.message)

    # ---- images: decode, modes, sizes
    images = [records.image(i) for i in range(len(records))]
    paths = [records.image_dir / img["file_name"] for img in images]
    if progress is None:
        progress = sys.stderr.isatty()
    workers = workers or min(8, os.cpu_count() or 1)
    modes: Counter[str] = Counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = tqdm(pool.map(lambda p: _probe(p, decode), paths), total=len(paths), desc="checking images",
                       unit="img", disable=not progress)
        for img, path, res in zip(images, paths, results, strict=True):
            if isinstance(res, str):
                report.errors.append(f"{res} (image {img['id']})")
                continue
            modes[res.mode] += 1
            report.exif_rotated += res.orientation != 1
            if (res.width, res.height) != (img["width"], img["height"]):
                rotated = " after EXIF rotation" if res.orientation != 1 else ""
                report.warnings.append(
                    f"{path}: image is {res.width}x{res.height}{rotated} but {records.ann_file.name} says "
                    f"{img['width']}x{img['height']} (image {img['id']}); boxes are clamped to the file")
            problem = aspect_problem(res.width, res.height)
            if problem:  # the JSON's size passed validation, the file's does not: the dataset skips it
                report.errors.append(f"{path}: {problem} (image {img['id']}); not usable")

    # ---- statistics over what the dataset serves
    names = {c["id"]: c["name"] for c in records.categories}
    label_counts = np.bincount(records.ann_labels, minlength=len(records.categories)).tolist()
    per_class: Counter[int] = Counter({c["id"]: n for c, n in zip(records.categories, label_counts, strict=True)})
    areas = records.ann_areas
    sizes = {"small": int((areas < SMALL).sum()), "medium": int(((areas >= SMALL) & (areas < MEDIUM)).sum()),
             "large": int((areas >= MEDIUM).sum())}
    report.num_empty_images = int((np.diff(records.ann_offsets) == 0).sum())
    report.num_crowd = int(records.ann_crowd.sum())
    report.num_images = len(images)
    report.num_listed_images = records.num_raw_images
    report.num_objects = sum(per_class.values())
    report.per_class = {names[cid]: per_class[cid] for cid in names}
    if report.num_objects:
        report.size_share = {k: sizes[k] / report.num_objects for k in ("small", "medium", "large")}
    report.image_modes = dict(modes)
    for cid, name in names.items():
        if not per_class[cid]:
            report.warnings.append(f"{records.ann_file}: category {cid} '{name}' has no annotations")
    if not images:
        report.warnings.append(f"{records.ann_file}: the split has no usable images")
    return report
