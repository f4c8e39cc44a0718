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
import json
import warnings
from pathlib import Path
from typing import Union

import numpy as np
import torch

OPSET = 18
NEEDS = ("onnx", "onnxruntime", "onnxscript")
STEP_FRAMES = 4  # frames per call of the step graphs


def check_installed() -> None:
    missing = [name for name in NEEDS if importlib.util.find_spec(name) is None]
    if missing:
        raise ValueError(f"Exporting needs {', '.join(missing)}: pip install 'dac-codec[onnx]'")


def export_onnx(model, output: Union[str, Path], block_frames: int = STEP_FRAMES) -> Path:
    """Writes `model`'s graphs and a config that transformers.js reads to the folder `output`; returns
    `output/onnx`. The model is left on the CPU in float32, in eval mode.

    Raises:
        ValueError: The exporter's packages are missing (the message names the pip command).
    """
    check_installed()
    output = Path(output)
    folder = output / "onnx"
    folder.mkdir(parents=True, exist_ok=True)
    model = model.float().eval().cpu()
    hop, n_codebooks = model.hop_length, model.config.n_codebooks
    encoder, decoder = model.graphs()
    audio = torch.zeros(2, 1, 8 * hop)
    codes = torch.zeros(2, n_codebooks, 8, dtype=torch.long)
    batch = torch.export.Dim("batch")
    samples = torch.export.Dim("samples", min=hop, max=2**31 - 1)
    frames = torch.export.Dim("frames", min=1, max=2**31 // hop)
    _export(encoder, (audio,), folder / "encoder_model.onnx", ["input_values"], ["audio_codes"],
            ({0: batch, 2: samples},))
    _export(decoder, (codes,), folder / "decoder_model.onnx", ["audio_codes"], ["audio_values"],
            ({0: batch, 2: frames},))

    streaming = {}
    for graph, name, inputs, outputs in zip(model.step_graphs(block_frames), ("encoder", "decoder"),
                                            ("input_values", "audio_codes"), ("audio_codes", "audio_values")):
        state, position = graph.start(2)
        block = audio[..., : graph.block] if name == "encoder" else codes[..., : graph.block]
        _export(graph, (block, torch.tensor([graph.block]), state, position), folder / f"{name}_step.onnx",
                [inputs, "input_length", "state", "position"], [outputs, "next_state", "next_position"],
                ({0: batch}, None, {0: batch}, None))
        streaming[name] = {"block": graph.block, "output_block": graph.output_block, "delay": graph.delay,
                           "trim": graph.output_block - graph.output_length(graph.block),
                           "state_size": graph.state_size, "output_channels": graph.output_channels,
                           "input_type": "float32" if name == "encoder" else "int64"}
    write_config(model, output, streaming)
    return folder


def write_config(model, output: Path, streaming: dict) -> None:
    """`output/config.json`: the model's configuration as transformers.js reads DAC's (model type "dac"), with the
    step graphs' block, delay and state size under "streaming"."""
    config = model.config.to_dict()
    config.pop("auto_map", None)
    config.update(model_type="dac", architectures=["DacModel"], hop_length=model.hop_length, streaming=streaming)
    (output / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _export(graph, example: tuple, path: Path, inputs: list[str], outputs: list[str], shapes: tuple) -> None:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on operators it does not need
        program = torch.onnx.export(graph, example, dynamo=True, opset_version=OPSET, input_names=inputs,
                                    output_names=outputs, dynamic_shapes=shapes, verbose=False)
    program.save(str(path))


def run_onnx(folder: Union[str, Path], name: str, value: np.ndarray) -> np.ndarray:
    """Runs one exported graph ("encoder_model" or "decoder_model") on its one input in ONNX Runtime (CPU)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(Path(folder) / f"{name}.onnx"), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: value})[0]


class StepStream:
    """Runs a step graph (`DacModel.step_graphs`, exported as encoder_step.onnx / decoder_step.onnx) over a signal
    that arrives in pieces of any length, and gives what the whole-signal graph gives, piece by piece:

        stream = StepStream(step, spec, batch)
        outputs = [stream.feed(piece) for piece in pieces] + [stream.finish()]

    `step(block, input_length, state, position) -> (outputs, state, position)` runs one call of the graph on numpy
    arrays; `spec` is its entry of the config's "streaming" section. Pieces are (batch, channels, t) arrays (t
    samples of audio or t frames of codes); each output holds the rows that the input so far determines.
    """

    def __init__(self, step, spec: dict, batch: int):
        self.step, self.block, self.out_block = step, spec["block"], spec["output_block"]
        self.delay, self.trim, self.channels = spec["delay"], spec["trim"], spec["output_channels"]
        self.dtype = np.dtype(spec["input_type"])
        self.state = np.zeros((batch, spec["state_size"]), np.float32)
        self.position = np.array([0, -1], np.int64)
        self.pending: list[np.ndarray] = []
        self.received = self.emitted = 0  # input rows taken, output rows the graph has given

    def feed(self, piece: np.ndarray) -> np.ndarray:
        self.pending.append(np.asarray(piece, self.dtype))
        self.received += piece.shape[-1]
        buffered = np.concatenate(self.pending, axis=-1)
        calls = buffered.shape[-1] // self.block
        outputs = [self._call(buffered[..., i * self.block : (i + 1) * self.block], self.block) for i in range(calls)]
        self.pending = [buffered[..., calls * self.block :]]
        return self._keep(outputs, None)

    def finish(self) -> np.ndarray:
        """The rest of the output, once the signal has ended."""
        rest = np.concatenate(self.pending, axis=-1)
        block = np.zeros((*rest.shape[:-1], self.block), self.dtype)
        block[..., : rest.shape[-1]] = rest
        total = -(-self.received * self.out_block // self.block) - self.trim  # the whole-signal output's length
        outputs = [self._call(block, rest.shape[-1])]
        while self.emitted < self.delay + total:
            outputs.append(self._call(np.zeros_like(block), 0))
        return self._keep(outputs, total)

    def _call(self, block: np.ndarray, length: int) -> np.ndarray:
        out, self.state, self.position = self.step(block, np.array([length], np.int64), self.state, self.position)
        self.emitted += out.shape[-1]
        return out

    def _keep(self, outputs: list[np.ndarray], total) -> np.ndarray:
        """The outputs' rows at positions [0, total) (from 0 on while the end is unknown)."""
        if not outputs:
            return np.zeros((self.state.shape[0], self.channels, 0), np.float32 if self.channels == 1 else np.int64)
        out = np.concatenate(outputs, axis=-1)
        first = self.emitted - out.shape[-1] - self.delay  # position of out's first row
        start = max(0, -first)
        stop = out.shape[-1] if total is None else max(start, total - first)
        return out[..., start:stop]
