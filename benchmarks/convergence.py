"""Convergence: COCO AP after equal epochs and after equal minutes, Dynamic DETR vs its ablations vs peers.

The paper's claims in miniature (docs/paper.md): at equal epochs Dynamic DETR is far ahead of DETR and ahead of
Deformable DETR, most of all on small objects; the dynamic encoder and the 6 decoder stages are worth AP. And
the convergence recipe one step at a time (peers.LADDER, config.RECIPE): the paper's model at the preset's
size, + start-up fixes, + dense head, + query selection, + distinct queries, + one-to-many, + denoising,
+ MAL, + Stable-DINO's stable matching, + IoU-aware (= the preset).
Every contender (benchmarks/peers.py) is trained one after the other by the same loop on the same data,
image sizes, batch size, epochs and seed, from random weights, and evaluated by the same COCO evaluator
after every epoch. One run gives both budgets: a contender trains until it has done `--epochs` epochs AND
`--minutes` minutes of training (evaluation not counted), and is also evaluated at the exact moment its
training time reaches `--minutes`. The lr is constant after the warm-up for everyone, so that every point
of a curve is a point of the same run; `--lr-drop E` instead multiplies every lr by 0.1 after epoch E (the
paper's 1x schedule drops after 11 of 12), for runs long enough to read a plateau (use it with `--minutes 0`).
A contender whose config schedules over the run (the `dense_o2o` and `flat_cosine` rungs: DEIM's mosaics with
its augmentation warm-up and no-augmentation tail, the flat-cosine lr) needs the run's length: it reads its
progress from the minutes budget (from the epochs with `--minutes 0`), so its schedule ends at the equal-minutes
point and its equal-epochs point is read wherever that falls; its batches come from the trainer's sampler
(another order than the others' DataLoader shuffle) so that each sample carries its progress.

Default setup (documented in docs/benchmarks.md): the synthetic dataset, 480 train / 120 val images with a
192 px long side (data seed 0), the `cpu_small` model with the augmentation recipe scaled to 192 px, batch 8,
init seed 0; 8 epochs and 6 minutes. `--seed` changes the init (weights and training order) only, `--data-seed`
the dataset: runs of several init seeds on one dataset are compared pairwise by `benchmarks/paired.py`.

    .venv/bin/python benchmarks/convergence.py                       # all contenders (~75 min on 2 cores before
                                                                     # RT-DETR and D-FINE-N joined; D-FINE-S: --only)
    .venv/bin/python benchmarks/convergence.py --only dynamic_detr hf_detr --epochs 2
    .venv/bin/python benchmarks/convergence.py --only hf_dfine_n --peer-set hf_dfine_n.lr=4e-4 --out DIR
    .venv/bin/python benchmarks/convergence.py --data /coco --preset paper_r50 --image-size 0 \\
        --epochs 12 --minutes 0 --device cuda                         # full scale, COCO layout
    .venv/bin/python benchmarks/convergence.py --quick               # smoke run (the test suite calls it)

Writes `<out>/convergence.json` (after every contender: an interrupted run continues where it stopped),
`convergence.md` and `convergence_ap_epochs.png` / `convergence_ap_minutes.png`. Never run it while another
job uses the cores: the minutes budget is wall-clock time.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
import peers
from dynamic_detr.checkpoint import save_weights
from dynamic_detr.evaluate.metrics import AP_NAMES, CocoEvaluator, to_coco_detections
from dynamic_detr.fileio import atomic_write_json
from dynamic_detr.model import DynamicDETR
from dynamic_detr.train.schedule import WarmupStepSchedule, build_schedule


def evaluate(c: peers.Contender, val_loader, val_set, device: torch.device) -> dict[str, Any]:
    c.model.eval()
    ids = val_set.category_ids
    dets: list[dict[str, Any]] = []
    with torch.no_grad():
        for batch in val_loader:
            batch = batch.to(device)
            results = c.detect(batch)
            results = [{"boxes": r["boxes"].cpu(), "scores": r["scores"].cpu(),
                        "labels": torch.as_tensor([ids[int(v)] for v in r["labels"]], dtype=torch.long)}
                       for r in results]
            dets += to_coco_detections(results, [int(t["image_id"]) for t in batch.targets])
    evaluator = CocoEvaluator(val_set.coco_gt())
    evaluator.update(dets)
    metrics = evaluator.summarize()
    return {k: metrics[k] for k in AP_NAMES}


def train_one(name: str, cfg, data: Path, args, device: torch.device) -> dict[str, Any]:
    """Train contender `name` for max(epochs, minutes); its AP history, both budgets' points and speed."""
    train_set, val_set = common.datasets(data, cfg)
    common.seed_everything(args.seed)
    c = peers.build(name, cfg, len(train_set.category_ids), args.batch_size,
                    peers.peer_settings(args.peer_set).get(name))
    c.model.to(device)
    run_cfg = peers.ablation_config(name, cfg) if name in peers.OURS else cfg
    over_the_run = common.schedules_over_the_run(run_cfg)
    sampler = None
    if over_the_run:
        train_loader, sampler = common.policy_loader(train_set, run_cfg, args.batch_size, args.seed)
    else:
        train_loader = common.loader(train_set, cfg, True, args.batch_size, args.seed)
    val_loader = common.loader(val_set, cfg, False, args.batch_size, args.seed)
    t = cfg.train
    base_lrs = [g["lr"] for g in c.optimizer.param_groups]
    drop_at = [args.lr_drop / args.epochs] if args.lr_drop else []
    schedule = WarmupStepSchedule(base_lrs, t.warmup_iters, t.warmup_factor, drop_at, 0.1)
    if run_cfg.train.lr_schedule != "step":
        schedule = build_schedule(run_cfg.train, base_lrs, floor_from=run_cfg.data.aug_stop)
    total_steps = max(args.epochs * len(train_loader), 1)
    budget_s = args.minutes * 60

    def run_progress(at_step: int) -> float:
        """The run's progress for a schedule over the run: of the minutes budget, or of the epochs without one."""
        return min(seconds / budget_s if budget_s > 0 else at_step / total_steps, 1.0)
    history: list[dict[str, Any]] = []
    at_minutes: dict[str, Any] | None = None
    step, seconds, epoch, skipped, losses = 0, 0.0, 0, 0, []
    print(f"== {c.label}: {c.params() / 1e6:.2f} M params, {c.settings}", flush=True)

    def done() -> bool:
        return epoch >= args.epochs and seconds >= budget_s

    while not done():
        if sampler is not None:
            sampler.set_epoch(epoch, progress=lambda position, e=epoch: run_progress(
                e * len(train_loader) + position // args.batch_size))
        c.model.train()
        tick = common.now(device)
        for batch in train_loader:
            batch = batch.to(device)
            loss = c.loss(batch)
            c.optimizer.zero_grad(set_to_none=True)
            if math.isfinite(float(loss.detach())):
                loss.backward()
                params = [p for g in c.optimizer.param_groups for p in g["params"]]
                torch.nn.utils.clip_grad_norm_(params, c.clip if c.clip > 0 else float("inf"))
                schedule.apply(c.optimizer, step, run_progress(step) if over_the_run else step / total_steps)
                c.optimizer.step()
                losses.append(float(loss.detach()))
            else:
                skipped += 1
            step += 1
            tock = common.now(device)
            seconds += tock - tick
            tick = tock
            if at_minutes is None and budget_s > 0 and seconds >= budget_s:
                at_minutes = {"epoch": epoch + step_in_epoch(step, train_loader), "minutes": seconds / 60,
                              **evaluate(c, val_loader, val_set, device)}
                print(f"   at {args.minutes} min: epoch {at_minutes['epoch']:.2f}, AP {at_minutes['AP']:.1f}",
                      flush=True)
                c.model.train()
                if epoch >= args.epochs:
                    break
                tick = common.now(device)
        else:
            epoch += 1
            point = {"epoch": epoch, "minutes": seconds / 60, "loss": sum(losses) / max(len(losses), 1),
                     "lr": c.optimizer.param_groups[0]["lr"],
                     **evaluate(c, val_loader, val_set, device)}
            losses = []
            history.append(point)
            print(f"   epoch {epoch}: {point['minutes']:.1f} min, lr {point['lr']:.2g}, loss {point['loss']:.3f}, "
                  f"AP {point['AP']:.1f}, "
                  f"AP50 {point['AP50']:.1f}, APs {point['APs']:.1f}", flush=True)
            continue
        break
    at_epochs = next((h for h in history if h["epoch"] == args.epochs), None)
    saved = save_trained(name, c, cfg, train_set, args)
    return {"label": c.label, "params": c.params(), "settings": c.settings, "steps": step, "skipped": skipped,
            "weights": saved,
            "sec_per_step": seconds / max(step, 1), "history": history, "at_epochs": at_epochs,
            "at_minutes": at_minutes}


def save_trained(name: str, c, cfg, train_set, args) -> str | None:
    """Our contenders' final weights as `<work>/weights/<name>_seed<k>.safetensors`, with the config the CLI
    needs (`dynamic-detr explain / eval / predict --checkpoint FILE`); None for the peers."""
    if not isinstance(c.model, DynamicDETR):
        return None
    run_cfg = peers.ablation_config(name, cfg)
    m = run_cfg.model
    m.num_classes, m.category_ids, m.class_names = (len(train_set.category_ids), list(train_set.category_ids),
                                                    list(train_set.class_names))
    path = args.work / "weights" / f"{name}_seed{args.seed}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_weights(path, c.model.state_dict(), {"config": json.dumps(run_cfg.to_dict())})
    print(f"   weights: {path}", flush=True)
    return str(path)


def step_in_epoch(step: int, train_loader) -> float:
    n = len(train_loader)
    return round((step % n) / n, 2) if n else 0.0


def table(results: dict[str, Any], budget: str, setup: dict[str, Any]) -> str:
    """Markdown table of one budget (`at_epochs` | `at_minutes`), with AP ratios vs each peer's AP."""
    rows = ["| model | AP | AP50 | AP75 | APs | APm | APl | epochs | minutes | params (M) |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results.values():
        p = r.get(budget)
        if p is None:
            continue
        aps = " | ".join(common.fmt(p[k]) for k in AP_NAMES)
        rows.append(f"| {r['label']} | {aps} | {common.fmt(float(p['epoch']), 2 if budget == 'at_minutes' else 0)} "
                    f"| {common.fmt(p['minutes'])} | {r['params'] / 1e6:.2f} |")
    return "\n".join(rows)


def ratios(results: dict[str, Any], budget: str) -> str:
    ours = (results.get("dynamic_detr") or {}).get(budget)
    if ours is None:
        return ""
    lines = []
    for name in peers.PEERS + peers.EXTRA_PEERS:
        p = (results.get(name) or {}).get(budget)
        if p is None:
            continue
        # a ratio over a peer AP below 1 is noise, not a factor
        ratio = f"x{ours['AP'] / p['AP']:.2f}, " if p["AP"] >= 1.0 else ""
        lines.append(f"- vs {results[name]['label']}: AP {ours['AP']:.1f} vs {p['AP']:.1f} "
                     f"({ratio}{ours['AP'] - p['AP']:+.1f}), APs {common.fmt(ours['APs'])} vs "
                     f"{common.fmt(p['APs'])}")
    return "\n".join(lines)


def markdown(report: dict[str, Any]) -> str:
    s, res = report["setup"], report["results"]
    drop = f", lr x0.1 after epoch {s['lr_drop']}" if s.get("lr_drop") else ""
    out = [f"Setup: {s['data']}, batch {s['batch_size']}, preset `{s['preset']}` "
           f"{' '.join(s['overrides'])}, seed {s['seed']}{drop}; {report['machine']['cpu']}, "
           f"{report['machine']['threads']} threads, torch {report['machine']['torch']}, {report['machine']['date']}.",
           "", f"### Equal epochs ({s['epochs']})", "", table(res, "at_epochs", s), "", ratios(res, "at_epochs")]
    if s["minutes"] > 0:
        out += ["", f"### Equal minutes ({s['minutes']} min of training)", "", table(res, "at_minutes", s), "",
                ratios(res, "at_minutes")]
    return "\n".join(out).rstrip() + "\n"


def plot(report: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for x_key, x_label, fname in (("epoch", "epoch", "convergence_ap_epochs.png"),
                                  ("minutes", "training minutes (2 CPU cores)", "convergence_ap_minutes.png")):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name, r in report["results"].items():
            pts = sorted([*r["history"], *([r["at_minutes"]] if r.get("at_minutes") else [])],
                         key=lambda h: h[x_key])
            style = "-" if name in peers.LADDER else ("--" if name in peers.OURS else ":")
            ax.plot([p[x_key] for p in pts], [p["AP"] for p in pts], style, marker="o", ms=3, label=r["label"],
                    lw=2.2 if name == "dynamic_detr" else 1.4)
        if x_key == "minutes" and report["setup"]["minutes"] > 0:
            ax.axvline(report["setup"]["minutes"], color="grey", lw=0.8)
        ax.set_xlabel(x_label)
        ax.set_ylabel("COCO AP (val)")
        ax.set_title(f"AP vs {x_key}: {report['setup']['data']}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / fname
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, help="COCO-layout dataset (default: the synthetic one, generated)")
    p.add_argument("--synth", type=int, nargs=2, default=[480, 120], metavar=("TRAIN", "VAL"),
                   help="synthetic image counts")
    p.add_argument("--image-size", type=int, default=192,
                   help="synthetic long side and eval short side (the augmentation recipe is scaled to it); "
                        "0 keeps the preset's data section")
    p.add_argument("--preset", default="cpu_small")
    p.add_argument("--epochs", type=int, default=8, help="equal-epochs budget")
    p.add_argument("--minutes", type=float, default=6.0, help="equal-minutes budget (0: epochs only)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr-drop", type=int, default=0, metavar="E",
                   help="lr x0.1 after epoch E (0: constant lr after the warm-up)")
    p.add_argument("--seed", type=int, default=0,
                   help="init seed: the model's random weights and the training order (not the data)")
    p.add_argument("--data-seed", type=int, default=0,
                   help="seed of the generated synthetic dataset, kept apart from --seed so that runs with "
                        "several init seeds see the same images (benchmarks/paired.py compares them)")
    p.add_argument("--only", nargs="+", choices=peers.CHOICES,
                   help=f"contenders to run (default: all but {', '.join(peers.EXTRA_PEERS)})")
    p.add_argument("--peer-set", action="append", default=[], metavar="NAME.KEY=VALUE",
                   help="change one of a peer's settings (peers.SETTINGS) for this run, e.g. "
                        "hf_dfine_n.lr=4e-4 (repeatable; recorded in the setup: use another --out per value)")
    p.add_argument("--device", default="auto")
    p.add_argument("--work", type=Path, default=common.ROOT / "runs" / "bench", help="where data is generated")
    p.add_argument("--out", type=Path, default=common.RESULTS, help="folder for the results files")
    p.add_argument("--fresh", action="store_true", help="ignore contenders already in <out>/convergence.json")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny data, cpu_tiny, 1 epoch, every contender")
    p.add_argument("overrides", nargs="*", help="config key=value overrides (e.g. train.lr=2e-4)")
    args = p.parse_args(argv)
    if args.quick:
        args.synth, args.image_size, args.preset, args.epochs = [16, 8], 128, "cpu_tiny", 1
        args.minutes, args.batch_size = 0.05, 4
        args.overrides = [*args.overrides, "data.num_workers=0"]
        args.peer_set = [*peers.QUICK_PEER_SETTINGS, *args.peer_set]
    try:
        peers.peer_settings(args.peer_set)
    except ValueError as e:
        p.error(str(e))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    device = common.pick_device(args.device)
    overrides = list(args.overrides)
    if args.image_size:
        overrides = common.sized_data_overrides(args.image_size) + overrides
    cfg = common.make_config(args.preset, overrides)
    if args.data is None:
        data = common.synthetic_data(args.work, *args.synth, image_size=args.image_size or 320, seed=args.data_seed)
        data_desc = (f"synthetic {args.synth[0]} train / {args.synth[1]} val, {args.image_size or 320} px, "
                     f"data seed {args.data_seed}")
    else:
        data, data_desc = args.data, str(args.data)
    import hashlib

    # the resolved config's digest: results of an earlier definition of the preset are never reused
    digest = hashlib.sha1(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()[:12]
    setup = {"data": data_desc, "preset": args.preset, "overrides": overrides, "epochs": args.epochs,
             "minutes": args.minutes, "batch_size": args.batch_size, "seed": args.seed, "config": digest}
    if args.peer_set:
        setup["peer_settings"] = list(args.peer_set)
    if args.lr_drop:
        if not 0 < args.lr_drop < args.epochs:
            raise SystemExit(f"--lr-drop {args.lr_drop}: must be between 1 and --epochs - 1 ({args.epochs - 1})")
        setup["lr_drop"] = args.lr_drop
    out_json = args.out / "convergence.json"
    report = {"setup": setup, "machine": common.machine(device), "results": {}}
    if out_json.exists() and not args.fresh:
        old = json.loads(out_json.read_text())
        if old.get("setup") == setup:
            report["results"] = old["results"]
    for name in args.only or peers.ALL:
        if name in report["results"]:
            print(f"== {name}: already in {out_json}, skipped (--fresh reruns)")
            continue
        t0 = time.perf_counter()
        report["results"][name] = train_one(name, cfg, data, args, device)
        report["results"][name]["wall_minutes"] = (time.perf_counter() - t0) / 60
        report["machine"] = common.machine(device)
        atomic_write_json(out_json, report)
    md = markdown(report)
    (args.out / "convergence.md").write_text(md)
    plots = plot(report, args.out)
    print(md)
    print(f"wrote {out_json}, {args.out / 'convergence.md'}, {', '.join(str(p) for p in plots)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
