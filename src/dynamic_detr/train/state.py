"""Run state: the checkpoint a run writes (last.pt / best.pt and their weights) and the resume policy (which
checkpoint, which of the command line's overrides a resumed run may take)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import distributed as dist_utils
from ..checkpoint import check_compatible, check_training_state, load_checkpoint, save_checkpoint, save_weights
from ..config import Config, apply_overrides
from ..errors import CheckpointError, ConfigError

if TYPE_CHECKING:
    from .trainer import Trainer


def find_resume(out: Path, resume: bool | str | Path) -> tuple[Path, dict[str, Any] | None]:
    """The run folder and the checkpoint `resume` names: `out/last.pt` for True, else a checkpoint or a run
    folder (which then becomes the run folder); (out, None) when there is nothing to resume."""
    if resume is False or resume is None:
        return out, None
    path = out if resume is True else Path(resume)
    if path.is_dir():
        out = path if resume is not True else out
        path = path / "last.pt"
    if not path.exists():
        if resume is True and "TORCHELASTIC_RESTART_COUNT" in os.environ:
            # under torchrun, `--resume` means "resume if there is anything to resume": the first launch
            # starts fresh and an elastic restart (--max-restarts) continues from the last checkpoint
            return out, None
        raise CheckpointError(f"{path}: no checkpoint to resume from")
    state = load_checkpoint(path)
    check_training_state(state, path)  # a one-line CheckpointError for a malformed or weights-only file
    return out, state


def load_state(trainer: Trainer, state: dict[str, Any]) -> None:
    """Put a checkpoint's training state into `trainer` (model, optimizer, scaler, EMA, counters, RNG)."""
    optim = trainer.optim
    check_compatible(state["model"], trainer.model)
    trainer.model.load_state_dict(state["model"])
    optim.optimizer.load_state_dict(state["optimizer"])
    if state.get("scaler"):
        optim.scaler.load_state_dict(state["scaler"])
    if optim.ema is not None and state.get("ema") is not None:
        optim.ema.load_state_dict(state["ema"])
    for k in trainer.state:
        if k in state:
            trainer.state[k] = state[k]
    if state.get("world_size", 1) != trainer.dist.world_size or state.get("batch_size") != trainer.cfg.train.batch_size:
        trainer.state["epoch_samples"] = 0  # a different sharding: restart the interrupted epoch
        trainer.state["epoch_stats"] = new_epoch_stats()
    # each rank its own RNG states (torch, CUDA, numpy, python); checkpoints before them: rank 0's torch one
    rng = state.get("rng") or ([{"torch": state["rng_torch"]}] if "rng_torch" in state else None)
    if rng:
        dist_utils.restore_rng(rng, state.get("world_size", 1), trainer.dist)


def state_dict(trainer: Trainer) -> dict[str, Any]:
    """Everything a resume needs, without the RNG states (`save` gathers them from every rank)."""
    optim = trainer.optim
    return {
        "config": trainer.cfg.to_dict(),
        "model": trainer.model.state_dict(),
        "optimizer": optim.optimizer.state_dict(),
        "scaler": optim.scaler.state_dict() if optim.scaler.is_enabled() else None,
        "ema": optim.ema.state_dict() if optim.ema is not None else None,
        **trainer.state,
        "minutes": trainer.minutes,
        "world_size": trainer.dist.world_size,
        "batch_size": trainer.cfg.train.batch_size,
    }


def save(trainer: Trainer, best: bool = False) -> None:
    """last.pt and weights/last.safetensors (EMA weights when EMA is on), and the best.* copies when `best`;
    a collective (every rank's RNG state is gathered), only rank 0 writes."""
    rng = dist_utils.all_gather_objects(dist_utils.rng_state(trainer.device))  # every rank's (a collective)
    if not trainer.dist.is_main:
        return
    state = {**state_dict(trainer), "rng": rng}
    meta = {"config": json.dumps(trainer.cfg.to_dict())}
    weights = trainer.optim.ema.module.state_dict() if trainer.optim.ema is not None else trainer.model.state_dict()
    (trainer.out / "weights").mkdir(exist_ok=True)
    if best:  # before last.pt: a kill in between leaves last.pt one epoch back, whose end the resume re-does
        save_checkpoint(trainer.out / "best.pt", state)
        save_weights(trainer.out / "weights" / "best.safetensors", weights, meta)
    save_checkpoint(trainer.out / "last.pt", state)
    save_weights(trainer.out / "weights" / "last.safetensors", weights, meta)


RESUME_OVERRIDABLE = ("train.epochs", "train.eval_every", "train.checkpoint_every", "train.max_nonfinite_steps",
                      "train.patience", "train.min_delta", "data.num_workers")
"""Config keys that a resumed run takes from the command line: the budget and when to stop early, how often to
evaluate and checkpoint, the non-finite patience, the loader's workers. Any other change (model, data geometry,
optimisation, batch size, seed) would make a different run from the checkpointed one."""


def resume_config(saved: Config, overrides: Sequence[str]) -> tuple[Config, list[str]]:
    """The checkpointed config of a resumed run with the command line's `key=value` overrides applied, and the
    overrides that changed it. Ones that repeat the run's values are ignored (the first command again, plus
    `--resume`); changing a key outside `RESUME_OVERRIDABLE` is a one-line ConfigError naming the keys."""
    if not overrides:
        return saved, []
    new = apply_overrides(saved, list(overrides))
    before, after = saved.to_dict(), new.to_dict()
    changed: dict[str, str] = {}  # key -> its override
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if _lookup(before, key) != _lookup(after, key):
            changed[key] = item.strip()
    refused = [k for k in changed if k not in RESUME_OVERRIDABLE]
    if refused:
        raise ConfigError(f"--resume cannot change {', '.join(refused)} (a resumed run keeps its config except "
                          f"{', '.join(RESUME_OVERRIDABLE)}); start a new run with another --out for that")
    return new, list(changed.values())


def _lookup(data: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        data = data[part]
    return data


def new_epoch_stats() -> dict[str, Any]:
    """The running loss sums of an epoch (checkpointed, so that a resumed epoch reports all of its steps)."""
    return {"sums": {}, "count": 0, "skipped": 0, "seconds": 0.0}
