"""A model's encoder and decoder as ONNX graphs:

    DIR/onnx/encoder_model.onnx   input_values (batch, 1, samples) float32 -> audio_codes (batch, n_codebooks, frames)
    DIR/onnx/decoder_model.onnx   audio_codes (batch, n_codebooks, frames) int64 -> audio_values (batch, 1, samples)
    DIR/onnx/*_fp16.onnx, *_int8.onnx   their float16 and int8-weight variants
    DIR/onnx/encoder_step.onnx, decoder_step.onnx   the same as fixed-block streams with explicit state
    DIR/config.json               the model's configuration, as transformers.js reads it, with the streams' section

The names are those transformers.js gives DAC's inputs and outputs. The graphs are the model's own `graphs()` and
`step_graphs()`, exported by torch's ONNX exporter (torch.export, then onnxscript); `run_onnx` runs a whole-signal
graph in ONNX Runtime and `StepStream` drives a step graph over a signal that arrives in pieces.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import warnings
from pathlib import Path
from typing import Union

import numpy as np
import torch

OPSET = 18
NEEDS = ("onnx", "onnxruntime", "onnxscript", "onnxconverter_common")
# The whole-signal graphs' reduced-precision variants, named as transformers.js' `dtype` option finds them
VARIANTS = {"fp16": "_fp16", "int8": "_int8"}
STEP_FRAMES = 4  # frames per call of the step graphs


def check_installed() -> None:
    missing = [name for name in NEEDS if importlib.util.find_spec(name) is None]
    if missing:
        raise ValueError(f"Exporting needs {', '.join(missing)}: pip install 'dac-codec[onnx]'")


def export_onnx(model, output: Union[str, Path], block_frames: int = STEP_FRAMES, int8: bool = False) -> Path:
    """Writes `model`'s graphs (`export_graphs`) to `output/onnx` and a config.json that transformers.js reads for
    DAC (model type "dac", the step graphs' block, delay and state size under "streaming") to `output`; returns
    `output/onnx`. The model is left on the CPU in float32, in eval mode.

    Raises:
        ValueError: The exporter's packages are missing (the message names the pip command).
    """
    output = Path(output)
    streaming = export_graphs(model, output / "onnx", block_frames, int8)
    config = model.config.to_dict()
    config.pop("auto_map", None)
    config.update(model_type="dac", architectures=["DacModel"], hop_length=model.hop_length, streaming=streaming)
    (output / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return output / "onnx"


def export_graphs(model, folder: Union[str, Path], block_frames: int = STEP_FRAMES, int8: bool = False) -> dict:
    """Writes into `folder` the whole-signal graphs encoder_model.onnx and decoder_model.onnx (dynamic batch and
    length) with their fp16 variants (and int8 ones with `int8`: on CPU they run slower than fp32 and change many
    codes, see the README), and the step graphs encoder_step.onnx and decoder_step.onnx
    (`block_frames` frames a call, dynamic batch). Returns the config's "streaming" section: each step graph's
    `spec()`."""
    check_installed()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = model.float().eval().cpu()
    hop, n_codebooks = model.hop_length, model.config.n_codebooks
    encoder, decoder = model.graphs()
    batch = torch.export.Dim("batch")
    samples = torch.export.Dim("samples", min=hop, max=2**31 - 1)
    frames = torch.export.Dim("frames", min=1, max=2**31 // hop)
    _export(encoder, (torch.zeros(2, 1, 8 * hop),), folder / "encoder_model.onnx", ["input_values"],
            ["audio_codes"], ({0: batch, 2: samples},))
    _export(decoder, (torch.zeros(2, n_codebooks, 8, dtype=torch.long),), folder / "decoder_model.onnx",
            ["audio_codes"], ["audio_values"], ({0: batch, 2: frames},))
    for name in ("encoder_model", "decoder_model"):
        write_variants(folder / f"{name}.onnx", int8)

    streaming = {}
    for graph, name, inputs, outputs in zip(model.step_graphs(block_frames), ("encoder", "decoder"),
                                            ("input_values", "audio_codes"), ("audio_codes", "audio_values")):
        state, position = graph.start(2)
        channels = 1 if name == "encoder" else n_codebooks
        block = torch.zeros(2, channels, graph.block, dtype=getattr(torch, graph.input_type))
        _export(graph, (block, torch.tensor([graph.block]), state, position), folder / f"{name}_step.onnx",
                [inputs, "input_length", "state", "position"], [outputs, "next_state", "next_position"],
                ({0: batch}, None, {0: batch}, None))
        streaming[name] = graph.spec()
    return streaming


def write_variants(path: Path, int8: bool = False) -> None:
    """Beside the float32 graph `path`: NAME_fp16.onnx (float16 weights and activations, float32 inputs and outputs)
    and with `int8` NAME_int8.onnx (int8 weights, activations quantized on the fly: ONNX Runtime's dynamic
    quantization). The quantizer (the nearest-code search and the codebook lookup) stays float32 in both: it decides
    the codes and costs nothing."""
    import onnx
    from onnxconverter_common import float16
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(path))
    keep = [node.name for node in graph.graph.node if any(
        prop.key == "pkg.torch.onnx.name_scopes" and "'quantizer'" in prop.value for prop in node.metadata_props)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constants below float16's range (the norm's epsilon) become its smallest
        half = float16.convert_float_to_float16(graph, keep_io_types=True, node_block_list=keep)
    onnx.save(half, str(path.with_name(f"{path.stem}{VARIANTS['fp16']}.onnx")))
    if not int8:
        return
    root, level = logging.getLogger(), logging.getLogger().level
    root.setLevel(logging.ERROR)  # its advice to run ONNX Runtime's pre-processing first, for static quantization
    try:
        quantize_dynamic(str(path), str(path.with_name(f"{path.stem}{VARIANTS['int8']}.onnx")),
                         weight_type=QuantType.QInt8, nodes_to_exclude=keep)
    finally:
        root.setLevel(level)


def _export(graph, example: tuple, path: Path, inputs: list[str], outputs: list[str], shapes: tuple) -> None:
    exporter, level = logging.getLogger("torch.onnx"), logging.getLogger("torch.onnx").level
    exporter.setLevel(logging.ERROR)  # its notes on operators of packages it does not find, which we do not use
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(graph, example, dynamo=True, opset_version=OPSET, input_names=inputs,
                                        output_names=outputs, dynamic_shapes=shapes, verbose=False)
    finally:
        exporter.setLevel(level)
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
        self.dtype, self.output_dtype = np.dtype(spec["input_type"]), np.dtype(spec["output_type"])
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
            return np.zeros((self.state.shape[0], self.channels, 0), self.output_dtype)
        out = np.concatenate(outputs, axis=-1)
        first = self.emitted - out.shape[-1] - self.delay  # position of out's first row
        start = max(0, -first)
        stop = out.shape[-1] if total is None else max(start, total - first)
        return out[..., start:stop]
