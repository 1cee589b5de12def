"""Untrusted files through the user-facing entry points: a pickle with a code payload is refused without
running it (CLI eval / predict, load_model, from_pretrained); a checkpoint of another config is a clear error."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from builders import SHAPES, shapes_dataset, tiny_config
from dynamic_detr import checkpoint as ckpt
from dynamic_detr.api import from_pretrained
from dynamic_detr.cli.main import main
from dynamic_detr.errors import CheckpointError
from dynamic_detr.model import DynamicDETR
from dynamic_detr.model.loading import load_model


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _tiny_cfg(stages: int = 2):
    return tiny_config({"model.decoder.num_stages": stages}, classes=SHAPES)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("untrusted")
    data = shapes_dataset(root / "data", {"val": 2})
    marker = root / "PWNED"
    evil = root / "evil.pt"
    # a well-formed checkpoint in every other respect, with the payload in the config
    torch.save({"format": ckpt.FORMAT, "version": 1, "model": {}, "config": {"x": _Payload(marker)}}, evil)
    plain = root / "plain_pickle.pt"  # an old-style full pickle of the payload itself
    torch.save(_Payload(marker), plain)
    cfg_a, cfg_b = _tiny_cfg(2), _tiny_cfg(3)
    other = root / "other_config.pt"  # weights of a 2-stage decoder under a config saying 3 stages
    ckpt.save_checkpoint(other, {"config": cfg_b.to_dict(), "model": DynamicDETR(cfg_a.model).state_dict()})
    return {"data": data, "marker": marker, "evil": evil, "plain": plain, "other": other}


def _assert_one_line_error(capsys, name: str, words: str) -> None:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and name in err and words in err and "\n" not in err, err


@pytest.mark.parametrize("which", ["evil", "plain"])
def test_payload_refused_by_cli_and_api_and_not_executed(files, tmp_path, capsys, which):
    path, marker = files[which], files["marker"]
    assert main(["eval", "--checkpoint", str(path), "--data", str(files["data"]), "--split", "val",
                 "--workers", "0"]) == 2
    _assert_one_line_error(capsys, path.name, "refused")
    image = next((files["data"] / "val").iterdir())
    assert main(["predict", "--checkpoint", str(path), "--out", str(tmp_path / "p"), str(image)]) == 2
    _assert_one_line_error(capsys, path.name, "refused")
    with pytest.raises(CheckpointError, match=r"refused.*nothing was executed"):
        load_model(path)
    with pytest.raises(CheckpointError, match="refused"):
        from_pretrained(path)
    assert not marker.exists(), "the payload ran"


def test_checkpoint_of_another_config_is_a_clear_error(files, tmp_path, capsys):
    path = files["other"]
    with pytest.raises(CheckpointError, match="different config") as info:
        load_model(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)
    image = next((files["data"] / "val").iterdir())
    assert main(["predict", "--checkpoint", str(path), "--out", str(tmp_path / "p"), str(image)]) == 2
    _assert_one_line_error(capsys, path.name, "different config")
