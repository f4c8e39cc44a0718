"""Export to ONNX: `export_onnx` (the `dac-codec export` command) writes a model's encoder and decoder as ONNX graphs
that ONNX Runtime and transformers.js run without PyTorch, whole-signal and as streams with explicit state;
`StepStream` drives the stream graphs over a signal that arrives in pieces."""

from .onnx import StepStream, export_onnx

__all__ = ["StepStream", "export_onnx"]
