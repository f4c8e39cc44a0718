"""A model's whole-signal encoder and decoder as ONNX graphs, with dynamic batch and length:

    DIR/onnx/encoder_model.onnx   input_values (batch, 1, samples) float32 -> audio_codes (batch, n_codebooks, frames)
    DIR/onnx/decoder_model.onnx   audio_codes (batch, n_codebooks, frames) int64 -> audio_values (batch, 1, samples)
    DIR/config.json               the model's configuration

The names are those transformers.js gives DAC's inputs and outputs. The graphs are the model's own `graphs()`,
exported by torch's ONNX exporter (torch.export, then onnxscript); `check_onnx` runs them in ONNX Runtime and compares
them with the model.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path
from typing import Union

import numpy as np
import torch

OPSET = 18
NEEDS = ("onnx", "onnxruntime", "onnxscript")


def check_installed() -> None:
    missing = [name for name in NEEDS if importlib.util.find_spec(name) is None]
    if missing:
        raise ValueError(f"Exporting needs {', '.join(missing)}: pip install 'dac-codec[onnx]'")


def export_onnx(model, output: Union[str, Path]) -> Path:
    """Writes `model`'s encoder and decoder graphs and its config to the folder `output`; returns `output/onnx`.
    The model is left on the CPU in float32, in eval mode.

    Raises:
        ValueError: The exporter's packages are missing (the message names the pip command).
    """
    check_installed()
    output = Path(output)
    folder = output / "onnx"
    folder.mkdir(parents=True, exist_ok=True)
    model = model.float().eval().cpu()
    encoder, decoder = model.graphs()
    hop = model.hop_length
    audio = torch.zeros(2, 1, 8 * hop)
    codes = torch.zeros(2, model.config.n_codebooks, 8, dtype=torch.long)
    batch = torch.export.Dim("batch")
    samples = torch.export.Dim("samples", min=hop, max=2**31 - 1)
    frames = torch.export.Dim("frames", min=1, max=2**31 // hop)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on operators it does not need
        for graph, example, name, inputs, outputs, shapes in (
                (encoder, audio, "encoder_model", ["input_values"], ["audio_codes"], {0: batch, 2: samples}),
                (decoder, codes, "decoder_model", ["audio_codes"], ["audio_values"], {0: batch, 2: frames})):
            program = torch.onnx.export(graph, (example,), dynamo=True, opset_version=OPSET, input_names=inputs,
                                        output_names=outputs, dynamic_shapes=({**shapes},), verbose=False)
            program.save(str(folder / f"{name}.onnx"))
    model.config.save_pretrained(output)
    return folder


def run_onnx(folder: Union[str, Path], name: str, value: np.ndarray) -> np.ndarray:
    """Runs one exported graph ("encoder_model" or "decoder_model") on its one input in ONNX Runtime (CPU)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(Path(folder) / f"{name}.onnx"), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: value})[0]
