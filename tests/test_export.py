"""ONNX export: the whole-signal encoder and decoder graphs of each geometry run in ONNX Runtime with any batch and
length, and give our codes and audio."""

import json
import random
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from dac_codec.export import export_onnx
from dac_codec.export.onnx import StepStream, run_onnx

from conftest import GEOMETRIES, tiny_model

pytest.importorskip("onnxruntime", reason="the onnx extra: pip install 'dac-codec[onnx]'")
AUDIO_TOLERANCE = 1e-4  # of the largest sample: float32 kernels of two runtimes, summed in other orders


@pytest.fixture(scope="module", params=list(GEOMETRIES))
def exported(request, tmp_path_factory):
    model = tiny_model(request.param)
    folder = export_onnx(model, tmp_path_factory.mktemp("onnx") / request.param)
    return model, folder


@pytest.mark.parametrize("batch, seconds", [(1, 1.0), (3, 0.731)])
def test_onnx_runtime_gives_our_codes_and_audio(exported, batch, seconds):
    model, folder = exported
    rate = model.config.sampling_rate
    audio = 0.3 * torch.randn(batch, 1, int(seconds * rate), generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        codes = model.encode(audio, rate, chunk_size_in_sec=0).codes
        expected = model.decode(s=codes, chunk_size=0)
    ours = run_onnx(folder, "encoder_model", audio.numpy())
    assert ours.shape == tuple(codes.shape)
    assert (ours != codes.numpy()).mean() <= 0.001  # near-ties of the nearest-code search may flip
    decoded = run_onnx(folder, "decoder_model", codes.numpy())
    assert decoded.shape == tuple(expected.shape)
    assert np.abs(decoded - expected.numpy()).max() <= AUDIO_TOLERANCE * np.abs(expected.numpy()).max()


def onnx_step(folder, name):
    """An exported step graph as the numpy function that `StepStream` calls."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(folder / f"{name}_step.onnx"), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return lambda *arrays: session.run(None, dict(zip(names, arrays)))


def test_the_step_graphs_stream_the_whole_signal_codes_and_audio(exported):
    """encoder_step.onnx and decoder_step.onnx, driven at random splits of signals of random lengths, give the
    whole-signal codes (identical) and audio (1e-5 of the peak: the same sums as whole-signal decoding, taken in
    windows of the stream's blocks)."""
    model, folder = exported
    spec = json.loads((folder.parent / "config.json").read_text())["streaming"]
    rng, hop = random.Random(0), model.hop_length
    for length in (hop * spec["decoder"]["block"] * 2, rng.randrange(1, 30 * hop)):
        audio = 0.3 * torch.randn(2, 1, length, generator=torch.Generator().manual_seed(length))
        with torch.no_grad():
            codes = model.encode(audio, model.sampling_rate, chunk_size_in_sec=0).codes.numpy()
            expected = model.decode(s=torch.from_numpy(codes), chunk_size=0).numpy()
        for name, x, maximum in (("encoder", audio.numpy(), 3 * hop), ("decoder", codes, 5)):
            stream, outputs, start = StepStream(onnx_step(folder, name), spec[name], 2), [], 0
            while start < x.shape[-1]:
                n = rng.randrange(maximum + 1)
                outputs.append(stream.feed(x[..., start : start + n]))
                start += n
            streamed = np.concatenate([*outputs, stream.finish()], axis=-1)
            if name == "encoder":
                assert np.array_equal(streamed, codes)
            else:
                assert streamed.shape == expected.shape
                assert np.abs(streamed - expected).max() <= 1e-5 * np.abs(expected).max()


def test_the_folder_holds_the_graphs_and_the_config(exported):
    import onnx

    model, folder = exported
    assert json.loads((folder.parent / "config.json").read_text())["sampling_rate"] == model.config.sampling_rate
    for name, inputs, outputs in (("encoder_model", ["input_values"], ["audio_codes"]),
                                  ("decoder_model", ["audio_codes"], ["audio_values"])):
        graph = onnx.load(folder / f"{name}.onnx").graph
        assert [i.name for i in graph.input] == inputs and [o.name for o in graph.output] == outputs
        dims = graph.input[0].type.tensor_type.shape.dim
        assert dims[0].dim_param and dims[2].dim_param  # batch and length are dynamic


def test_the_export_command_writes_the_folder(tmp_path, capsys):
    from dac_codec.tools.cli import main
    from dac_codec.tools.convert import write_model_folder

    write_model_folder(tiny_model(), tmp_path / "model")
    assert main(["export", "--model", str(tmp_path / "model"), "--output", str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in (tmp_path / "out" / "onnx").glob("*.onnx")) == [
        "decoder_model.onnx", "decoder_step.onnx", "encoder_model.onnx", "encoder_step.onnx"]
    assert "wrote" in capsys.readouterr().err


WEB = Path(__file__).resolve().parents[1] / "export" / "web"


def node_modules():
    """The Node client's packages (scripts/setup_env.sh --test installs them where node is)."""
    if shutil.which("node") is None:
        pytest.skip("node is not installed: the transformers.js client cannot run")
    assert (WEB / "node_modules" / "@huggingface" / "transformers").is_dir(), \
        "export/web's npm packages are missing: bash scripts/setup_env.sh --test (or npm ci in export/web)"


def test_transformers_js_in_node_gives_our_codes_and_audio(exported, tmp_path):
    """The real client: export/web/dac.mjs loads the folder with transformers.js' DacModel (onnxruntime-node, local
    files), encodes and decodes a WAV, and streams it through the step graphs with the JavaScript driver."""
    import soundfile

    node_modules()
    model, folder = exported
    rate = model.config.sampling_rate
    soundfile.write(tmp_path / "in.wav", 0.3 * np.random.default_rng(1).standard_normal(int(0.77 * rate)), rate,
                    subtype="PCM_16")
    audio = torch.from_numpy(soundfile.read(tmp_path / "in.wav", dtype="float32")[0])[None, None]
    with torch.no_grad():
        codes = model.encode(audio, rate, chunk_size_in_sec=0).codes[0].numpy()
    subprocess.run(["node", str(WEB / "dac.mjs"), str(folder.parent), str(tmp_path / "in.wav"), str(tmp_path / "out")],
                   check=True, timeout=300, capture_output=True)
    result = json.loads((tmp_path / "out.json").read_text())
    ours = np.array(result["codes"]).reshape(result["dims"])[0]
    assert ours.shape == codes.shape
    # near-ties of the nearest-code search may flip between runtimes: 0.1% of codes, one in a short clip
    assert (ours != codes).sum() <= max(1, 0.001 * codes.size)
    assert np.array_equal(np.array(result["stream_codes"]), ours)  # the streams are exact in the client's runtime
    with torch.no_grad():
        theirs = model.decode(s=torch.from_numpy(ours)[None], chunk_size=0)[0, 0].numpy()
    for name in ("out.wav", "out.stream.wav"):
        decoded = soundfile.read(tmp_path / name, dtype="float32")[0]
        assert decoded.shape == theirs.shape
        assert np.abs(decoded - theirs).max() <= AUDIO_TOLERANCE * np.abs(theirs).max()
