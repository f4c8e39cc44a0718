"""ONNX export: the whole-signal encoder and decoder graphs of each geometry run in ONNX Runtime with any batch and
length, and give our codes and audio."""

import numpy as np
import pytest
import torch

from dac_codec.export import export_onnx
from dac_codec.export.onnx import run_onnx

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


def test_the_folder_holds_the_graphs_and_the_config(exported):
    import json

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
    assert sorted(p.name for p in (tmp_path / "out" / "onnx").glob("*.onnx")) == ["decoder_model.onnx",
                                                                                 "encoder_model.onnx"]
    assert "wrote" in capsys.readouterr().err
