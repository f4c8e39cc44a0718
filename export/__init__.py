"""Export to ONNX: `export_onnx` (the `dac-codec export` command) writes a model's encoder and decoder as ONNX graphs
that ONNX Runtime runs without PyTorch."""

from .onnx import export_onnx

__all__ = ["export_onnx"]
