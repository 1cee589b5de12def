"""Where a split's annotations and images are: COCO at the standard path or any path, a Roboflow-style COCO
export, a YOLO (Ultralytics) folder, a Pascal VOC folder.

`resolve_split(root, split, fmt, ann, images)` returns a `SplitSource`; its `load(reporter)` gives the split as
a COCO dataset dict (read from the JSON, or converted in memory by `yolo.py` / `voc.py`), which
`records.load_records` then validates exactly as a COCO file. Detection order (`fmt="auto"`), for the split name
and then its aliases (`val` -> `valid`, `validation`; `valid` -> `val`):

1. `DIR/annotations/instances_<split>.json`, images in `DIR/<split>/` (the standard layout: wins when present);
2. `DIR/<split>/_annotations.coco.json`, images beside it (Roboflow; also Label Studio / CVAT exports moved so);
3. `DIR/data.yaml` or `DIR/dataset.yaml` with a `<split>` key (YOLO);
4. `DIR/Annotations/` and `DIR/ImageSets/Main/<split>.txt` (Pascal VOC), or a devkit as downloaded:
   `DIR/VOCdevkit/VOC<year>/` (or `DIR` itself holding `VOC<year>/` folders), every year that has the split read
   as one (VOC2007 + VOC2012 `trainval`: the usual 07+12 training set; `test`: VOC2007's alone).

`data.<role>_ann` / `data.<role>_images` (any-path COCO) bypass the detection. docs/data.md has the details.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, DatasetError

if TYPE_CHECKING:
    from ..config import DataConfig

FORMATS = ("auto", "coco", "yolo", "voc")
"""Values of `data.format`."""

ROBOFLOW_ANN = "_annotations.coco.json"
"""The annotation file of a Roboflow COCO export, one per split folder, images beside it."""

SPLIT_ALIASES = {"val": ("valid", "validation"), "valid": ("val",), "validation": ("val", "valid")}
"""Other names a split goes by (Roboflow writes `train`, `valid`, `test`)."""


@dataclass(frozen=True)
class SplitSource:
    """One split of a dataset, found on disk.

    `ann_file`: the COCO JSON, the YOLO yaml or the VOC `ImageSets/Main/<split>.txt` (messages about the split as
    a whole name it); `image_dir`: the folder `file_name`s are relative to; `name`: the split name as found on disk
    (`valid` for a requested `val`); `layout`: a few words for the one-line report.
    """

    format: str
    root: Path
    split: str
    name: str
    ann_file: Path
    image_dir: Path
    layout: str
    images_from: str = ""
    """Where the images come from when it is not `image_dir` alone (a YOLO split's yaml entries)."""
    parts: tuple[Path, ...] = ()
    """A VOC devkit's year folders read as this one split (their common folder is `image_dir`)."""

    def describe(self) -> str:
        """One line: which layout was found for the split and where."""
        alias = f" (split '{self.split}' read as '{self.name}')" if self.name != self.split else ""
        images = self.images_from or f"images in {self.image_dir}"
        return f"{self.split}: {self.layout}: {self.ann_file}, {images}{alias}"

    def load(self, reporter: Any, check_files: bool = True) -> tuple[dict[str, Any], Path]:
        """The split as a COCO dataset dict (images, annotations, categories), for `records.load_records`, and the
        folder its `file_name`s are relative to (a YOLO split's is the common folder of its images).
        `reporter` is the validator (`fatal` / `skip`, per-record locations): converters report what only they
        can see (a label line, an xml element), the shared validation does the rest."""
        if self.format == "yolo":
            from .yolo import read_spec, yolo_to_coco

            return yolo_to_coco(read_spec(self.ann_file), self.name, reporter)
        if self.format == "voc":
            from .voc import voc_to_coco, vocs_to_coco

            if self.parts:
                return vocs_to_coco(self.parts, self.image_dir, self.name, reporter, check_files=check_files)
            return voc_to_coco(self.root, self.name, reporter, check_files=check_files)
        data = read_json(self.ann_file)
        if self.layout.startswith("Roboflow"):
            drop_roboflow_placeholder(data)
        return data, self.image_dir


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


def drop_roboflow_placeholder(data: dict[str, Any]) -> None:
    """Roboflow's COCO export lists the project itself as category 0 (the `supercategory` of every real class) and
    never annotates it: drop it, so that the model gets no class that can never be learned."""
    cats = data.get("categories")
    if not isinstance(cats, list) or len(cats) < 2 or not all(isinstance(c, dict) for c in cats):
        return
    first = next((c for c in cats if c.get("id") == 0), None)
    others = [c for c in cats if c is not first]
    if first is None or not all(c.get("supercategory") == first.get("name") for c in others):
        return
    anns = data.get("annotations")
    if isinstance(anns, list) and any(isinstance(a, dict) and a.get("category_id") == 0 for a in anns):
        return
    data["categories"] = others


def _names(split: str) -> list[str]:
    return [split, *SPLIT_ALIASES.get(split, ())]


def _under(root: Path, path: str) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else root / p


def resolve_split(root: Path | str, split: str, *, fmt: str = "auto", ann: str = "", images: str = "") -> SplitSource:
    """Find split `split` of the dataset at `root` (see the module docstring). `ann` / `images`: a COCO
    annotation file / image folder at any path (relative ones are relative to `root`); empty: detected.
    Raises `DatasetError` when no layout holds the split (the message lists what was looked for)."""
    root = Path(root)
    if fmt not in FORMATS:
        raise ConfigError(f"data.format must be one of {', '.join(FORMATS)}, got '{fmt}'")
    if ann or images:
        if fmt not in ("auto", "coco"):
            raise ConfigError(f"data.*_ann / data.*_images name a COCO file and folder; data.format is '{fmt}'")
        ann_file = _under(root, ann) if ann else root / "annotations" / f"instances_{split}.json"
        img_dir = _under(root, images) if images else ann_file.parent  # empty: beside the annotation file
        return SplitSource("coco", root, split, split, ann_file, img_dir, "COCO (paths from the config)")
    if fmt in ("auto", "coco"):
        for name in _names(split):
            ann_file = root / "annotations" / f"instances_{name}.json"
            if ann_file.is_file():
                return SplitSource("coco", root, split, name, ann_file, root / name, "COCO")
        for name in _names(split):
            ann_file = root / name / ROBOFLOW_ANN
            if ann_file.is_file():
                return SplitSource("coco", root, split, name, ann_file, root / name,
                                   "Roboflow COCO export (images beside the JSON)")
    if fmt in ("auto", "yolo"):
        from .yolo import find_yaml, read_spec

        yaml_file = find_yaml(root)
        if yaml_file is not None:
            spec = read_spec(yaml_file)
            for name in _names(split):
                if spec.splits.get(name):
                    return SplitSource("yolo", root, split, name, yaml_file, spec.base, "YOLO",
                                       f"images from '{name}: {', '.join(spec.splits[name])}' (under {spec.base})")
            if fmt == "yolo":
                raise DatasetError(f"{yaml_file}: no '{split}' key (has: {', '.join(spec.splits) or 'none'})")
        elif fmt == "yolo":
            raise DatasetError(f"{root}: no data.yaml or dataset.yaml (a YOLO dataset needs one with 'names' and "
                               "the split image folders)")
    if fmt in ("auto", "voc"):
        main = root / "ImageSets" / "Main"
        for name in _names(split):
            if (main / f"{name}.txt").is_file() and (root / "Annotations").is_dir():
                return SplitSource("voc", root, split, name, main / f"{name}.txt", root / "JPEGImages",
                                   "Pascal VOC")
        for name in _names(split):
            years = [y for y in voc_years(root) if (y / "ImageSets" / "Main" / f"{name}.txt").is_file()]
            if years:
                return SplitSource("voc", root, split, name, years[0] / "ImageSets" / "Main" / f"{name}.txt",
                                   years[0].parent, f"Pascal VOC devkit ({' + '.join(y.name for y in years)})",
                                   f"images in {', '.join(str(y / 'JPEGImages') for y in years)}",
                                   parts=tuple(years))
        if fmt == "voc":
            raise DatasetError(f"{main / (split + '.txt')}: not found (a Pascal VOC dataset has Annotations/, "
                               "JPEGImages/ and ImageSets/Main/<split>.txt)")
    ann_file = root / "annotations" / f"instances_{split}.json"
    others = "" if fmt == "coco" else (f", nor a YOLO data.yaml with a '{split}' key or a Pascal VOC "
                                       f"ImageSets/Main/{split}.txt")
    raise DatasetError(f"{ann_file}: annotation file not found (nor {root / split / ROBOFLOW_ANN}{others}; "
                       "docs/data.md lists the layouts)")


def split_source(root: Path | str, split: str, data: DataConfig | None = None) -> SplitSource:
    """`resolve_split` with the config's `data.format` and, for the train / val split, its any-path fields."""
    if data is None:
        return resolve_split(root, split)
    ann = images = ""
    if split == data.train_split:
        ann, images = data.train_ann, data.train_images
    elif split == data.val_split:
        ann, images = data.val_ann, data.val_images
    return resolve_split(root, split, fmt=data.format, ann=ann, images=images)


def find_splits(root: Path | str, fmt: str = "auto") -> list[str]:
    """The split names present at `root` in the detected layout (for `data check` / `data convert` without
    `--split`); empty when there is none."""
    root = Path(root)
    if fmt in ("auto", "coco"):
        found = sorted(p.name[len("instances_"):-len(".json")] for p in (root / "annotations").glob("instances_*.json"))
        if found:
            return found
        found = sorted(p.parent.name for p in root.glob(f"*/{ROBOFLOW_ANN}"))
        if found:
            return found
    if fmt in ("auto", "yolo"):
        from .yolo import find_yaml, read_spec

        yaml_file = find_yaml(root)
        if yaml_file is not None:
            return [k for k, v in read_spec(yaml_file).splits.items() if v]
    if fmt in ("auto", "voc"):
        # class-specific lists (`cat_train.txt`) are not splits
        folders = [root] if (root / "Annotations").is_dir() else voc_years(root)
        return sorted({p.stem for f in folders for p in (f / "ImageSets" / "Main").glob("*.txt") if "_" not in p.stem})
    return []


def voc_years(root: Path) -> list[Path]:
    """The year folders of a Pascal VOC devkit at `root` (`root/VOCdevkit/VOC2007`, ..., or `root/VOC2007`, ...),
    each with its own `Annotations/`; sorted by name."""
    for devkit in (root / "VOCdevkit", root):
        years = sorted(p for p in devkit.glob("VOC*") if (p / "Annotations").is_dir())
        if years:
            return years
    return []
