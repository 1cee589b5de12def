"""What the benchmark scripts share: the setup (data, config, device), the machine record, and timing."""

from __future__ import annotations

import datetime
import platform
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dynamic_detr.config import Config, apply_overrides, get_preset
from dynamic_detr.data.coco import CocoDetection
from dynamic_detr.data.collate import build_loader
from dynamic_detr.data.loaders import eval_loader, load_split
from dynamic_detr.data.policy import AugmentPolicy, TrainSamples
from dynamic_detr.data.sampler import ResumableSampler, SeededDataset
from dynamic_detr.data.synthetic import generate
from dynamic_detr.data.transforms import build_transforms
from dynamic_detr.fileio import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def sized_data_overrides(short_side: int) -> list[str]:
    """cpu_small's augmentation recipe scaled to images whose long side is `short_side`: multi-scale short
    sides (0.83-1x), DETR's random crop, eval at `short_side`; max side 1.25x."""
    s = short_side
    sides = sorted({_r8(s * f) for f in (0.83, 0.92, 1.0)})
    return [f"data.train_short_sides={sides}", f"data.train_max_size={_r8(s * 1.25)}",
            f"data.crop_resize_sides={sides}", f"data.crop_size=[{_r8(s * 0.6)},{_r8(s * 0.8)}]",
            f"data.eval_short_side={s}", f"data.eval_max_size={_r8(s * 1.25)}"]


def _r8(x: float) -> int:
    return max(32, round(x / 8) * 8)


def make_config(preset: str, overrides: list[str]) -> Config:
    return apply_overrides(get_preset(preset), overrides)


def synthetic_data(root: Path, train: int, val: int, image_size: int, seed: int) -> Path:
    """The synthetic dataset (generated once, reused when its annotations exist)."""
    root = Path(root) / f"synth_{train}_{val}_{image_size}px_seed{seed}"
    if not (root / "annotations" / "instances_val.json").exists():
        generate(root, train=train, val=val, image_size=image_size, seed=seed)
    return root


def datasets(data: Path, cfg: Config) -> tuple[CocoDetection, CocoDetection]:
    return load_split(data, cfg.data.train_split, cfg.data), load_split(data, cfg.data.val_split, cfg.data)


def loader(dataset: CocoDetection, cfg: Config, train: bool, batch_size: int, seed: int):
    """Batches of `dataset`: the evaluation loader of training and `eval`, or for training a DataLoader shuffle
    (every contender's loop steps through it the same way; no resumable sampler to drive)."""
    if not train:
        return eval_loader(dataset, cfg.data, batch_size, seed=seed)
    return build_loader(SeededDataset(dataset, build_transforms(cfg.data, train=train)), batch_size, train=train,
                        num_workers=cfg.data.num_workers, size_divisibility=cfg.data.size_divisibility, seed=seed)


def schedules_over_the_run(cfg: Config) -> bool:
    """Whether `cfg` trains differently by how far into the run it is beyond the warm-up: an augmentation policy
    (Dense O2O's mosaics, the augmentation warm-up or tail: data/policy.py) or the flat-cosine lr."""
    return AugmentPolicy.from_config(cfg.data) != AugmentPolicy() or cfg.train.lr_schedule != "step"


def policy_loader(dataset: CocoDetection, cfg: Config, batch_size: int, seed: int):
    """A training loader whose samples follow `cfg`'s augmentation policy, and its sampler: the trainer's
    `ResumableSampler` (shuffled per epoch, not grouped) over `TrainSamples`; `sampler.set_epoch(epoch,
    progress=...)` before each epoch gives each position its progress."""
    sampler = ResumableSampler(len(dataset), shuffle=True, seed=seed)
    loader = build_loader(TrainSamples(dataset, cfg.data), batch_size, train=True,
                          num_workers=cfg.data.num_workers, size_divisibility=cfg.data.size_divisibility,
                          sampler=sampler, seed=seed)
    return loader, sampler


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so that a timer measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def now(device: torch.device) -> float:
    sync(device)
    return time.perf_counter()


def machine(device: torch.device) -> dict[str, Any]:
    """What the figures were measured on."""
    import torchvision

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"date": datetime.date.today().isoformat(), "python": sys.version.split()[0],
            "torch": torch.__version__, "torchvision": torchvision.__version__, "cpu": cpu,
            "threads": torch.get_num_threads(), "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    return info


def median_seconds(fn, device: torch.device, warmup: int, reps: int) -> float:
    """Median wall time of `fn()` over `reps` runs after `warmup` untimed ones, synchronised on CUDA."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = now(device)
        fn()
        times.append(now(device) - t0)
    return statistics.median(times)


def fmt(v: Any, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "n/a"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def write_results(out: Path, name: str, report: dict[str, Any], md: str) -> None:
    """`out/<name>.json` (atomically) and `out/<name>.md`; prints the table and where both went."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / f"{name}.json", report)
    (out / f"{name}.md").write_text(md)
    print(md)
    print(f"wrote {out / f'{name}.json'}, {out / f'{name}.md'}")
