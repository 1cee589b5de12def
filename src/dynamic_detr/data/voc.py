"""Pascal VOC xml annotations read as a COCO dataset dict.

    DIR/ImageSets/Main/<split>.txt     one image id per line (the split)
    DIR/Annotations/<id>.xml           <annotation><filename>, <size><width><height>, <object>s with <name>,
                                       <difficult>, <bndbox><xmin><ymin><xmax><ymax>
    DIR/JPEGImages/<filename>          the images

Boxes: VOC coordinates are 1-based pixel indices with both ends inclusive (a box on the image's first pixel
only is xmin = xmax = 1), so in COCO's continuous pixel-edge frame the box is x = xmin - 1, y = ymin - 1,
w = xmax - xmin + 1, h = ymax - ymin + 1 (fractional values, which some tools write, use the same formula).

`difficult` objects become COCO crowd annotations (`iscrowd` = 1): not training targets, and in evaluation an
ignore region (a detection on one is neither a true nor a false positive, a missed one is not a miss), which is
how VOC's own evaluation, torchvision's reference scripts and mmdetection (`ignore_flag`) treat them.

Classes: `DIR/labels.txt` / `classes.txt` (one name per line) or CVAT's `labelmap.txt` when present, in that
order; otherwise the names found in every xml of `Annotations/` (the same list for every split): VOC's 20
classes in their usual order when all names are among them, else the names sorted. Category ids are 1..C.

XML is parsed with the standard library's ElementTree, which is safe for these files: it never resolves
external entities or fetches DTDs (no XXE, no network), and its expat (>= 2.4.1, checked below) refuses the
entity-expansion bombs (billion laughs, quadratic blowup), so no extra dependency (defusedxml) is needed.
"""

from __future__ import annotations

import math
import os
import pyexpat
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from ..errors import DatasetError
from .image_io import ImageReadError, probe_image
from .validate import unsafe_path_reason

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")
CLASS_FILES = ("labels.txt", "classes.txt", "labelmap.txt")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
_COORDS = ("xmin", "ymin", "xmax", "ymax")


def _check_expat() -> None:
    if pyexpat.version_info < (2, 4, 1):  # older expat expands entity bombs
        raise DatasetError(f"this Python's expat {pyexpat.EXPAT_VERSION} is older than 2.4.1 and not safe for "
                           "untrusted XML; use a newer Python build to read Pascal VOC")


def parse_xml(path: Path) -> ET.Element:
    """The root element of an annotation file; `DatasetError` naming the file if it is not well-formed XML."""
    _check_expat()
    try:
        return ET.parse(path).getroot()
    except ET.ParseError as e:
        raise DatasetError(f"{path}: not valid XML ({e})") from None


def class_names(root: Path) -> list[str]:
    """The class list of a VOC dataset (see the module docstring for the order of precedence)."""
    for name in CLASS_FILES:
        f = root / name
        if f.is_file():
            names = []
            for line in read_text(f).splitlines():
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                label = line.split(":")[0].strip() if name == "labelmap.txt" else line
                if label and label != "background" and label not in names:
                    names.append(label)
            if not names:
                raise DatasetError(f"{f}: no class names")
            return names
    found: set[str] = set()
    for xml in sorted((root / "Annotations").glob("*.xml")):
        try:
            tree = parse_xml(xml)
        except DatasetError:
            continue  # reported when its split is read
        found.update(n.strip() for n in (o.findtext("name") for o in tree.iter("object")) if n and n.strip())
    if found <= set(VOC_CLASSES):
        return list(VOC_CLASSES)
    return sorted(found)


def read_text(path: Path) -> str:
    """A class list or split list as text; one that is not UTF-8 is a DatasetError naming it."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not UTF-8 text (byte {e.start:,}); save it as UTF-8") from None


def _size(tree: ET.Element) -> tuple[int, int] | None:
    try:
        w, h = int(float(tree.findtext("size/width") or "")), int(float(tree.findtext("size/height") or ""))
    except (ValueError, OverflowError):  # not a number, NaN, or infinite
        return None
    return (w, h) if w > 0 and h > 0 else None


def vocs_to_coco(years: tuple[Path, ...], common: Path, split: str, v: Any,
                 check_files: bool = True) -> tuple[dict[str, Any], Path]:
    """Split `split` of several VOC year folders (a devkit's VOC2007 + VOC2012) as one COCO dict, `file_name`s
    relative to `common` (their parent: `VOC2007/JPEGImages/000005.jpg`). The years must name the same classes."""
    merged: dict[str, Any] = {"images": [], "annotations": [], "categories": None}
    for year in years:
        data, img_dir = voc_to_coco(year, split, v, check_files, first_image_id=len(merged["images"]) + 1,
                                    first_ann_id=len(merged["annotations"]) + 1)
        if merged["categories"] is None:
            merged["categories"] = data["categories"]
        elif [c["name"] for c in data["categories"]] != [c["name"] for c in merged["categories"]]:
            v.fatal("bad_categories", f"{year}: its classes differ from {years[0]}'s; read the years one by one")
            continue
        prefix = img_dir.relative_to(common).as_posix()
        for image in data["images"]:
            image["file_name"] = f"{prefix}/{image['file_name']}"
        merged["images"] += data["images"]
        merged["annotations"] += data["annotations"]
    return merged, common


def voc_to_coco(root: Path, split: str, v: Any, check_files: bool = True, first_image_id: int = 1,
                first_ann_id: int = 1) -> tuple[dict[str, Any], Path]:
    """The split as a COCO dict (image ids from `first_image_id` in list order, annotation ids from
    `first_ann_id`, `file_name` relative to `JPEGImages/`) and the image folder. `v` is the
    `validate.Validator`: it stops (training) or records (`data check`) what is malformed, with the xml's path
    and the object's number."""
    list_file = root / "ImageSets" / "Main" / f"{split}.txt"
    ann_dir, img_dir = root / "Annotations", root / "JPEGImages"
    names = class_names(root)
    cat_id = {n: k + 1 for k, n in enumerate(names)}
    categories = [{"id": k + 1, "name": n, "supercategory": ""} for k, n in enumerate(names)]
    listing = set(os.listdir(img_dir)) if check_files and img_dir.is_dir() else set()
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    seen: set[str] = set()
    for lineno, line in enumerate(read_text(list_file).splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        stem = fields[0]
        if "/" in stem or "\\" in stem or stem in (".", ".."):  # an id names a file in Annotations/, no other
            v.skip("unsafe_path", f"{list_file}:{lineno}: image id '{stem}' is not a plain file name; image refused")
            continue
        if stem in seen:
            v.fatal("duplicate_id", f"{list_file}:{lineno}: image '{stem}' listed twice")
            continue
        seen.add(stem)
        xml = ann_dir / f"{stem}.xml"
        if not xml.is_file():
            v.skip("missing_file", f"{xml}: annotation file not found (listed in {list_file}:{lineno}); "
                                   "image refused")
            continue
        try:
            tree = parse_xml(xml)
        except DatasetError as e:
            v.fatal("bad_xml", str(e))
            continue
        file_name = _file_name(tree, stem, listing)
        iid = first_image_id + len(images)
        size = _size(tree)
        unsafe = unsafe_path_reason(file_name)
        if unsafe:  # refused before anything is opened (reading it for its size would open /etc/...)
            v.skip("unsafe_path", f"{xml}: <filename> '{file_name}' {unsafe}; image refused")
            continue
        if size is None:
            try:
                probe = probe_image(img_dir / file_name, decode=False)
            except ImageReadError as e:
                v.skip("bad_image", f"{xml}: no usable <size> and the image cannot be read ({e}); image refused")
                continue
            size = probe.width, probe.height
            v.skip("no_size", f"{xml}: no usable <size>; {probe.width}x{probe.height} read from the image file",
                   severity="warning")
        v.where_image[iid] = str(xml)
        images.append({"id": iid, "file_name": file_name, "width": size[0], "height": size[1]})
        for k, obj in enumerate(tree.iter("object"), 1):
            ann = _annotation(obj, xml, k, cat_id, v)
            if ann is None:
                continue
            aid = first_ann_id + len(annotations)
            v.where_ann[aid] = f"{xml} (object {k})"
            annotations.append({"id": aid, "image_id": iid, **ann})
    return {"images": images, "annotations": annotations, "categories": categories}, img_dir


def _file_name(tree: ET.Element, stem: str, listing: set[str]) -> str:
    """`<filename>` when that file is there, else `<stem>.jpg` (or another image suffix that is there)."""
    given = (tree.findtext("filename") or "").strip()
    if given and given in listing:
        return given
    for suffix in IMAGE_SUFFIXES:
        if stem + suffix in listing:
            return stem + suffix
    return given or stem + ".jpg"  # missing: the shared validation reports the file


def _annotation(obj: ET.Element, xml: Path, k: int, cat_id: dict[str, int], v: Any) -> dict[str, Any] | None:
    where = f"{xml}: object {k}"
    name = (obj.findtext("name") or "").strip()
    if not name:
        v.fatal("bad_annotation", f"{where}: no <name>")
        return None
    if name not in cat_id:
        v.fatal("unknown_category", f"{where}: class '{name}' is not in the class list ({', '.join(cat_id)})")
        return None
    box = obj.find("bndbox")
    if box is None:
        v.fatal("bad_annotation", f"{where} ('{name}'): no <bndbox>")
        return None
    try:
        x0, y0, x1, y1 = (float(box.findtext(c) or "") for c in _COORDS)
        if not all(math.isfinite(c) for c in (x0, y0, x1, y1)):
            raise ValueError("not finite")
    except ValueError:
        got = ", ".join(f"{c}={box.findtext(c)!r}" for c in _COORDS)
        v.fatal("bad_annotation", f"{where} ('{name}'): <bndbox> needs numeric xmin, ymin, xmax, ymax ({got})")
        return None
    bbox = [x0 - 1, y0 - 1, x1 - x0 + 1, y1 - y0 + 1]  # 1-based inclusive pixels -> continuous xywh
    difficult = (obj.findtext("difficult") or "0").strip().lower() in ("1", "true")
    return {"category_id": cat_id[name], "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": int(difficult)}
