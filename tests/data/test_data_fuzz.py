"""Fuzzing the dataset loader and `data check` with malformed COCO JSON (hypothesis): wrong types, missing
fields, huge numbers, unicode names, empty lists. Every case must end in a UserError-derived error (a clear
one-line message) or a documented skip/warning, never another exception type or a hang."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from PIL import Image

from dynamic_detr.data.check import check_dataset
from dynamic_detr.data.coco import CocoDetection
from dynamic_detr.errors import UserError

hypothesis = pytest.importorskip("hypothesis")  # the dev extra: without it this module is skipped
st = pytest.importorskip("hypothesis.strategies")
HealthCheck, example, given, settings = (hypothesis.HealthCheck, hypothesis.example, hypothesis.given,
                                        hypothesis.settings)

EXAMPLES = 120  # bounded: each example loads a 2-image dataset twice

BASE = {
    "images": [{"id": 1, "file_name": "a.png", "width": 24, "height": 16},
               {"id": 2, "file_name": "b.png", "width": 24, "height": 16}],
    "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 8], "area": 80, "iscrowd": 0},
                    {"id": 2, "image_id": 2, "category_id": 2, "bbox": [0, 0, 24, 16], "area": 384,
                     "iscrowd": 0}],
    "categories": [{"id": 1, "name": "one"}, {"id": 2, "name": "two"}],
}
FIELDS = {"images": ["id", "file_name", "width", "height"],
          "annotations": ["id", "image_id", "category_id", "bbox", "area", "iscrowd"],
          "categories": ["id", "name", "supercategory"]}

_scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 10**30, 2**63, -(2**63) - 1, 10**400, -(10**400)]),  # 10**400: no float holds it
    st.lists(st.sampled_from([0, 3, 2**63, 10**400, -(10**400)]), min_size=4, max_size=4),  # box-shaped
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),  # any unicode, NUL and surrogates excluded by JSON encoding rules below
    st.sampled_from(["", "../x.png", "/etc/passwd", "a.png\x00b", "ünï/cødé.png", "a.png/", ".", "b.png",
                     "\ud800.png", "a\udfffb.png"]),  # lone surrogates: valid JSON escapes, not encodable text
)
_values = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=5),
                                                          st.dictionaries(st.text(max_size=5), inner, max_size=3)),
                       max_leaves=8)


@st.composite
def _mutated(draw) -> dict:
    data = json.loads(json.dumps(BASE))
    for _ in range(draw(st.integers(1, 4))):
        section = draw(st.sampled_from([*FIELDS, "categories"]))
        kind = draw(st.sampled_from(["field", "field", "field", "delete", "record", "section", "empty"]))
        records = data.get(section)
        if kind == "section":
            data[section] = draw(_values)
        elif kind == "empty":
            data[section] = []
        elif not isinstance(records, list) or not records:
            continue
        else:
            i = draw(st.integers(0, len(records) - 1))
            if kind == "record":
                records[i] = draw(_values)
            elif isinstance(records[i], dict):
                field = draw(st.sampled_from(FIELDS[section]))
                if kind == "delete":
                    records[i].pop(field, None)
                else:
                    records[i][field] = draw(_values)
    return data


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The two images (24x16) the JSON of each example refers to; each test writes its own annotation file.
    Module-scoped: hypothesis refuses function-scoped fixtures (they are not reset between its examples)."""
    root = tmp_path_factory.mktemp("fuzz-coco")
    (root / "train").mkdir()
    (root / "annotations").mkdir()
    for name in ("a.png", "b.png"):
        Image.new("RGB", (24, 16), (120, 80, 40)).save(root / "train" / name)
    return root


def _with(section: str, field: str, value: object) -> dict:
    """BASE with one field of the first record of `section` replaced (the explicit examples below)."""
    data = json.loads(json.dumps(BASE))
    data[section][0][field] = value
    return data


# always run, whatever the search draws: each once broke the loader with a traceback
@example(data=_with("annotations", "bbox", [0, 0, 10**400, 5]), escaped=True)
@example(data=_with("images", "width", 10**400), escaped=True)
@example(data=_with("images", "file_name", "\ud800.png"), escaped=True)
@example(data=_with("categories", "name", "a\udfffb"), escaped=True)
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=_mutated(), escaped=st.booleans())
def test_malformed_coco_json_gives_user_errors_or_skips(root: Path, data: dict, escaped: bool) -> None:
    # NaN / Infinity tokens too: Python's json writes them; escaped: lone surrogates as \udXXX escapes (valid
    # JSON that decodes to str no codec can encode), else as raw bytes (not UTF-8)
    text = json.dumps(data, ensure_ascii=escaped)
    (root / "annotations" / "instances_train.json").write_text(text, encoding="utf-8", errors="surrogatepass")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = CocoDetection(root, "train")
        except UserError as e:
            assert str(e) and "\n" not in str(e).strip(), str(e)
        else:
            for i in range(len(ds)):
                _, target = ds[i]
                boxes = target["boxes"]
                assert boxes.shape[-1] == 4 and bool(boxes.isfinite().all())
                assert bool((target["labels"] >= 0).all())
            ds.coco_gt()
        try:
            report = check_dataset(root, "train", workers=1, progress=False)
        except UserError as e:
            assert str(e) and "\n" not in str(e).strip(), str(e)
        else:
            report.summary()
            assert all(isinstance(m, str) for m in report.errors + report.warnings)


def test_fuzz_base_dataset_is_clean(root: Path) -> None:
    (root / "annotations" / "instances_train.json").write_text(json.dumps(BASE))
    assert len(CocoDetection(root, "train")) == 2
    assert check_dataset(root, "train", workers=1, progress=False).ok
