"""Deployment: ONNX export (native `DeformConv` or portable `GridSample`), onnxruntime parity check."""
