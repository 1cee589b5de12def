"""YOLO txt labels (Ultralytics layout) read as a COCO dataset dict.

    DIR/data.yaml                  names: [a, b] or {0: a, 1: b}; train: images/train; val: images/val
    DIR/images/<split>/*.jpg       the images (any folder named by the yaml; sub-folders too)
    DIR/labels/<split>/*.txt       one line per object: `class cx cy w h`, normalised to [0, 1]

As Ultralytics: a split value is a folder, a `.txt` list of image paths (relative lines: to the list's folder) or a
list of those, relative to the yaml's `path:` (or to the yaml's folder); an image's label file is its path with
the last `images` folder replaced by `labels` and the suffix by `.txt` (beside the image when the path has no
`images` folder); an image without a label file is a negative (no objects); a line of more than 5 values is a
polygon (`class x1 y1 x2 y2 ...`) and its box is the polygon's extent. Roboflow's `train: ../train/images` is
resolved against the yaml's folder when the literal path does not exist.

Normalised coordinates need each image's size: it is read from the file's header (PIL, no decode, in a thread
pool), in the upright frame (EXIF orientation applied, as Ultralytics does). Class `k` becomes category id
`k + 1` with the yaml's name. What only this format can get wrong (a malformed line, a class outside `names`,
an image that cannot be opened) is reported here with the file and line; boxes then go through the same
validation as any COCO file (`validate.py`), whose messages name the label file and line too.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..errors import DatasetError
from .image_io import ImageReadError, probe_image

YAML_NAMES = ("data.yaml", "dataset.yaml")
IMAGE_SUFFIXES = frozenset({".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp", ".mpo"})
"""Image files of a split folder (Ultralytics' list, less the formats PIL cannot read)."""


@dataclass(frozen=True)
class YoloSpec:
    """A parsed `data.yaml`: class names by index, the folder split paths are relative to, the split entries."""

    yaml_file: Path
    base: Path
    names: dict[int, str]
    splits: dict[str, list[str]]


def find_yaml(root: Path) -> Path | None:
    return next((root / n for n in YAML_NAMES if (root / n).is_file()), None)


def read_spec(yaml_file: Path) -> YoloSpec:
    """Parse and check `data.yaml` (safe loader). `DatasetError` naming the file when it is unusable."""
    try:
        data = yaml.safe_load(yaml_file.read_text(encoding="utf-8"))
    except OSError as e:
        raise DatasetError(f"{yaml_file}: cannot read ({e.strerror or e})") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise DatasetError(f"{yaml_file}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{yaml_file}: expected a mapping with 'names' and split paths")
    names = _names(yaml_file, data.get("names"))
    here = yaml_file.parent
    base = here
    if isinstance(data.get("path"), str) and data["path"]:
        p = Path(data["path"]).expanduser()
        p = p if p.is_absolute() else here / p
        base = p if p.is_dir() else here  # Ultralytics resolves a relative `path` against its own datasets dir
    splits: dict[str, list[str]] = {}
    for key in ("train", "val", "valid", "validation", "test"):
        value = data.get(key)
        if value is None:
            continue
        entries = value if isinstance(value, list) else [value]
        if not all(isinstance(v, str) for v in entries):
            raise DatasetError(f"{yaml_file}: '{key}' must be a path or a list of paths, got {value!r}")
        splits[key] = entries
    return YoloSpec(yaml_file=yaml_file, base=base, names=names, splits=splits)


def _names(yaml_file: Path, raw: Any) -> dict[int, str]:
    if isinstance(raw, list):
        items = list(enumerate(raw))
    elif isinstance(raw, dict):
        items = list(raw.items())
    else:
        raise DatasetError(f"{yaml_file}: 'names' must be a list or a mapping of class index to name, "
                           f"got {type(raw).__name__}")
    names: dict[int, str] = {}
    for k, name in items:
        index = int(k) if isinstance(k, str) and k.isdigit() else k
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise DatasetError(f"{yaml_file}: 'names': class index {k!r} is not a non-negative integer")
        if not isinstance(name, str | int) or isinstance(name, bool) or str(name) == "":
            raise DatasetError(f"{yaml_file}: 'names': class {index} has no usable name ({name!r})")
        names[index] = str(name)
    if not names:
        raise DatasetError(f"{yaml_file}: 'names' is empty")
    return names


def _resolve(spec: YoloSpec, entry: str) -> Path:
    p = Path(entry).expanduser()
    if p.is_absolute():
        return p
    path = spec.base / p
    if not path.exists() and entry.startswith("../"):  # Roboflow writes ../train/images beside its data.yaml
        alt = spec.base / entry.removeprefix("../")
        if alt.exists():
            return alt
    return path


def split_images(spec: YoloSpec, split: str) -> list[Path]:
    """The image paths of a split, in order (sorted within each folder, list order for `.txt` lists)."""
    paths: list[Path] = []
    for entry in spec.splits.get(split, []):
        where = _resolve(spec, entry)
        if where.is_dir():
            found = [Path(d) / f for d, _, files in os.walk(where) for f in files
                     if Path(f).suffix.lower() in IMAGE_SUFFIXES]
            paths.extend(sorted(found))
        elif where.is_file() and where.suffix == ".txt":
            for line in where.read_text(encoding="utf-8", errors="replace").splitlines():
                line = line.strip()
                if line:
                    p = Path(line)
                    paths.append(p if p.is_absolute() else where.parent / p)
        else:
            raise DatasetError(f"{spec.yaml_file}: '{split}: {entry}': {where} is not an image folder or a .txt "
                               "list of images")
    # absolute (not resolved: symlinks kept), so that a list mixing absolute and relative entries has a common
    # folder (os.path.commonpath refuses a mix)
    return [p.absolute() for p in paths]


def label_path(image: Path) -> Path:
    """Ultralytics' rule: the last `images` folder of the path becomes `labels`, the suffix `.txt`."""
    parts = list(image.parts)
    if "images" in parts[:-1]:
        i = len(parts) - 2 - parts[:-1][::-1].index("images")
        parts[i] = "labels"
    return Path(*parts).with_suffix(".txt")


def _common_dir(paths: list[Path]) -> Path:
    return Path(os.path.commonpath([str(p.parent) for p in paths]))


def yolo_to_coco(spec: YoloSpec, split: str, v: Any) -> tuple[dict[str, Any], Path]:
    """The split as a COCO dict: images (ids 1..N, `file_name` relative to the images' common folder, returned
    too), one annotation per label line, categories `k + 1` named `names[k]`. `v` is the `validate.Validator`."""
    paths = split_images(spec, split)
    image_dir = _common_dir(paths) if paths else _resolve(spec, spec.splits[split][0])
    categories = [{"id": k + 1, "name": name, "supercategory": ""} for k, name in sorted(spec.names.items())]
    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        probes = list(pool.map(_probe, paths))
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    labels_found = 0
    for path, probe in zip(paths, probes, strict=True):
        if isinstance(probe, str):
            kind = "missing_file" if "not found" in probe else "unreadable"
            v.skip(kind, f"{probe}; image refused")
            continue
        iid = len(images) + 1
        w, h = probe
        images.append({"id": iid, "file_name": path.relative_to(image_dir).as_posix(), "width": w, "height": h})
        lpath = label_path(path)
        try:
            text = lpath.read_text(encoding="utf-8")
        except FileNotFoundError:
            continue  # no label file: an image without objects, as Ultralytics reads it
        except (OSError, UnicodeDecodeError) as e:
            v.fatal("bad_label", f"{lpath}: cannot read label file ({getattr(e, 'strerror', None) or e})")
            continue
        labels_found += 1
        for lineno, line in enumerate(text.splitlines(), 1):
            parsed = _parse_line(line, lpath, lineno, spec, v)
            if parsed is None:
                continue
            cls, (cx, cy, bw, bh) = parsed
            aid = len(annotations) + 1
            v.where_ann[aid] = f"{lpath}:{lineno}"
            box = [(cx - bw / 2) * w, (cy - bh / 2) * h, bw * w, bh * h]
            annotations.append({"id": aid, "image_id": iid, "category_id": cls + 1, "bbox": box,
                                "area": box[2] * box[3], "iscrowd": 0})
    if images and not labels_found:
        v.skip("no_labels", f"{spec.yaml_file}: none of the {len(images)} images of '{split}' has a label file "
                            f"(looked for e.g. {label_path(paths[0])}); every image is a negative", severity="warning")
    return {"images": images, "annotations": annotations, "categories": categories}, image_dir


def _probe(path: Path) -> tuple[int, int] | str:
    try:
        p = probe_image(path, decode=False)
    except ImageReadError as e:
        return str(e)
    except Exception as e:  # an exotic file must not stop the load: it is refused with a message
        return f"{path}: cannot decode image ({type(e).__name__}: {e})"
    return p.width, p.height


def _parse_line(line: str, lpath: Path, lineno: int, spec: YoloSpec,
                v: Any) -> tuple[int, tuple[float, float, float, float]] | None:
    """(class, normalised cx cy w h) of one label line; None for a blank line or a reported problem."""
    fields = line.split()
    if not fields:
        return None
    where = f"{lpath}:{lineno}"
    if len(fields) != 5 and (len(fields) < 7 or len(fields) % 2 == 0):
        v.fatal("bad_label", f"{where}: expected 'class cx cy w h' (5 values) or a polygon 'class x1 y1 x2 y2 "
                             f"x3 y3 ...', got {len(fields)} values")
        return None
    try:
        cls_value = float(fields[0])
        values = [float(x) for x in fields[1:]]
    except ValueError:
        bad = next(x for x in fields if not _is_float(x))
        v.fatal("bad_label", f"{where}: '{bad}' is not a number")
        return None
    if not cls_value.is_integer() or int(cls_value) not in spec.names:
        known = sorted(spec.names)
        v.fatal("unknown_category", f"{where}: class {fields[0]} is not in 'names' of {spec.yaml_file} "
                                    f"(classes {known[0]}..{known[-1]})")
        return None
    if len(values) == 4:
        return int(cls_value), (values[0], values[1], values[2], values[3])
    xs, ys = values[0::2], values[1::2]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    return int(cls_value), ((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0)


def _is_float(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True
