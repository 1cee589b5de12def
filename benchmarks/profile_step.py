"""Profile: where one training step and one batch-1 inference of our models spend their time.

For each contender (`--only`, names of benchmarks/peers.py; default the paper's model `faithful` and the
preset with the convergence recipe `dynamic_detr`) at each `--presets` size, on the fixed batch of speed.py:

* wall time (median of `--reps` after `--warmup`), split into data loading (one batch from the real training /
  eval DataLoader in the main process, timed on its own and added), backbone + FPN, encoder, dense head,
  decoder, matcher, loss (criterion minus matcher), backward, optimiser step (with gradient clipping) and
  "other" (the rest: Python glue, query selection, post-processing). Forward parts are timed by forward
  pre / post hooks (perf_counter) on the model's components and the criterion, and by a wrapper around the
  criterion's matcher call; the split is that of the median rep.
* backward by component, from one `torch.profiler` run: each hook also pushes a `record_function` range
  `profile::<part>`; a backward node (`autograd::engine::evaluate_function: ...`) belongs to the part whose
  forward range created it (the profiler gives both the same autograd sequence number). Nodes with no forward
  op in a range (gradient accumulation into the parameters, glue outside the components) are "other". The
  shares are of the profiled backward CPU time; the milliseconds are those shares of the timed backward.
* the top 15 ops by self CPU time in the profiled run (`key_averages`), with their share of it; the
  `profile::<part>` ranges' own self time is the Python between the ops of that part.
* achieved FLOP rate: FLOPs counted by `torch.utils.flop_counter` (with model/info.py's formulas for
  deformable conv, RoIAlign and CPU attention) over the step's compute time (without data loading), against
  this machine's fp32 matmul and 3x3 convolution rates measured at the start of the run.
* memory kept for the backward: the MB one training forward's autograd graph holds, by the part whose forward
  saved each tensor (`saved_tensors_hooks`; each storage once, parameters left out).

    .venv/bin/python benchmarks/profile_step.py                       # cpu_small: faithful + dynamic_detr
    .venv/bin/python benchmarks/profile_step.py --amp none --only dynamic_detr no_encoder --batch 8
    .venv/bin/python benchmarks/profile_step.py --quick               # smoke run (the test suite calls it)

Writes `<out>/profile.json` and `profile.md`. Never run it while another job uses the cores.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile, record_function
from torch.utils.flop_counter import conv_flop_count

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
import peers
import speed
from dynamic_detr.config import PRESETS
from dynamic_detr.errors import UserError
from dynamic_detr.evaluate.inference import effective_amp
from dynamic_detr.model.info import COMPONENTS, flop_counter

PREFIX = "profile::"
TRAIN_PARTS = ("data", *COMPONENTS, "matcher", "loss", "backward", "optimizer", "other")
INFER_PARTS = ("data", *COMPONENTS, "other")
PART_LABELS = {"data": "data loading (1 batch, DataLoader)", "backbone": "backbone + FPN", "encoder": "encoder",
               "dense_head": "dense head", "decoder": "decoder", "matcher": "matcher (Hungarian)",
               "loss": "loss (criterion minus matcher)", "backward": "backward",
               "optimizer": "optimizer step (+ grad clipping)", "other": "other (glue, Python, post-processing)"}
BACKWARD_NODE = "autograd::engine::evaluate_function: "
BACKWARD_OTHER = "other (gradient accumulation, nodes made outside the parts)"
TOP_OPS = 15


class Sections:
    """Wall time of named forward sections, by perf_counter at entry and exit; each is also a profiler range
    `profile::<name>` (a no-op unless a profiler runs), so that backward nodes can be traced to it."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)
        self._open: dict[str, list[tuple[Any, float]]] = defaultdict(list)
        self._stack: list[str] = []
        self._undo: list[Callable[[], None]] = []

    def current(self) -> str:
        """The innermost open section ("other" outside them all)."""
        return self._stack[-1] if self._stack else "other"

    def enter(self, name: str) -> None:
        rf = record_function(PREFIX + name)
        rf.__enter__()
        self._open[name].append((rf, common.now(self.device)))
        self._stack.append(name)

    def exit(self, name: str) -> None:
        rf, t0 = self._open[name].pop()
        self._stack.pop()  # sections nest: the one that exits is the innermost
        self.seconds[name] += common.now(self.device) - t0
        rf.__exit__(None, None, None)

    def hook(self, module: torch.nn.Module, name: str) -> None:
        """Time every forward call of `module` as section `name`."""
        pre = module.register_forward_pre_hook(lambda *_: self.enter(name))
        post = module.register_forward_hook(lambda *_: self.exit(name))
        self._undo += [pre.remove, post.remove]

    def wrap_matcher(self, criterion: torch.nn.Module) -> None:
        """Time the criterion's matcher calls (a plain callable, not a module) as section "matcher"."""
        inner = criterion.matcher

        def timed(*args: Any, **kwargs: Any) -> Any:
            self.enter("matcher")
            try:
                return inner(*args, **kwargs)
            finally:
                self.exit("matcher")

        criterion.matcher = timed
        self._undo.append(lambda: setattr(criterion, "matcher", inner))

    def reset(self) -> None:
        self.seconds.clear()

    def remove(self) -> None:
        for undo in self._undo:
            undo()
        self._undo.clear()


def conv3x3_gflops(device: torch.device, channels: int = 256, size: int = 64, batch: int = 2,
                   reps: int = 10) -> float:
    """This machine's fp32 rate (GFLOP/s) of a 3x3 convolution (stride 1, padding 1), measured as
    `speed.matmul_gflops` measures matmuls: median of `reps` after 3 warm-ups."""
    x = torch.randn(batch, channels, size, size, device=device)
    w = torch.randn(channels, channels, 3, 3, device=device)
    flops = conv_flop_count(list(x.shape), list(w.shape), list(x.shape))
    with torch.no_grad():
        seconds = common.median_seconds(lambda: torch.nn.functional.conv2d(x, w, padding=1), device, 3, reps)
    return flops / seconds / 1e9


def cycle(loader) -> Iterator:
    while True:
        yield from loader


def data_seconds(loader, device: torch.device, warmup: int, reps: int) -> float:
    """Median time to get one batch from `loader` (and move it to `device`)."""
    batches = cycle(loader)
    return common.median_seconds(lambda: next(batches).to(device), device, warmup, reps)


def train_once(c: peers.Contender, batch, params: list[torch.Tensor], sections: Sections,
               device: torch.device) -> tuple[float, dict[str, float]]:
    """One training step (speed.py's): its seconds, and the seconds of each part but data loading ("other" =
    the forward's time outside the timed sections)."""
    sections.reset()
    t0 = common.now(device)
    c.model.train()
    loss = c.loss(batch)
    t1 = common.now(device)
    c.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    t2 = common.now(device)
    torch.nn.utils.clip_grad_norm_(params, c.clip if c.clip > 0 else float("inf"))
    c.optimizer.step()
    t3 = common.now(device)
    s = sections.seconds
    parts = {name: s[name] for name in COMPONENTS}
    parts.update(matcher=s["matcher"], loss=s["criterion"] - s["matcher"])
    parts["other"] = max(0.0, (t1 - t0) - sum(parts.values()))
    parts.update(backward=t2 - t1, optimizer=t3 - t2)
    return t3 - t0, parts


def infer_once(c: peers.Contender, one, sections: Sections, device: torch.device) -> tuple[float, dict[str, float]]:
    """One batch-1 inference (forward + post-processing): its seconds, and those of each part but data loading."""
    sections.reset()
    t0 = common.now(device)
    c.model.eval()
    with torch.no_grad():
        c.detect(one)
    t1 = common.now(device)
    parts = {name: sections.seconds[name] for name in COMPONENTS}
    parts["other"] = max(0.0, (t1 - t0) - sum(parts.values()))
    return t1 - t0, parts


def median_split(run: Callable[[], tuple[float, dict[str, float]]], warmup: int,
                 reps: int) -> tuple[float, dict[str, float]]:
    """The time and parts of the rep whose time is the median of `reps` (after `warmup` untimed runs)."""
    for _ in range(warmup):
        run()
    runs = sorted((run() for _ in range(reps)), key=lambda r: r[0])
    return runs[(len(runs) - 1) // 2]


def split_report(seconds: float, parts: dict[str, float], order: tuple[str, ...]) -> dict[str, Any]:
    """Wall time = the measured step (or inference) + data loading; each part's share of it. The parts are timed
    on their own, so their shares add up to 100% only when they cover the step once and only once."""
    wall = seconds + parts["data"]
    return {"wall_ms": wall * 1000, "compute_ms": seconds * 1000,
            "parts_ms": {k: parts[k] * 1000 for k in order}, "shares": {k: 100 * parts[k] / wall for k in order}}


def profiled(fn: Callable[[], Any], device: torch.device) -> Any:
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        fn()
    return prof


def top_ops(prof, n: int = TOP_OPS) -> list[dict[str, Any]]:
    """The `n` ops with the most self CPU time, with their share of all self CPU time in the profiled run."""
    avgs = list(prof.key_averages())
    total = sum(a.self_cpu_time_total for a in avgs) or 1.0
    avgs.sort(key=lambda a: a.self_cpu_time_total, reverse=True)
    return [{"op": a.key, "calls": a.count, "self_ms": a.self_cpu_time_total / 1000,
             "share": 100 * a.self_cpu_time_total / total} for a in avgs[:n]]


def backward_by_part(prof) -> dict[str, float]:
    """Shares (%) of the profiled backward CPU time by the forward part that created each backward node (linked
    by autograd sequence number); the criterion's nodes count as "loss", nodes from no part as "other"."""
    events = prof.events()
    owner: dict[int, str] = {}

    def claim(event, part: str) -> None:
        if event.sequence_nr >= 0:
            owner.setdefault(event.sequence_nr, part)
        for child in event.cpu_children:
            claim(child, part)

    for e in events:
        if e.name.startswith(PREFIX):
            part = e.name[len(PREFIX):]
            claim(e, "loss" if part == "criterion" else part)
    us: dict[str, float] = dict.fromkeys((*COMPONENTS, "loss", "other"), 0.0)
    for e in events:
        if e.name.startswith(BACKWARD_NODE):
            us[owner.get(e.sequence_nr, "other") if e.sequence_nr >= 0 else "other"] += e.cpu_time_total
    total = sum(us.values()) or 1.0
    return {k: 100 * v / total for k, v in us.items()}


def kept_by_part(c: peers.Contender, batch, sections: Sections) -> dict[str, float]:
    """MB that one training forward (with the loss) keeps for its backward, by the part whose forward saved it
    (`torch.autograd.graph.saved_tensors_hooks`): each storage counted once, where first saved; the parameters
    (held anyway) left out. The graph is dropped without a backward."""
    seen = {p.untyped_storage().data_ptr() for p in c.model.parameters()}
    kept = dict.fromkeys((*COMPONENTS, "loss", "other"), 0.0)

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen:  # saved storages live as long as the graph: no address is reused
            seen.add(storage.data_ptr())
            part = sections.current()
            kept["loss" if part in ("criterion", "matcher") else part] += storage.nbytes() / 2**20
        return t

    c.model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = c.loss(batch)
    del loss
    return kept


def measure(preset: str, name: str, args: argparse.Namespace, data: Path, device: torch.device,
            peaks: dict[str, float]) -> dict[str, Any]:
    """One contender at one preset."""
    cfg = common.make_config(preset, ["data.num_workers=0"])
    amp = effective_amp(device, args.amp or cfg.train.amp)
    cfg.train.amp = amp
    common.seed_everything(0)
    c = peers.build(name, cfg, num_classes=6, batch_size=args.batch)
    c.model.to(device)
    amp = effective_amp(device, c.settings["amp"])  # an ablation may set its own (fp32)
    train_set, val_set = common.datasets(data, cfg)
    batch = speed.fixed_batch(cfg, data, args.batch, device)
    one = speed.fixed_batch(cfg, data, 1, device)
    params = [p for g in c.optimizer.param_groups for p in g["params"]]
    sections = Sections(device)
    for part in COMPONENTS:
        if getattr(c.model, part) is not None:
            sections.hook(getattr(c.model, part), part)
    sections.hook(c.criterion, "criterion")
    sections.wrap_matcher(c.criterion)
    try:
        train_data = data_seconds(common.loader(train_set, cfg, True, args.batch, 0), device, 1, args.reps)
        train = median_split(lambda: train_once(c, batch, params, sections, device), args.warmup, args.reps)
        prof = profiled(lambda: train_once(c, batch, params, sections, device), device)
        train_top, backward = top_ops(prof), backward_by_part(prof)
        kept = kept_by_part(c, batch, sections)
        infer_data = data_seconds(common.loader(val_set, cfg, False, 1, 0), device, 1, args.reps)
        infer = median_split(lambda: infer_once(c, one, sections, device), args.warmup, args.reps)
        infer_top = top_ops(profiled(lambda: infer_once(c, one, sections, device), device))
    finally:
        sections.remove()
    with flop_counter() as counter:
        train_once(c, batch, params, sections, device)
    train_flops = counter.get_total_flops()
    c.model.eval()  # grad mode: as speed.py, so that FlopCounterMode sees attention's unfused path
    with torch.enable_grad(), flop_counter() as counter:
        c.detect(one)
    infer_flops = counter.get_total_flops()
    out = {"preset": preset, "name": name, "label": peers.LABELS[name], "amp": amp, "batch": args.batch,
           "image_size": list(batch.images.shape[-2:]), "params": c.params()}
    for key, parts, data_s, order, top, flops in (
            ("train", train, train_data, TRAIN_PARTS, train_top, train_flops),
            ("infer", infer, infer_data, INFER_PARTS, infer_top, infer_flops)):
        rep = split_report(parts[0], {**parts[1], "data": data_s}, order)
        rate = flops / 1e9 / (rep["compute_ms"] / 1000)
        rep.update(gflop=flops / 1e9, gflop_s=rate, of_matmul=100 * rate / peaks["matmul_gflops"],
                   of_conv3x3=100 * rate / peaks["conv3x3_gflops"], top_ops=top)
        out[key] = rep
    out["train"]["backward_by_part"] = backward
    out["train"]["kept_mb"] = kept
    return out


def markdown(report: dict[str, Any]) -> str:
    m, peaks = report["machine"], report["peaks"]
    lines = [f"{m['cpu']}, {m['threads']} threads, {m['device']}; fp32 matmul {peaks['matmul_gflops']:.0f} GFLOP/s, "
             f"fp32 3x3 conv {peaks['conv3x3_gflops']:.0f} GFLOP/s; torch {m['torch']}; {m['date']}; median of "
             f"{report['setup']['reps']} reps after {report['setup']['warmup']} warm-ups.", ""]
    for r in report["results"]:
        t, i = r["train"], r["infer"]
        lines += [f"## {r['preset']}: {r['label']} (`{r['name']}`)", "",
                  f"{r['image_size'][0]}x{r['image_size'][1]} px, training batch {r['batch']}, inference batch 1, "
                  f"amp {r['amp']}, {r['params'] / 1e6:.2f} M parameters.", "",
                  "| part | train step (ms) | share | inference b1 (ms) | share |", "|---|---|---|---|---|"]
        for part in TRAIN_PARTS:
            inf = (f"{i['parts_ms'][part]:.1f} | {i['shares'][part]:.1f}%" if part in i["parts_ms"] else "- | -")
            lines.append(f"| {PART_LABELS[part]} | {t['parts_ms'][part]:.1f} | {t['shares'][part]:.1f}% | {inf} |")
        lines += [f"| **wall** | **{t['wall_ms']:.1f}** | 100% | **{i['wall_ms']:.1f}** | 100% |", "",
                  "Backward by component (share of the profiled backward; ms = that share of the timed backward):",
                  "", "| component | share | ms |", "|---|---|---|"]
        for part, share in t["backward_by_part"].items():
            label = BACKWARD_OTHER if part == "other" else PART_LABELS[part]
            lines.append(f"| {label} | {share:.1f}% | {share * t['parts_ms']['backward'] / 100:.1f} |")
        kept = t["kept_mb"]
        lines += ["", "Kept for the backward by component (MB the training forward's autograd graph holds, parameters "
                  "left out):", "", "| component | MB | share |", "|---|---|---|"]
        total = sum(kept.values()) or 1.0
        lines += [f"| {'other' if part == 'other' else PART_LABELS[part]} | {mb:.1f} | {100 * mb / total:.1f}% |"
                  for part, mb in kept.items()]
        lines.append(f"| **total** | **{total:.1f}** | 100% |")
        lines += ["", "| | GFLOP | GFLOP/s (compute time) | of fp32 matmul | of fp32 3x3 conv |",
                  "|---|---|---|---|---|"]
        for key, label in (("train", "train step"), ("infer", "inference b1")):
            x = r[key]
            lines.append(f"| {label} | {x['gflop']:.2f} | {x['gflop_s']:.1f} | {x['of_matmul']:.1f}% | "
                         f"{x['of_conv3x3']:.1f}% |")
        for key, label in (("train", "training step"), ("infer", "batch-1 inference")):
            lines += ["", f"Top {TOP_OPS} ops by self CPU time, {label} (one profiled run):", "",
                      "| op | calls | self ms | share |", "|---|---|---|---|"]
            lines += [f"| `{o['op']}` | {o['calls']} | {o['self_ms']:.1f} | {o['share']:.1f}% |"
                      for o in r[key]["top_ops"]]
        lines.append("")
    return "\n".join(lines)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", choices=list(PRESETS), default=["cpu_small"])
    p.add_argument("--only", nargs="+", choices=peers.OURS, default=["faithful", "dynamic_detr"],
                   help="contenders of ours (the recipe ladder and ablations of benchmarks/peers.py)")
    p.add_argument("--batch", type=int, default=4, help="training batch (inference is batch 1)")
    p.add_argument("--amp", choices=["none", "bf16"],
                   help="autocast (default: the preset's; bf16 runs as float32 where the CPU only emulates it)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--device", default="auto")
    p.add_argument("--work", type=Path, default=common.ROOT / "runs" / "bench")
    p.add_argument("--out", type=Path, default=common.RESULTS / "profile")
    p.add_argument("--quick", action="store_true", help="smoke run: cpu_tiny, batch 2, 1 rep")
    args = p.parse_args(argv)
    if args.quick:
        args.presets, args.batch, args.warmup, args.reps = ["cpu_tiny"], 2, 1, 1
    if args.batch < 1 or args.reps < 1 or args.warmup < 0:
        p.error("--batch and --reps must be at least 1, --warmup at least 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    device = common.pick_device(args.device)
    try:
        images = max(8, args.batch * (args.reps + 2), args.reps + 2)
        data = common.synthetic_data(args.work, images, images, image_size=320, seed=0)
        peaks = {"matmul_gflops": speed.matmul_gflops(device), "conv3x3_gflops": conv3x3_gflops(device)}
        print(f"fp32 matmul {peaks['matmul_gflops']:.0f}, 3x3 conv {peaks['conv3x3_gflops']:.0f} GFLOP/s on {device}",
              flush=True)
        rows = []
        for preset in args.presets:
            for name in args.only:
                rows.append(measure(preset, name, args, data, device, peaks))
                t, i = rows[-1]["train"], rows[-1]["infer"]
                print(f"{preset:10s} {name:14s} train step {t['wall_ms']:8.1f} ms, inference b1 {i['wall_ms']:7.1f} ms",
                      flush=True)
    except UserError as e:
        raise SystemExit(f"profile_step: {e}") from None
    report = {"machine": common.machine(device), "peaks": peaks,
              "setup": {"presets": args.presets, "only": args.only, "batch": args.batch, "amp": args.amp,
                        "warmup": args.warmup, "reps": args.reps}, "results": rows}
    common.write_results(args.out, "profile", report, markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
