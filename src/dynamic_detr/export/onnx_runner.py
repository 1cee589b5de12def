"""Run an exported `model.onnx` with onnxruntime where the CLI runs a PyTorch checkpoint (`predict`, `eval`).

`OnnxDetector` quacks like `DynamicDETR` for inference: `detector(images, masks)` takes the batch PyTorch eval
builds (the config's eval resize, padded bottom / right, masks True on padding) and `detector.postprocess(
outputs, orig_sizes)` returns the same detections (boxes xyxy in original pixels, scores, dataset category
ids). So `predict/predictor.py` and `evaluate/inference.py` run it unchanged, with the exact pre-processing of the
PyTorch path. The config (classes, category ids, eval sizes) comes from the graph's metadata, written by
`export_onnx`. Each image of a batch is placed on the graph's fixed canvas (`letterbox`) with its valid size;
a graph with a fixed batch dimension runs in chunks of that size, the last one filled with blank images.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..config import Config
from ..errors import CheckpointError, ConfigError, UserError
from .onnx_export import INPUT_NAMES, METADATA_FORMAT, METADATA_KEY, letterbox


def is_onnx(path: str | Path) -> bool:
    """Whether `--checkpoint` names an exported graph (by its suffix) rather than a PyTorch model."""
    return Path(path).suffix.lower() == ".onnx"


class OnnxDetector:
    """An exported graph on onnxruntime (CPU), with its config read from the graph's metadata.

    Raises UserError (one line naming the file) when onnxruntime is not installed, the file is missing or is
    not a valid ONNX graph, or the graph has no dynamic-detr metadata (exported by an older version)."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise UserError(f"{path}: running an .onnx needs onnxruntime, which is not installed: "
                            "pip install 'dynamic-detr[export]'") from None
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"{self.path}: no such file")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.log_severity_level = 3  # errors only: its warnings are about the runtime's own choices
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own classes (InvalidProtobuf, Fail, ...)
            detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"{self.path}: not a valid ONNX graph ({detail[:200]})") from None
        meta = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        names = [i.name for i in self.session.get_inputs()]
        if meta is None or names != INPUT_NAMES:
            raise CheckpointError(f"{self.path}: this graph has no dynamic-detr metadata (exported by an older "
                                  "version, or not by dynamic-detr): export it again with `dynamic-detr export`")
        self.meta = _parse(meta, self.path)
        try:
            self.config = Config.from_dict(self.meta["config"], source=f"{self.path} (metadata config)")
        except ConfigError as e:
            raise CheckpointError(str(e)) from None
        self.canvas = (int(self.meta["input"]["height"]), int(self.meta["input"]["width"]))
        self.top_k = int(self.meta["top_k"])
        declared = self.session.get_inputs()[0].shape[2:]  # the traced graph's fixed H, W
        if all(isinstance(v, int) for v in declared) and tuple(declared) != self.canvas:
            raise CheckpointError(f"{self.path}: the metadata's input size {self.canvas[0]}x{self.canvas[1]} is not "
                                  f"the graph's {declared[0]}x{declared[1]}: export it again with `dynamic-detr "
                                  "export`")
        batch = self.session.get_inputs()[0].shape[0]
        self.fixed_batch = batch if isinstance(batch, int) and batch > 0 else None
        """The graph's batch size when it is fixed (an export without --dynamic: 1), else None."""

    # ------------------------------------------------------------ the DynamicDETR inference interface
    def eval(self) -> OnnxDetector:
        return self

    def __call__(self, images: Tensor, masks: Tensor | None = None) -> dict[str, Tensor]:
        """A padded batch (images [B, 3, H, W] in [0, 1], masks [B, H, W] True = padding) -> what
        `postprocess` runs the graph on: each image's valid region, placed on the graph's canvas."""
        from ..model.detector import valid_sizes

        images = images.detach().float().cpu()
        if masks is None:
            hw = [(images.shape[-2], images.shape[-1])] * images.shape[0]
        else:
            hw = [(int(h), int(w)) for h, w in valid_sizes(masks.cpu()).tolist()]
        canvas, valid = letterbox([img[:, :h, :w] for img, (h, w) in zip(images, hw, strict=True)], self.canvas)
        return {"images": canvas, "valid_sizes": valid}

    def postprocess(self, outputs: dict[str, Any], orig_sizes: Tensor, top_k: int = 100) -> list[dict[str, Tensor]]:
        """Run the graph -> per image {"boxes": [k, 4] xyxy original pixels, "scores": [k], "labels": [k] dataset
        category ids}, highest score first; k = min(top_k, the graph's top-K)."""
        images, valid = outputs["images"].float(), outputs["valid_sizes"].to(torch.int64)  # eval casts to float
        orig = torch.as_tensor(orig_sizes).detach().cpu().to(torch.int64).reshape(-1, 2)
        step = self.fixed_batch or max(1, len(images))
        results: list[dict[str, Tensor]] = []
        for start in range(0, len(images), step):
            n = min(step, len(images) - start)
            feed = [images[start:start + n], valid[start:start + n], orig[start:start + n]]
            if self.fixed_batch and n < self.fixed_batch:  # fill a fixed batch with blank, whole-canvas images
                fill = self.fixed_batch - n
                blank = [torch.zeros(fill, *images.shape[1:]), torch.tensor([list(self.canvas)] * fill),
                         torch.tensor([list(self.canvas)] * fill)]
                feed = [torch.cat([a, b]) for a, b in zip(feed, blank, strict=True)]
            boxes, scores, labels = self.session.run(None, {name: t.numpy() for name, t in
                                                            zip(INPUT_NAMES, feed, strict=True)})
            for i in range(n):
                results.append({"boxes": torch.from_numpy(boxes[i, :top_k]),
                                "scores": torch.from_numpy(scores[i, :top_k]),
                                "labels": torch.from_numpy(labels[i, :top_k]).to(torch.int64)})
        return results


MAX_METADATA_SIZE = 16384
"""Largest canvas side and top-k a graph's metadata may name (it is read from an untrusted file)."""


def _parse(text: str, path: Path) -> dict[str, Any]:
    """The graph's metadata JSON, checked: format, letterbox layout, a config mapping, sizes in 1..16384."""
    try:
        meta = json.loads(text)
        if meta.get("format") != METADATA_FORMAT:
            raise CheckpointError(f"{path}: graph metadata format {meta.get('format')!r} is not the one this "
                                  f"version reads ({METADATA_FORMAT}): export it again with `dynamic-detr export`")
        if meta["input"]["layout"] != "letterbox" or not isinstance(meta["config"], dict):
            raise KeyError("input")
        sizes = int(meta["input"]["height"]), int(meta["input"]["width"]), int(meta["top_k"])
        if not all(1 <= v <= MAX_METADATA_SIZE for v in sizes):  # untrusted: never a huge canvas allocation
            raise ValueError("size out of range")
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError, RecursionError, OverflowError):
        raise CheckpointError(f"{path}: malformed dynamic-detr metadata in this graph: export it again with "
                              "`dynamic-detr export`") from None
    return meta


def load_onnx(path: str | Path) -> tuple[OnnxDetector, Config]:
    """(detector, config) from an exported graph, as `model.loading.load_model` gives them from a checkpoint."""
    detector = OnnxDetector(path)
    return detector, detector.config
