"""`dynamic-detr data convert`: write any readable split (YOLO, Pascal VOC, a COCO file at any path, a Roboflow
export) as the standard COCO layout, `OUT/annotations/instances_<split>.json` with the images in `OUT/<split>/`.

The split is read exactly as training reads it (`records.load_records`, strict: a malformed record stops the
conversion with the file and line), so the JSON written holds what the dataset would serve: validated boxes
(clipped where training clips them), records that training would skip left out and listed. Boxes, areas and
crowd flags only (bbox detection; no segmentation). Images are copied (or linked) under their `file_name`.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..fileio import atomic_write_text
from .layout import SplitSource
from .records import load_records, release_free_memory
from .validate import Issue

IMAGE_MODES = ("copy", "symlink", "hardlink")


@dataclass
class ConvertResult:
    ann_file: Path
    images: int
    annotations: int
    classes: int
    issues: list[Issue]


def convert_split(source: SplitSource, out: Path, images: str = "copy") -> ConvertResult:
    """Write `source` as `out/annotations/instances_<source.name>.json` + `out/<source.name>/`. Refuses to
    overwrite an existing annotation file or to write into the source's own image folder."""
    if images not in IMAGE_MODES:
        raise UserError(f"images must be one of {', '.join(IMAGE_MODES)}, got '{images}'")
    records = load_records(source.root, source.split, strict=True, check_files=True, source=source)
    coco = records.coco_dict()
    del coco["info"], coco["licenses"]
    coco = {"info": {"description": f"converted from {source.layout}: {source.ann_file}"}, "licenses": [], **coco}
    release_free_memory()
    ann_file = out / "annotations" / f"instances_{source.name}.json"
    img_out = out / source.name
    if ann_file.exists():
        raise UserError(f"{ann_file}: already exists; choose another --out or remove it")
    if img_out.resolve() == records.image_dir.resolve():
        raise UserError(f"{img_out}: is the source's image folder; choose another --out")
    _refuse_links_out(records.image_dir, [records.file_name(i) for i in range(len(records))])
    try:
        for i in range(len(records)):
            name = records.file_name(i)
            src, dst = records.image_dir / name, img_out / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            if dst.exists() or dst.is_symlink():
                dst.unlink()
            if images == "symlink":
                dst.symlink_to(src.resolve())
            elif images == "hardlink":
                os.link(src, dst)
            else:
                shutil.copy2(src, dst)
        ann_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(ann_file, json.dumps(coco))
    except OSError as e:
        raise UserError(f"{e.filename or out}: cannot write ({e.strerror or e})") from None
    return ConvertResult(ann_file=ann_file, images=len(records), annotations=records.num_annotations,
                         classes=len(records.categories), issues=records.issues)


def _refuse_links_out(image_dir: Path, names: list[str]) -> None:
    """A UserError when an image of the split is a symlink leading out of its image folder (the folder itself may
    be a link, e.g. onto another disk): its target, any file on the machine, would be copied into the new
    dataset."""
    folder = os.path.realpath(image_dir)
    targets = ((n, os.path.realpath(image_dir / n)) for n in names)
    out = [(n, target) for n, target in targets if not Path(target).is_relative_to(folder)]
    if out:
        name, target = out[0]
        raise UserError(f"{image_dir}: {len(out)} image(s) are links leading out of the image folder (e.g. {name} "
                        f"-> {target}); refused: copy those files into the dataset first")

