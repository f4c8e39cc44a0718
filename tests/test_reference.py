"""Equivalence with the reference package (descript-audio-codec, import `dac`), a test dependency only.

Full-size models of all four presets, with randomised weights (alphas, biases and weight-norm gains perturbed so
every tensor of the mapping is exercised), saved the way the released checkpoints are, converted, saved with
`save_pretrained` and loaded back with `AutoModel.from_pretrained(..., trust_remote_code=True)` offline.

Tolerance: codes must be identical; audio within 1e-4 of the signal scale. Our layers run the same operations in
the same order, so in practice the difference is 0; the tolerance leaves room for BLAS kernels that differ between
builds.
"""

import os
import subprocess
import sys

import pytest
import soundfile
import torch

from dac_codec import DacModel
from dac_codec.configuration_dac import PRESETS
from dac_codec.tools.convert import MODEL_FILES, convert
from dac_codec.tools.loading import model_from_original
from dac_codec.tools.random_weights import perturb, reference_model, sample_audio

dac = pytest.importorskip("dac", reason="the reference package is a test dependency: scripts/setup_env.sh --test")

SECONDS = 1.2  # two chunks of encoding and of decoding at the default chunk sizes
AUDIO_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def offline(tmp_path_factory):
    os.environ["HF_HUB_OFFLINE"] = "1"
    yield
    os.environ.pop("HF_HUB_OFFLINE", None)


@pytest.mark.parametrize("preset", list(PRESETS))
def test_matches_reference(preset, tmp_path, offline, monkeypatch):
    from transformers import AutoModel

    reference = reference_model(preset)
    reference.save(str(tmp_path / "weights.pth"), package=False)  # the released checkpoints' format
    folder = convert(str(tmp_path / "weights.pth"), str(tmp_path / "converted"))
    model = AutoModel.from_pretrained(folder, trust_remote_code=True)
    assert type(model).__name__ == "DacModel" and not model.training

    sample_rate = PRESETS[preset]["sampling_rate"]
    audio = sample_audio(sample_rate, SECONDS)
    with torch.no_grad():
        z, codes, *_ = reference.encode(reference.preprocess(audio, sample_rate))
        expected_from_z = reference.decode(z)
        expected_from_codes = reference.decode(reference.quantizer.from_codes(codes)[0])

    # The earlier model card's snippet, verbatim, on a file holding exactly these samples (32-bit float WAV).
    monkeypatch.chdir(tmp_path)
    soundfile.write("file.wav", audio[0, 0].numpy(), sample_rate, subtype="FLOAT")
    zq, s = model.encode('file.wav')
    assert torch.equal(s, codes)
    waveform = model.decode(zq=zq)
    waveform = model.decode(s=s)
    model.waveform_to_audiofile(waveform, 'out.wav')
    model.save_tensor(s, 'tokens.pt')
    loaded_s = model.load_tensor('tokens.pt')
    assert torch.equal(loaded_s, s) and soundfile.info("out.wav").frames == waveform.shape[-1]

    zq, s = model.encode(audio, sample_rate=sample_rate, chunk_size_in_sec=0)
    assert torch.equal(s, codes)
    assert torch.allclose(zq, z, rtol=0, atol=1e-4 * z.abs().max())
    for waveform, expected in ((model.decode(zq=zq, chunk_size=0), expected_from_z),
                               (model.decode(s=s, chunk_size=0), expected_from_codes)):
        assert waveform.shape == expected.shape
        assert (waveform - expected).abs().max() <= AUDIO_TOLERANCE * expected.abs().max()

    # Default settings (chunked) give the same codes and the same audio.
    zq_default, s_default = model.encode(audio, sample_rate=sample_rate)
    assert torch.equal(s_default, codes)
    waveform = model.decode(s=s_default)
    assert (waveform - expected_from_codes).abs().max() <= AUDIO_TOLERANCE * expected_from_codes.abs().max()


def test_converted_folder_loads_in_fresh_process(tmp_path):
    """Only what the folder holds is needed: load it in a new interpreter, offline, from another directory."""
    reference = reference_model("16khz")
    reference.save(str(tmp_path / "weights.pth"), package=False)
    folder = convert(str(tmp_path / "weights.pth"), str(tmp_path / "converted"))
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["config.json", "model.safetensors", "README.md", "requirements.txt", *MODEL_FILES])
    code = (
        "import torch; from transformers import AutoModel\n"
        f"m = AutoModel.from_pretrained({str(folder)!r}, trust_remote_code=True)\n"
        "zq, s = m.encode(torch.zeros(16000), sample_rate=16000)\n"
        "print(tuple(s.shape), tuple(m.decode(s=s).shape))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home")}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[0] == "(1, 12, 50) (1, 1, 15992)"


def saved_checkpoint(preset: str, path) -> dict:
    reference_model(preset).save(str(path), package=False)
    return torch.load(path, weights_only=True)


def test_converter_rejects_mismatched_checkpoint(tmp_path):
    checkpoint = saved_checkpoint("16khz", tmp_path / "weights.pth")
    del checkpoint["state_dict"]["decoder.model.0.bias"]
    torch.save(checkpoint, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="missing"):
        convert(str(tmp_path / "missing.pth"), str(tmp_path / "out"))

    checkpoint = saved_checkpoint("16khz", tmp_path / "weights.pth")
    checkpoint["metadata"]["kwargs"]["n_codebooks"] = 8  # 12 quantizers in the weights
    torch.save(checkpoint, tmp_path / "extra.pth")
    with pytest.raises(ValueError, match="unexpected"):
        convert(str(tmp_path / "extra.pth"), str(tmp_path / "out"))

    (tmp_path / "corrupt.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="checkpoint"):
        convert(str(tmp_path / "corrupt.pth"), str(tmp_path / "out"))
    with pytest.raises(FileNotFoundError):
        convert(str(tmp_path / "nowhere.pth"), str(tmp_path / "out"))


def test_older_checkpoint_without_latent_dim_or_sample_rate(tmp_path):
    """The first 44 kHz release records neither latent_dim nor sample_rate: both are inferred."""
    checkpoint = saved_checkpoint("44khz", tmp_path / "weights.pth")
    for key in ("latent_dim", "sample_rate"):
        del checkpoint["metadata"]["kwargs"][key]
    torch.save(checkpoint, tmp_path / "old.pth")
    model = model_from_original(str(tmp_path / "old.pth"))
    assert model.config.sampling_rate == 44100 and model.config.latent_dim == 1024


def test_transformers_checkpoint(tmp_path):
    """A transformers DacModel folder converts, and gives the same codes and audio as transformers does."""
    from transformers import DacConfig as HFDacConfig
    from transformers import DacModel as HFDacModel

    torch.manual_seed(0)
    hf = HFDacModel(HFDacConfig(n_codebooks=4, sampling_rate=16000, downsampling_ratios=[2, 4, 5, 8],
                                upsampling_ratios=[8, 5, 4, 2], encoder_hidden_size=16, decoder_hidden_size=128,
                                hidden_size=64))
    perturb(hf)
    hf.save_pretrained(tmp_path / "hf")
    folder = convert(str(tmp_path / "hf"), str(tmp_path / "converted"))
    model = DacModel.from_pretrained(folder)
    audio = sample_audio(16000, 0.5)[..., :8000]  # a multiple of the hop: transformers does not pad
    with torch.no_grad():
        expected = hf.encode(audio)
        expected_audio = hf.decode(audio_codes=expected.audio_codes).audio_values
    zq, s = model.encode(audio, sample_rate=16000)
    assert torch.equal(s, expected.audio_codes)
    waveform = model.decode(s=s)[:, 0]
    assert waveform.shape == expected_audio.shape
    assert (waveform - expected_audio).abs().max() <= AUDIO_TOLERANCE * expected_audio.abs().max()
