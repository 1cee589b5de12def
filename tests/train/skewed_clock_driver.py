"""Run the CLI with a training clock that runs at a different speed on each rank (for tests/test_distributed.py).

Each call of `train.stopping.clock` advances it by 1 + RANK seconds, so rank 1 measures twice rank 0's training
time for the same steps. Usage: torchrun ... skewed_clock_driver.py train --data ... (the arguments of `dynamic-detr`).
"""

from __future__ import annotations

import itertools
import os
import sys

if __name__ == "__main__":
    from dynamic_detr.cli.main import main
    from dynamic_detr.train import stopping

    ticks, speed = itertools.count(), 1 + int(os.environ.get("RANK", "0"))
    stopping.clock = lambda: float(next(ticks) * speed)
    sys.exit(main(sys.argv[1:]))
