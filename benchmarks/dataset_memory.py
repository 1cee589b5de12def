"""Dataset memory at COCO scale: start-up time, and the memory of the main process + its DataLoader workers.

Builds a COCO-size synthetic annotation file (118,287 images, ~860k boxes with polygons, ~1% crowd ones with an
RLE; sparse image ids, annotations in random file order as in COCO; image files present but empty: the dataset
lists the folder at start-up, this benchmark decodes nothing), then measures, each in a fresh child process:

* pycocotools `COCO(file)`: its load time (the reference for our start-up) and memory;
* ours, once per `--workers` count: `CocoDetection(root, split)` (timed: parse, validation, folder listing,
  compaction), then a DataLoader (fork, `collate.worker_init` as `build_loader` uses) over every index, shuffled,
  with a light `__getitem__` that reads each record (file name, size, boxes, labels) as `_load` does but decodes
  no image. Memory: RSS / USS / PSS of the main process and of each worker (psutil when installed, else
  /proc/PID/smaps_rollup), summed, right after each worker served its first batch ("start") and after the last
  batch ("end").

Targets: records <= 1 GB at COCO size, PSS sum at the end within 1.2x of the start, start-up within
1.5x of pycocotools' COCO().

    .venv/bin/python benchmarks/dataset_memory.py             # COCO size: ~0.5 GB file, a few GB of RAM at peak
    .venv/bin/python benchmarks/dataset_memory.py --quick     # 2,000 images (the test suite calls it)

Writes `<out>/dataset_memory.json` and `dataset_memory.md`; the annotation file is cached under `--work`. Never run
it while another job uses the cores (start-up is wall-clock time).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
from dynamic_detr.data.coco import CocoDetection
from dynamic_detr.data.collate import worker_init

SPLIT = "train2017"
COCO_IMAGES = 118_287
COCO_BOXES_PER_IMAGE = 860_001 / 118_287
COCO_CATEGORY_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]
MB = 2**20
TARGETS = {"records_mb": 1024.0, "growth": 1.2, "startup_ratio": 1.5}


# --------------------------------------------------------------------------- the synthetic file
def make_dataset(work: Path, images: int, boxes_per_image: float, seed: int) -> tuple[Path, dict[str, int]]:
    """`work/coco_like_<images>_seed<seed>/` with `annotations/instances_train2017.json` and empty image files
    (reused when present). Returns the root and what it holds."""
    root = work / f"coco_like_{images}img_{boxes_per_image:.3f}bpi_seed{seed}"
    stats_file = root / "generated.json"
    if stats_file.exists():
        return root, json.loads(stats_file.read_text())
    rng = np.random.default_rng(seed)
    ids = np.sort(rng.choice(6 * images, images, replace=False) + 1)  # COCO's ids are sparse
    portrait = rng.random(images) < 0.25
    long, short = np.full(images, 640), rng.integers(300, 641, images)
    widths, heights = np.where(portrait, short, long), np.where(portrait, long, short)
    counts = rng.poisson(boxes_per_image, images)
    owner = np.repeat(np.arange(images), counts)
    m = len(owner)
    w_img, h_img = widths[owner], heights[owner]
    bw = np.round(rng.uniform(0.02, 0.7, m) * w_img, 2)
    bh = np.round(rng.uniform(0.02, 0.7, m) * h_img, 2)
    bx = np.round(rng.uniform(0, 1, m) * (w_img - bw), 2)
    by = np.round(rng.uniform(0, 1, m) * (h_img - bh), 2)
    crowd = rng.random(m) < 0.01
    cats = rng.choice(COCO_CATEGORY_IDS, m)
    points = rng.integers(6, 40, m)  # polygon vertices: ~23 on average, COCO's order of magnitude
    ann_ids = rng.permutation(m) + 1
    file_order = rng.permutation(m)  # COCO's annotations are not grouped by image

    names = [f"{int(i):012d}.jpg" for i in ids]
    image_dicts = [{"license": 1, "file_name": n, "coco_url": f"http://images.cocodataset.org/{SPLIT}/{n}",
                    "height": int(h), "width": int(w), "date_captured": "2013-11-14 11:18:45", "id": int(i)}
                   for n, w, h, i in zip(names, widths, heights, ids, strict=True)]
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / SPLIT).mkdir(exist_ok=True)
    for n in names:
        (root / SPLIT / n).touch()
    tmp = root / "annotations" / f"instances_{SPLIT}.json.tmp"
    with open(tmp, "w") as f:
        f.write('{"info": {"description": "COCO-size synthetic"}, "licenses": [{"id": 1, "name": "none"}], ')
        f.write('"images": ' + json.dumps(image_dicts) + ', "annotations": [')
        chunk = 50_000
        for start in range(0, m, chunk):
            rows = file_order[start:start + chunk]
            anns = [_annotation(int(k), rng, bx, by, bw, bh, crowd, points, cats, ann_ids, ids, owner, w_img, h_img)
                    for k in rows]
            f.write(("," if start else "") + json.dumps(anns)[1:-1])
        cat_dicts = [{"supercategory": "thing", "id": c, "name": f"class{c}"} for c in COCO_CATEGORY_IDS]
        f.write('], "categories": ' + json.dumps(cat_dicts) + "}")
    tmp.replace(root / "annotations" / f"instances_{SPLIT}.json")
    stats = {"images": images, "annotations": m, "crowd": int(crowd.sum()),
             "file_mb": (root / "annotations" / f"instances_{SPLIT}.json").stat().st_size / MB}
    stats_file.write_text(json.dumps(stats))
    return root, stats


def _annotation(k, rng, bx, by, bw, bh, crowd, points, cats, ann_ids, ids, owner, w_img, h_img) -> dict[str, Any]:
    x, y, w, h = float(bx[k]), float(by[k]), float(bw[k]), float(bh[k])
    if crowd[k]:
        runs = rng.integers(1, 400, int(rng.integers(20, 120))).tolist()
        seg: Any = {"counts": runs, "size": [int(h_img[k]), int(w_img[k])]}
    else:
        n = int(points[k])
        xs = np.round(x + rng.uniform(0, w, n), 2)
        ys = np.round(y + rng.uniform(0, h, n), 2)
        seg = [np.stack([xs, ys], 1).reshape(-1).tolist()]
    return {"segmentation": seg, "area": round(0.6 * w * h, 4), "iscrowd": int(crowd[k]),
            "image_id": int(ids[owner[k]]), "bbox": [x, y, w, h], "category_id": int(cats[k]), "id": int(ann_ids[k])}


# --------------------------------------------------------------------------- memory
def memory(pid: int) -> dict[str, float]:
    """RSS, USS (private pages), PSS (proportional share) of one process, in MB."""
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        m = psutil.Process(pid).memory_full_info()
        return {"rss": m.rss / MB, "uss": m.uss / MB, "pss": m.pss / MB}
    kb: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0].endswith(":") and parts[2] == "kB":
            kb[parts[0][:-1]] = int(parts[1])
    uss = kb.get("Private_Clean", 0) + kb.get("Private_Dirty", 0)
    return {"rss": kb["Rss"] / 1024, "uss": uss / 1024, "pss": kb["Pss"] / 1024}


def memory_sum(pids: list[int]) -> dict[str, Any]:
    per = [memory(p) for p in pids]
    return {"processes": len(pids), **{k: sum(m[k] for m in per) for k in ("rss", "uss", "pss")}, "per_process": per}


def memory_source() -> str:
    try:
        import psutil  # noqa: F401
    except ImportError:
        return "/proc/PID/smaps_rollup"
    return "psutil memory_full_info"


# --------------------------------------------------------------------------- children
class RecordsOnly(CocoDetection):
    """Reads what `_load` reads from the records (file name, size, boxes, labels); decodes no image."""

    def __getitem__(self, index: int) -> tuple[int, int, int, float]:
        boxes, labels = self._target_arrays(index)
        info = self.records.image(index)
        path = self.records.image_dir / info["file_name"]
        return info["id"], len(str(path)) + info["width"] + info["height"], int(labels.numel()), float(boxes.sum())


def reduce_batch(batch: list[tuple[int, int, int, float]]) -> tuple[int, int]:
    """(images, boxes) of a batch: the light collate (no tensors through the worker queue)."""
    return len(batch), sum(b[2] for b in batch)


def child_pycocotools(root: Path) -> dict[str, Any]:
    from pycocotools.coco import COCO

    before = memory(os.getpid())
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(root / "annotations" / f"instances_{SPLIT}.json"))
    seconds = time.perf_counter() - t0
    after = memory(os.getpid())
    return {"seconds": seconds, "images": len(coco.imgs), "annotations": len(coco.anns),
            "main_before": before, "main_after": after}


def child_ours(root: Path, workers: int, batch: int) -> dict[str, Any]:
    before = memory(os.getpid())
    t0 = time.perf_counter()
    ds = RecordsOnly(root, SPLIT)
    seconds = time.perf_counter() - t0
    after = memory(os.getpid())
    sampler = torch.utils.data.RandomSampler(ds, generator=torch.Generator().manual_seed(0))
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, sampler=sampler, num_workers=workers,
                                         collate_fn=reduce_batch, worker_init_fn=worker_init,
                                         multiprocessing_context="fork")
    n_batches = len(loader)
    it = iter(loader)
    pids = [os.getpid(), *(w.pid for w in getattr(it, "_workers", []))]  # the iterator's worker processes
    images = boxes = 0
    start = None
    t1 = time.perf_counter()
    for k in range(n_batches):
        n, b = next(it)
        images, boxes = images + n, boxes + b
        if k == max(min(workers, n_batches), 1) - 1:  # every worker has served a batch (round robin)
            start = memory_sum(pids)
    end = memory_sum(pids)  # before the iterator ends: the workers are still alive
    iterate = time.perf_counter() - t1
    del it
    r = ds.records
    return {"workers": workers, "startup_s": seconds, "iterate_s": iterate, "batches": n_batches,
            "touched_images": images, "touched_boxes": boxes, "num_images": len(ds),
            "num_annotations": r.num_annotations, "num_crowd": int(r.ann_crowd.sum()),
            "records_bytes": r.nbytes, "records_mb": r.nbytes / MB, "main_before": before, "main_after_build": after,
            "start": start, "end": end,
            "growth": {k: end[k] / start[k] for k in ("rss", "uss", "pss")}}


def run_child(args: argparse.Namespace, root: Path, kind: str, workers: int = 0) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--root", str(root),
           "--child-workers", str(workers), "--batch", str(args.batch)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"dataset_memory: child {kind} {workers or ''} failed (exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- report
def table(report: dict[str, Any]) -> str:
    gen, ref, runs, s = report["generated"], report["pycocotools"], report["runs"], report["summary"]
    met = {True: "met", False: "not met"}
    lines = [
        f"File: {gen['images']} images, {gen['annotations']} boxes ({gen['crowd']} crowd), {gen['file_mb']:.0f} MB "
        f"of JSON. Memory: {report['memory_source']}.",
        "",
        "| figure | value | target |",
        "|---|---|---|",
        f"| start-up, pycocotools COCO() (s) | {ref['seconds']:.2f} | |",
        f"| start-up, CocoDetection (s, median) | {s['startup_s']:.2f} | |",
        f"| start-up ratio, ours / pycocotools | x{s['startup_ratio']:.2f} | <= x{TARGETS['startup_ratio']} "
        f"({met[s['startup_ok']]}) |",
        f"| records (MB) | {s['records_mb']:.1f} | <= {TARGETS['records_mb']:.0f} ({met[s['records_ok']]}) |",
        f"| pycocotools COCO() main process RSS after load (MB) | {ref['main_after']['rss']:.0f} | |",
        f"| ours, main process RSS after build (MB) | {s['main_rss_after_build_mb']:.0f} | |",
        "",
        "| workers | when | processes | RSS sum (MB) | USS sum (MB) | PSS sum (MB) |",
        "|---|---|---|---|---|---|",
    ]
    for r in runs:
        for when in ("start", "end"):
            m = r[when]
            lines.append(f"| {r['workers']} | {when} | {m['processes']} | {m['rss']:.0f} | {m['uss']:.0f} | "
                         f"{m['pss']:.0f} |")
        g = r["growth"]
        lines.append(f"| {r['workers']} | end / start | | x{g['rss']:.3f} | x{g['uss']:.3f} | x{g['pss']:.3f} |")
    lines += ["", f"PSS sum at the end within x{TARGETS['growth']} of the start for every worker count: "
                  f"{met[s['growth_ok']]} (largest x{s['max_pss_growth']:.3f})."]
    return "\n".join(lines)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=COCO_IMAGES)
    p.add_argument("--boxes-per-image", type=float, default=COCO_BOXES_PER_IMAGE)
    p.add_argument("--workers", type=int, nargs="+", default=[2, 4])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, default=common.ROOT / "runs" / "bench")
    p.add_argument("--out", type=Path, default=common.RESULTS)
    p.add_argument("--quick", action="store_true", help="smoke run: 2,000 images, batch 16")
    p.add_argument("--child", choices=["pycocotools", "ours"], help=argparse.SUPPRESS)
    p.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--child-workers", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.images, args.batch = 2000, 16
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.child:  # one measurement in a fresh process, JSON on the last stdout line
        res = child_pycocotools(args.root) if args.child == "pycocotools" else child_ours(
            args.root, args.child_workers, args.batch)
        print(json.dumps(res))
        return 0
    root, generated = make_dataset(args.work, args.images, args.boxes_per_image, args.seed)
    ann_file = root / "annotations" / f"instances_{SPLIT}.json"
    ann_file.read_bytes()  # warm the page cache: both contenders read a cached file
    print(f"{ann_file}: {generated['images']} images, {generated['annotations']} boxes, "
          f"{generated['file_mb']:.0f} MB", flush=True)
    ref = run_child(args, root, "pycocotools")
    print(f"pycocotools COCO(): {ref['seconds']:.2f} s, RSS {ref['main_after']['rss']:.0f} MB", flush=True)
    runs = []
    for w in args.workers:
        r = run_child(args, root, "ours", w)
        runs.append(r)
        print(f"ours, {w} workers: start-up {r['startup_s']:.2f} s, records {r['records_mb']:.1f} MB, PSS sum "
              f"{r['start']['pss']:.0f} -> {r['end']['pss']:.0f} MB (x{r['growth']['pss']:.3f})", flush=True)
    startup = statistics.median(r["startup_s"] for r in runs)
    records_mb = runs[0]["records_mb"]
    max_growth = max(r["growth"]["pss"] for r in runs)
    summary = {"startup_s": startup, "startup_ratio": startup / ref["seconds"], "records_mb": records_mb,
               "main_rss_after_build_mb": statistics.median(r["main_after_build"]["rss"] for r in runs),
               "max_pss_growth": max_growth}
    summary.update(startup_ok=summary["startup_ratio"] <= TARGETS["startup_ratio"],
                   records_ok=records_mb <= TARGETS["records_mb"], growth_ok=max_growth <= TARGETS["growth"])
    report = {"machine": common.machine(torch.device("cpu")), "memory_source": memory_source(),
              "setup": {"images": args.images, "boxes_per_image": args.boxes_per_image, "workers": args.workers,
                        "batch": args.batch, "seed": args.seed, "quick": args.quick},
              "generated": generated, "targets": TARGETS, "pycocotools": ref, "runs": runs, "summary": summary}
    m = report["machine"]
    md = f"{m['cpu']}, {m['threads']} threads; torch {m['torch']}; {m['date']}.\n\n{table(report)}\n"
    common.write_results(args.out, "dataset_memory", report, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
