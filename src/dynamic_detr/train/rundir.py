"""Run folders never mix: a new run does not write into a folder that holds another run's files.

`train` without `--resume` into a non-empty folder `runs/NAME` goes to the first free `runs/NAME2`,
`runs/NAME3`, ... (Ultralytics' rule); `--exist-ok` keeps `runs/NAME` and `clear_run` removes the earlier
run's files first; `--resume` continues the run in the folder.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ..errors import UserError
from ..fileio import remove_stale_temp_files

RUN_FILES = ("config.yaml", "results.csv", "metrics.json", "last.pt", "best.pt", "tensorboard", "plots", "weights")
"""What a run writes into its folder (train/trainer.py); `clear_run` removes these and nothing else."""


def is_free(path: Path) -> bool:
    """True when `path` does not exist or is an empty folder."""
    path = Path(path)
    if not path.exists():
        return True
    return path.is_dir() and not any(path.iterdir())


def fresh_run_dir(out: Path, limit: int = 9999) -> Path:
    """`out` when it is free, else the first free `out2`, `out3`, ... (a file or a non-empty folder is not)."""
    out = Path(out)
    if is_free(out):
        return out
    base = out if out.name not in ("", ".", "..") else out.resolve()
    if not base.name:
        raise UserError(f"{out}: not a run folder name; give --out runs/NAME")
    for n in range(2, limit + 2):
        candidate = base.with_name(f"{base.name}{n}")
        if is_free(candidate):
            return candidate
    raise UserError(f"{out}: {base.name}2 .. {base.name}{limit + 1} are all taken; give another --out")


def clear_run(out: Path) -> list[str]:
    """Remove an earlier run's files from `out` (`RUN_FILES` and temp files left by interrupted writes);
    anything else in the folder stays. Returns the names removed (folders with a trailing "/")."""
    out = Path(out)
    if not out.is_dir():
        return []
    removed = []
    for name in RUN_FILES:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
            removed.append(f"{name}/")
        elif path.exists() or path.is_symlink():
            path.unlink()
            removed.append(name)
        remove_stale_temp_files(path)
    return removed
