"""ONNX export: the whole-signal encoder and decoder graphs of each geometry run in ONNX Runtime with any batch and
length, and give our codes and audio."""

import contextlib
import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from dac_codec.export import export_onnx
from dac_codec.export.onnx import run_onnx

from conftest import GEOMETRIES, stream_steps, tiny_model

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
            streamed = stream_steps(onnx_step(folder, name), spec[name], x, rng, maximum)
            if name == "encoder":
                assert np.array_equal(streamed, codes)
            else:
                assert streamed.shape == expected.shape
                assert np.abs(streamed - expected).max() <= 1e-5 * np.abs(expected).max()


def test_the_reduced_precision_variants_stay_close(exported, tmp_path):
    """The fp16 variants (always written) and the int8 ones (on request) run with float32 inputs and outputs; fp16
    keeps nearly every code and the audio's SNR against float32 high, int8 keeps most; the quantizer stays float32
    in both. (Their agreement on a full-size model is bench_onnx.py's, in the README.)"""
    import onnx

    from dac_codec.export.onnx import write_variants

    model, folder = exported
    shutil.copy(folder / "encoder_model.onnx", tmp_path / "encoder_model.onnx")
    shutil.copy(folder / "decoder_model.onnx", tmp_path / "decoder_model.onnx")
    for name in ("encoder_model", "decoder_model"):
        write_variants(tmp_path / f"{name}.onnx", int8=True)
    audio = 0.3 * torch.randn(1, 1, model.config.sampling_rate, generator=torch.Generator().manual_seed(3))
    codes = run_onnx(folder, "encoder_model", audio.numpy())
    decoded = run_onnx(folder, "decoder_model", codes)
    for suffix, codes_kept, snr_db in (("_fp16", 0.95, 40), ("_int8", 0.6, 10)):
        graph = onnx.load(tmp_path / f"encoder_model{suffix}.onnx").graph
        assert [i.type.tensor_type.elem_type for i in graph.input] == [onnx.TensorProto.FLOAT]
        assert (run_onnx(tmp_path, f"encoder_model{suffix}", audio.numpy()) == codes).mean() >= codes_kept
        ours = run_onnx(tmp_path, f"decoder_model{suffix}", codes)
        assert ours.dtype == np.float32
        assert 10 * np.log10(np.sum(decoded**2) / np.sum((ours - decoded) ** 2)) >= snr_db
    int8 = onnx.load(tmp_path / "decoder_model_int8.onnx").graph
    assert any(node.op_type in ("ConvInteger", "MatMulInteger") for node in int8.node)
    assert all("Integer" not in node.op_type for node in int8.node if "quantizer" in str(node.metadata_props))


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
        "decoder_model.onnx", "decoder_model_fp16.onnx", "decoder_step.onnx", "encoder_model.onnx",
        "encoder_model_fp16.onnx", "encoder_step.onnx"]
    assert "wrote" in capsys.readouterr().err


WEB = Path(__file__).resolve().parents[1] / "export" / "web"


def node_modules():
    """The Node client's packages (scripts/setup_env.sh --test installs them where node is)."""
    if shutil.which("node") is None:
        pytest.skip("node is not installed: the transformers.js client cannot run")
    assert (WEB / "node_modules" / "@huggingface" / "transformers").is_dir(), \
        "export/web's npm packages are missing: bash scripts/setup_env.sh --test (or npm ci in export/web)"


def noise_clip(model, path: Path, seconds: float, seed: int) -> np.ndarray:
    """Writes `seconds` of noise to the 16-bit WAV `path` at the model's rate; returns our codes of what it holds,
    (n_codebooks, frames)."""
    import soundfile

    rate = model.config.sampling_rate
    noise = 0.3 * np.random.default_rng(seed).standard_normal(int(seconds * rate))
    soundfile.write(path, noise, rate, subtype="PCM_16")
    audio = torch.from_numpy(soundfile.read(path, dtype="float32")[0])[None, None]
    with torch.no_grad():
        return model.encode(audio, rate, chunk_size_in_sec=0).codes[0].numpy()


def test_transformers_js_in_node_gives_our_codes_and_audio(exported, tmp_path):
    """The real client: export/web/dac.mjs loads the folder with transformers.js' DacModel (onnxruntime-node, local
    files), encodes and decodes a WAV, and streams it through the step graphs with the JavaScript driver."""
    import soundfile

    node_modules()
    model, folder = exported
    codes = noise_clip(model, tmp_path / "in.wav", 0.77, seed=1)
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


@contextlib.contextmanager
def serve(routes: dict):
    """A static HTTP server on 127.0.0.1 serving each URL prefix from its folder; yields its base URL."""
    import functools
    import http.server
    import threading

    class Handler(http.server.SimpleHTTPRequestHandler):
        extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".mjs": "text/javascript",
                          ".js": "text/javascript", ".wasm": "application/wasm", ".json": "application/json"}

        def translate_path(self, path):
            for prefix, folder in routes.items():
                if path.startswith(prefix):
                    relative = path.split("?", 1)[0][len(prefix):]
                    return str(Path(folder) / relative)
            return str(Path(os.devnull))

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_the_browser_page_encodes_and_decodes_a_file(exported, tmp_path):
    """export/web/index.html in headless Chromium (Debian's, driven by Playwright), served from localhost with the
    exported folder: transformers.js over ONNX Runtime Web (WebAssembly) gives our codes for a short clip, both
    players load, and the page asks nothing of any other host."""

    browser_path = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser_path is None:
        pytest.skip("needs Debian's chromium (scripts/setup_env.sh --test installs it where apt-get can)")
    node_modules()
    from playwright.sync_api import sync_playwright

    model, folder = exported
    rate = model.config.sampling_rate
    codes = noise_clip(model, tmp_path / "clip.wav", 0.5, seed=2)
    elsewhere, errors = [], []
    with serve({"/models/": folder.parent.parent, "/": WEB}) as base, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("request", lambda request: None if request.url.startswith((base, "blob:", "data:"))
                    else elsewhere.append(request.url))
            page.goto(f"{base}/index.html?model=/models/{folder.parent.name}/", timeout=60_000)
            page.wait_for_function("document.body.dataset.state !== 'loading'", timeout=120_000)
            assert page.evaluate("document.body.dataset.state") == "ready", page.text_content("#status")
            page.set_input_files("#file", str(tmp_path / "clip.wav"))
            page.wait_for_function("['done', 'error'].includes(document.body.dataset.state)", timeout=120_000)
            status = page.text_content("#status")
            result = page.evaluate("window.dacResult")
            players = page.eval_on_selector_all("audio", LOADED)
        finally:
            browser.close()
    assert result is not None, status
    theirs = np.array(result["codes"]).reshape(result["dims"])[0]
    assert theirs.shape == codes.shape
    assert (theirs != codes).sum() <= max(1, 0.001 * codes.size)  # near-ties may flip between runtimes
    assert result["samples"] == model.num_samples(codes.shape[-1])
    assert [duration for _, duration in players] == pytest.approx([0.5, result["samples"] / rate], abs=1e-3)
    assert not elsewhere and not errors, (elsewhere, errors)


LOADED = """els => Promise.all(els.map(a => a.readyState >= 1 ? [a.id, a.duration] : new Promise(done => {
    a.addEventListener('loadedmetadata', () => done([a.id, a.duration]));
    a.addEventListener('error', () => done([a.id, null]));
    a.load();
})))"""
