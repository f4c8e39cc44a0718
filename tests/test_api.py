"""DacModel's public API on tiny seeded models: shapes, input forms, encode/decode, the seed model card's file helpers,
input errors, forward, save/load and weight norm."""

import math
import os
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import soxr
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import dac_package  # noqa: E402

modeling = dac_package.load()
DacConfig, DacModel = modeling.DacConfig, modeling.DacModel
Snake1d = sys.modules["dac_codec.dac_layers"].Snake1d

N_CODEBOOKS, CODEBOOK_SIZE, ENCODER_DIM = 4, 16, 4
LATENT_DIM = ENCODER_DIM * 2**4


def tiny_config(**overrides):
    """16 kHz-like geometry (hop 320, a stride-5 decoder block) with a few thousand parameters."""
    kwargs = dict(
        encoder_dim=ENCODER_DIM,
        encoder_rates=[2, 4, 5, 8],
        decoder_dim=32,
        decoder_rates=[8, 5, 4, 2],
        n_codebooks=N_CODEBOOKS,
        codebook_size=CODEBOOK_SIZE,
        codebook_dim=4,
        sampling_rate=16000,
    )
    kwargs.update(overrides)
    return DacConfig(**kwargs)


def tiny44_config(**overrides):
    """44.1 kHz-like geometry (hop 512, only even strides)."""
    return tiny_config(encoder_rates=[2, 4, 8, 8], decoder_rates=[8, 8, 4, 2], sampling_rate=44100, **overrides)


def _reinit(module, gain):
    """Fan-in scaled normal weights, zero biases, Snake frequencies in [0.5, 1.5]."""
    for layer in module.modules():
        if isinstance(layer, torch.nn.ConvTranspose1d):
            fan_in = layer.in_channels * layer.kernel_size[0] / layer.stride[0]
        elif isinstance(layer, torch.nn.Conv1d):
            fan_in = layer.in_channels * layer.kernel_size[0]
        elif isinstance(layer, Snake1d):
            layer.alpha.uniform_(0.5, 1.5)
            continue
        else:
            continue
        torch.nn.init.normal_(layer.weight, std=gain / math.sqrt(fan_in))
        torch.nn.init.zeros_(layer.bias)


def make_model(config, seed=0):
    """A seeded model with weights that give outputs of a realistic scale. The model's own initialisation
    (truncated normal, std 0.02) makes a tiny decoder return audio of ~1e-8, against which every tolerance below
    would pass trivially; these gains give latents of ~0.3 and audio of ~0.1 with diverse codes."""
    torch.manual_seed(seed)
    model = DacModel(config)
    with torch.no_grad():
        _reinit(model.encoder, 0.7)
        _reinit(model.decoder, 0.5)
        _reinit(model.quantizer, 1.0)
    return model


def expected_decoded_length(frames, decoder_rates):
    """Samples the decoder returns for `frames` frames, from the layer arithmetic alone: each block's transposed
    conv (kernel 2s, stride s, padding ceil(s / 2)) gives s * T + s - 2 * ceil(s / 2), i.e. s * T - 1 for odd s."""
    length = frames
    for s in decoder_rates:
        length = s * length + s - 2 * math.ceil(s / 2)
    return length


def signal(*shape, seed=0, scale=0.3, dtype=np.float32):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """These models are tiny: one thread is fastest, and spares a busy 2-core machine the thread pool's spinning
    (which made this file 20x slower beside another test run). Restored for the other test files."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model():
    return make_model(tiny_config())


@pytest.fixture(scope="module")
def model44():
    return make_model(tiny44_config(), seed=1)


@pytest.fixture(params=["16k", "44k"])
def any_model(request, model, model44):
    return model if request.param == "16k" else model44


# ----------------------------------------------------------------------------------------------------------------
# Shapes
def test_expected_length_formula():
    # The test's own formula against hand-computed values: hop * frames, less 8 with the stride-5 block
    # (that block's one missing sample is then upsampled by 4 * 2).
    for frames in (1, 2, 7, 100):
        assert expected_decoded_length(frames, [8, 5, 4, 2]) == 320 * frames - 8
        assert expected_decoded_length(frames, [8, 8, 4, 2]) == 512 * frames


_rng = random.Random(20240601)
RANDOM_LENGTHS = sorted(_rng.sample(range(2, 6000), 5))


@pytest.mark.parametrize("length", [1, 2, 319, 320, 321, 511, 512, 513, *RANDOM_LENGTHS])
def test_encode_decode_shapes(any_model, length):
    config = any_model.config
    hop = math.prod(config.encoder_rates)
    frames = math.ceil(length / hop)
    x = torch.from_numpy(signal(2, 1, length, seed=length))

    out = any_model.encode(x, sample_rate=config.sampling_rate)
    assert out.codes.shape == (2, N_CODEBOOKS, frames)
    assert out.codes.dtype == torch.int64
    assert 0 <= int(out.codes.min()) and int(out.codes.max()) < CODEBOOK_SIZE
    assert out.z_q.shape == (2, LATENT_DIM, frames)
    assert out.z_q.dtype == torch.float32

    samples = expected_decoded_length(frames, config.decoder_rates)
    assert any_model.num_frames(length) == frames
    assert any_model.num_samples(frames) == samples
    for audio in (any_model.decode(s=out.codes), any_model.decode(zq=out.z_q)):
        assert audio.shape == (2, 1, samples)
        assert audio.dtype == torch.float32
        assert torch.isfinite(audio).all() and audio.abs().max() <= 1  # tanh output


def test_batch_items_are_encoded_independently(model):
    x = torch.from_numpy(signal(3, 1, 2000, seed=3))
    batch = model.encode(x, sample_rate=16000)
    for i in range(3):
        single = model.encode(x[i], sample_rate=16000)
        assert torch.equal(single.codes, batch.codes[i : i + 1])
        torch.testing.assert_close(single.z_q, batch.z_q[i : i + 1], atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# Input forms
def _encode_same(a, b):
    assert torch.equal(a.codes, b.codes)
    torch.testing.assert_close(a.z_q, b.z_q, atol=1e-6, rtol=1e-6)


def _write_or_skip(path, data, rate, **kwargs):
    try:
        soundfile.write(path, data, rate, **kwargs)
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as error:
        if Path(path).suffix == ".mp3":
            pytest.skip(f"this libsndfile ({soundfile.__libsndfile_version__}) cannot write MP3: {error}")
        raise


@pytest.mark.parametrize("suffix", [".wav", ".flac", ".ogg", ".mp3"])
def test_path_input(model, tmp_path, suffix):
    x = signal(4000, seed=5)
    path = tmp_path / f"speech{suffix}"
    _write_or_skip(path, x, 16000)
    data, rate = soundfile.read(path, dtype="float32")  # what the (possibly lossy) file holds
    assert rate == 16000
    from_path = model.encode(path)
    _encode_same(from_path, model.encode(data, sample_rate=rate))
    _encode_same(from_path, model.encode(str(path)))  # str and PathLike
    assert from_path.codes.shape == (1, N_CODEBOOKS, math.ceil(len(data) / 320))


def test_float_wav_file_is_encoded_as_its_samples(model, tmp_path):
    x = signal(3333, seed=6)
    path = tmp_path / "float.wav"
    soundfile.write(path, x, 16000, subtype="FLOAT")
    _encode_same(model.encode(path), model.encode(x, sample_rate=16000))


def test_stereo_file_is_mixed_down(model, tmp_path):
    x = signal(2, 2500, seed=7)
    path = tmp_path / "stereo.wav"
    soundfile.write(path, x.T, 16000, subtype="FLOAT")  # soundfile takes (time, channels)
    mono = torch.from_numpy(x).mean(dim=0)
    _encode_same(model.encode(path), model.encode(mono, sample_rate=16000))


def test_file_at_another_rate_is_resampled(model, tmp_path):
    x = signal(2400, seed=8)
    path = tmp_path / "8k.wav"
    soundfile.write(path, x, 8000, subtype="FLOAT")
    resampled = soxr.resample(x.astype(np.float64), 8000, 16000, quality="HQ")
    out = model.encode(path)
    assert out.codes.shape[-1] == math.ceil(len(resampled) / 320)
    _encode_same(out, model.encode(x, sample_rate=8000))


def test_sample_rate_contradicting_the_file(model, tmp_path):
    path = tmp_path / "a.wav"
    soundfile.write(path, signal(1000), 16000)
    model.encode(path, sample_rate=16000)  # agreeing is fine
    with pytest.raises(ValueError, match="contradicts the file's own rate 16000"):
        model.encode(path, sample_rate=8000)


def test_layouts_and_array_types_agree(model):
    x = signal(2900, seed=9)
    reference = model.encode(x, sample_rate=16000)  # numpy (time,)
    assert reference.codes.shape == (1, N_CODEBOOKS, math.ceil(2900 / 320))
    for form in (x[None], x[None, None], torch.from_numpy(x), torch.from_numpy(x)[None],
                 torch.from_numpy(x)[None, None]):
        _encode_same(model.encode(form, sample_rate=16000), reference)
    _encode_same(model.encode(x, sample_rate=np.int64(16000)), reference)


def test_stereo_is_mixed_down_to_mono(model):
    x = torch.from_numpy(signal(2, 3000, seed=10))
    stereo = model.encode(x, sample_rate=16000)
    _encode_same(stereo, model.encode(x.mean(dim=0), sample_rate=16000))
    _encode_same(model.encode(x.numpy(), sample_rate=16000), stereo)
    # The mix really is the mean, not one channel.
    assert not torch.equal(stereo.codes, model.encode(x[0], sample_rate=16000).codes)

    batch = torch.from_numpy(signal(3, 2, 1500, seed=11))  # (batch, channels, time)
    out = model.encode(batch, sample_rate=16000)
    assert out.codes.shape == (3, N_CODEBOOKS, math.ceil(1500 / 320))
    _encode_same(out, model.encode(batch.mean(dim=1, keepdim=True), sample_rate=16000))


@pytest.mark.parametrize("rate, length", [(8000, 1234), (8000, 1), (44100, 5000), (22050, 777)])
def test_other_sample_rates_are_resampled(model, rate, length):
    x = signal(length, seed=length)
    resampled = soxr.resample(x.astype(np.float64), rate, 16000, quality="HQ")
    out = model.encode(torch.from_numpy(x), sample_rate=rate)
    frames = math.ceil(len(resampled) / 320)
    assert out.codes.shape == (1, N_CODEBOOKS, frames)
    assert abs(frames - math.ceil(length * 16000 / rate / 320)) <= 1
    _encode_same(out, model.encode(resampled.astype(np.float32), sample_rate=16000))


def test_float64_input(model):
    x = signal(2100, seed=12, dtype=np.float64)
    reference = model.encode(x.astype(np.float32), sample_rate=16000)
    for form in (x, torch.from_numpy(x)):
        out = model.encode(form, sample_rate=16000)
        assert out.z_q.dtype == torch.float32
        _encode_same(out, reference)


# ----------------------------------------------------------------------------------------------------------------
# encode / decode
def test_encode_output_unpacks_as_zq_s(model):
    out = model.encode(signal(1000, seed=13), sample_rate=16000)
    zq, s = out
    assert zq is out.z_q and s is out.codes
    assert zq.shape == (1, LATENT_DIM, 4) and s.shape == (1, N_CODEBOOKS, 4)


def test_decode_from_zq_and_from_codes(model):
    zq, s = model.encode(signal(5000, seed=14), sample_rate=16000)
    from_zq, from_s = model.decode(zq=zq), model.decode(s=s)
    assert from_zq.shape == from_s.shape == (1, 1, expected_decoded_length(16, [8, 5, 4, 2]))
    # z_q is the sum of the codebook vectors of s, up to the straight-through estimator's rounding.
    torch.testing.assert_close(from_zq, from_s, atol=1e-5, rtol=1e-4)
    # Unbatched codes and latents are accepted as batch 1.
    torch.testing.assert_close(model.decode(s=s[0]), from_s, atol=0, rtol=0)
    torch.testing.assert_close(model.decode(zq=zq[0]), from_zq, atol=0, rtol=0)
    # Narrower integer dtypes are accepted.
    torch.testing.assert_close(model.decode(s=s.to(torch.int32)), from_s, atol=0, rtol=0)


@pytest.mark.parametrize("k", range(1, N_CODEBOOKS + 1))
def test_n_quantizers(model, k):
    x = signal(3000, seed=15)
    full = model.encode(x, sample_rate=16000)
    part = model.encode(x, sample_rate=16000, n_quantizers=k)
    assert part.codes.shape == (1, k, full.codes.shape[-1])
    assert part.z_q.shape == full.z_q.shape
    assert torch.equal(part.codes, full.codes[:, :k])
    # Fewer codebooks than the model has decode, and agree with the k-codebook latent.
    audio = model.decode(s=part.codes)
    assert audio.shape == model.decode(s=full.codes).shape
    torch.testing.assert_close(audio, model.decode(zq=part.z_q), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(audio, model.decode(s=full.codes[:, :k]), atol=0, rtol=0)
    if k < N_CODEBOOKS:  # the later codebooks do contribute
        assert not torch.allclose(audio, model.decode(s=full.codes), atol=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# The seed model card's file helpers
@pytest.mark.parametrize("which", ["16k", "44k"])
@pytest.mark.parametrize("suffix", [".wav", ".flac"])
@pytest.mark.parametrize("shape", ["batch", "2d", "1d"])
def test_waveform_to_audiofile(model, model44, tmp_path, which, suffix, shape):
    net = model if which == "16k" else model44
    _, s = net.encode(signal(3000, seed=16), sample_rate=net.config.sampling_rate)
    waveform = net.decode(s=s)
    assert waveform.shape[:2] == (1, 1)
    given = {"batch": waveform, "2d": waveform[0], "1d": waveform[0, 0]}[shape]
    path = tmp_path / f"out{suffix}"
    net.waveform_to_audiofile(given, path)
    info = soundfile.info(path)
    assert info.samplerate == net.config.sampling_rate
    assert info.channels == 1
    assert info.frames == waveform.shape[-1] == expected_decoded_length(s.shape[-1], net.config.decoder_rates)
    data, _ = soundfile.read(path, dtype="float32")
    np.testing.assert_allclose(data, waveform[0, 0].numpy(), atol=2 / 32768)  # 16-bit PCM
    # What was written reads back through encode at the model's rate.
    assert net.encode(path).codes.shape == s.shape


def test_waveform_to_audiofile_rejects_batches_and_non_tensors(model, tmp_path):
    with pytest.raises(ValueError, match="one mono signal"):
        model.waveform_to_audiofile(torch.zeros(2, 1, 100), tmp_path / "x.wav")
    with pytest.raises(ValueError, match="one mono signal"):
        model.waveform_to_audiofile(torch.zeros(1, 1, 0), tmp_path / "x.wav")
    with pytest.raises(TypeError, match="torch tensor"):
        model.waveform_to_audiofile(np.zeros(100, np.float32), tmp_path / "x.wav")
    assert not (tmp_path / "x.wav").exists()


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_save_load_tensor_round_trip(model, tmp_path, suffix):
    zq, s = model.encode(signal(2000, seed=17), sample_rate=16000)
    for name, tensor in (("codes", s), ("latent", zq)):
        path = tmp_path / f"{name}{suffix}"
        model.save_tensor(tensor, path)
        assert path.is_file()
        loaded = model.load_tensor(path)
        assert loaded.dtype == tensor.dtype and loaded.shape == tensor.shape
        assert torch.equal(loaded, tensor)
        assert torch.equal(DacModel.load_tensor(str(path)), tensor)  # static, str paths too
    if suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(tmp_path / f"codes{suffix}", "pt") as f:  # really a safetensors file
            assert list(f.keys()) == ["tensor"]
    # Saved codes decode to what the original codes decode to.
    assert torch.equal(model.decode(s=model.load_tensor(tmp_path / f"codes{suffix}")), model.decode(s=s))


class _Payload:
    """Unpickling this calls os.mkdir(marker): the classic pickle code-execution payload, made harmless."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_load_tensor_does_not_execute_pickled_code(model, tmp_path):
    marker = tmp_path / "payload_ran"
    path = tmp_path / "codes.pt"
    torch.save(_Payload(marker), path)
    with pytest.raises(Exception, match="[Ww]eights.only") as info:
        model.load_tensor(path)
    assert not isinstance(info.value, FileNotFoundError)
    assert not marker.exists(), "load_tensor ran code from the pickle"
    # Control: the payload is live, so the check above could fail; a plain unpickle runs it.
    torch.load(path, weights_only=False)
    assert marker.is_dir()


class _PlainObject:
    def __init__(self):
        self.codes = [1, 2, 3]


def test_load_tensor_refuses_a_pickled_class_instance(model, tmp_path):
    path = tmp_path / "object.pt"
    torch.save(_PlainObject(), path)
    with pytest.raises(Exception, match="[Ww]eights.only"):
        model.load_tensor(path)


def test_seed_model_card_usage_verbatim(model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    soundfile.write("input.wav", signal(2, 5000, seed=21).T, 16000)  # a stereo file, as users have
    audio_filename = "input.wav"

    # --- as in the seed model card ---
    zq, s = model.encode(audio_filename)
    waveform = model.decode(zq=zq)
    waveform = model.decode(s=s)
    model.waveform_to_audiofile(waveform, "out.wav")
    model.save_tensor(s, "tokens.pt")
    s_loaded = model.load_tensor("tokens.pt")
    model.save_tensor(zq, "zq.pt")
    zq_loaded = model.load_tensor("zq.pt")
    # ---

    frames = math.ceil(5000 / 320)
    assert zq.shape == (1, LATENT_DIM, frames) and s.shape == (1, N_CODEBOOKS, frames)
    assert waveform.shape == (1, 1, expected_decoded_length(frames, [8, 5, 4, 2]))
    assert soundfile.info("out.wav").samplerate == 16000
    assert soundfile.info("out.wav").frames == waveform.shape[-1]
    assert torch.equal(s_loaded, s) and torch.equal(zq_loaded, zq)


def test_load_tensor_of_a_non_tensor(model, tmp_path):
    path = tmp_path / "dict.pt"
    torch.save({"codes": torch.zeros(1, 4, 2, dtype=torch.long)}, path)
    with pytest.raises(ValueError, match="holds a dict, not a tensor"):
        model.load_tensor(path)


def test_load_tensor_of_a_missing_file(model, tmp_path):
    for name in ("nothing.pt", "nothing.safetensors"):
        with pytest.raises(FileNotFoundError, match="nothing"):
            model.load_tensor(tmp_path / name)


# ----------------------------------------------------------------------------------------------------------------
# Bad input
def _write_garbage(tmp_path):
    path = tmp_path / "garbage.wav"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    return path


def _codes(*shape, value=0, dtype=torch.long):
    return torch.full(shape, value, dtype=dtype)


BAD_INPUTS = {
    "missing file": (lambda m, p: m.encode(p / "missing.wav"), FileNotFoundError, "No audio file"),
    "directory": (lambda m, p: m.encode(p), FileNotFoundError, "No audio file"),
    "corrupt file": (lambda m, p: m.encode(_write_garbage(p)), ValueError, "Could not read .*garbage.wav.* as audio"),
    "empty numpy": (lambda m, p: m.encode(np.zeros(0, np.float32), sample_rate=16000), ValueError, "empty"),
    "empty tensor": (lambda m, p: m.encode(torch.zeros(1, 1, 0), sample_rate=16000), ValueError, "empty"),
    "no channels": (lambda m, p: m.encode(torch.zeros(0, 100), sample_rate=16000), ValueError, "empty"),
    "empty batch": (lambda m, p: m.encode(torch.zeros(0, 1, 100), sample_rate=16000), ValueError, "empty"),
    "nan": (lambda m, p: m.encode(torch.tensor([0.1, float("nan"), 0.2]), sample_rate=16000), ValueError, "NaN"),
    "inf": (lambda m, p: m.encode(np.array([0.1, np.inf], np.float32), sample_rate=16000), ValueError, "Inf"),
    "-inf": (lambda m, p: m.encode(torch.tensor([-float("inf")] * 9), sample_rate=16000), ValueError, "Inf"),
    "rank 4": (lambda m, p: m.encode(torch.zeros(1, 1, 1, 100), sample_rate=16000), ValueError,
               r"\(batch, channels, time\); got \(1, 1, 1, 100\)"),
    "rank 0": (lambda m, p: m.encode(torch.tensor(0.5), sample_rate=16000), ValueError, r"\(time,\)"),
    "numpy int16": (lambda m, p: m.encode(np.zeros(100, np.int16), sample_rate=16000), TypeError,
                    "floating point.*int16"),
    "torch int16": (lambda m, p: m.encode(torch.zeros(100, dtype=torch.int16), sample_rate=16000), TypeError,
                    "floating point.*int16"),
    "list": (lambda m, p: m.encode([0.0, 0.1, 0.2], sample_rate=16000), TypeError, "got list"),
    "no sample_rate": (lambda m, p: m.encode(torch.zeros(100)), ValueError, "sample_rate.* is required"),
    "sample_rate 0": (lambda m, p: m.encode(torch.zeros(100), sample_rate=0), ValueError, "positive int"),
    "sample_rate < 0": (lambda m, p: m.encode(torch.zeros(100), sample_rate=-16000), ValueError, "positive int"),
    "n_quantizers 0": (lambda m, p: m.encode(torch.zeros(100), sample_rate=16000, n_quantizers=0), ValueError,
                       r"n_quantizers.*\[1, 4\]"),
    "n_quantizers too large": (lambda m, p: m.encode(torch.zeros(100), sample_rate=16000, n_quantizers=5),
                               ValueError, r"n_quantizers.*\[1, 4\]"),
    "negative encode chunk": (lambda m, p: m.encode(torch.zeros(100), sample_rate=16000, chunk_size_in_sec=-1),
                              ValueError, "chunk_size_in_sec"),
    "decode neither": (lambda m, p: m.decode(), ValueError, "exactly one"),
    "decode both": (lambda m, p: m.decode(zq=torch.zeros(1, LATENT_DIM, 2), s=_codes(1, 4, 2)), ValueError,
                    "exactly one"),
    "negative code": (lambda m, p: m.decode(s=_codes(1, 4, 3, value=-1)), ValueError, r"\[0, 16\).*-1"),
    "code too large": (lambda m, p: m.decode(s=_codes(1, 4, 3, value=CODEBOOK_SIZE)), ValueError, r"\[0, 16\)"),
    "too many codebooks": (lambda m, p: m.decode(s=_codes(1, 5, 3)), ValueError, "5 codebooks; this model has 4"),
    "float codes": (lambda m, p: m.decode(s=_codes(1, 4, 3, dtype=torch.float32)), TypeError, "integer"),
    "codes list": (lambda m, p: m.decode(s=[[0, 1]]), TypeError, "torch tensor"),
    "zero frames": (lambda m, p: m.decode(s=_codes(1, 4, 0)), ValueError, "frames >= 1"),
    "zq channels": (lambda m, p: m.decode(zq=torch.zeros(1, LATENT_DIM + 1, 3)), ValueError,
                    rf"\(batch, {LATENT_DIM}, frames\)"),
    "zq nan": (lambda m, p: m.decode(zq=torch.full((1, LATENT_DIM, 3), float("nan"))), ValueError, "NaN"),
    "negative decode chunk": (lambda m, p: m.decode(s=_codes(1, 4, 3), chunk_size=-1), ValueError, "chunk_size"),
    "unknown mode": (lambda m, p: m.decode(s=_codes(1, 4, 3), mode="fast"), ValueError, "mode.*exact"),
    "forward stereo": (lambda m, p: m(torch.zeros(1, 2, 640)), ValueError, r"\(batch, 1, samples\)"),
    "load_tensor missing": (lambda m, p: m.load_tensor(p / "codes.pt"), FileNotFoundError, "No tensor file"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_rejected_with_a_helpful_error(model, tmp_path, case):
    call, error, match = BAD_INPUTS[case]
    with pytest.raises(error, match=match):
        call(model, tmp_path)


def test_codes_with_an_empty_batch_are_rejected(model):
    with pytest.raises(ValueError, match="batch and frames >= 1"):
        model.decode(s=_codes(0, 4, 3))


@pytest.mark.parametrize("value", [float("inf"), float("nan"), 2.5, True])
@pytest.mark.parametrize("call", ["encode", "decode"])
def test_non_finite_or_fractional_chunk_size_is_a_value_error(model, call, value):
    if call == "encode" and value == 2.5:
        assert model.encode(torch.zeros(100), sample_rate=16000, chunk_size_in_sec=value).codes.shape[-1] == 1
        return
    with pytest.raises(ValueError, match="chunk_size"):
        if call == "encode":
            model.encode(torch.zeros(100), sample_rate=16000, chunk_size_in_sec=value)
        else:
            model.decode(s=_codes(1, 4, 3), chunk_size=value)


# ----------------------------------------------------------------------------------------------------------------
# forward
@pytest.mark.parametrize("length", [1, 300, 511, 512, 513, 2000])
def test_forward_crops_to_input_length(model44, length):
    x = torch.from_numpy(signal(2, 1, length, seed=length))
    out = model44(x)
    frames = math.ceil(length / 512)
    assert out.audio.shape == (2, 1, length)
    assert out.codes.shape == (2, N_CODEBOOKS, frames) and out.codes.dtype == torch.int64
    assert out.z_q.shape == (2, LATENT_DIM, frames)
    with torch.inference_mode():
        encoded = model44.encode(x, sample_rate=44100, chunk_size_in_sec=0)
        decoded = model44.decode(s=encoded.codes, chunk_size=0)
    assert torch.equal(out.codes, encoded.codes)
    torch.testing.assert_close(out.z_q, encoded.z_q, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.audio, decoded[..., :length], atol=1e-5, rtol=1e-4)
    audio, codes, z_q = model44(x, return_dict=False)
    assert torch.equal(audio, out.audio) and torch.equal(codes, out.codes)


def test_forward_n_quantizers_and_gradients(model44):
    x = torch.from_numpy(signal(1, 1, 1000, seed=18))
    out = model44(x, n_quantizers=2)
    assert out.codes.shape == (1, 2, 2)
    assert torch.equal(out.codes, model44.encode(x, sample_rate=44100, n_quantizers=2).codes)
    model44.zero_grad()
    out.audio.square().mean().backward()  # forward is the training path: differentiable
    assert model44.decoder.conv2.weight.grad is not None
    assert model44.encoder.conv1.weight.grad is not None  # through the straight-through estimator
    model44.zero_grad(set_to_none=True)


@pytest.mark.parametrize("length", [1, 300, 321, 700])
def test_forward_crops_to_input_length_16k(model, length):
    # Lengths whose padded frames decode to at least `length` samples (320 * frames - 8 >= length).
    out = model(torch.from_numpy(signal(1, 1, length, seed=length)))
    assert out.audio.shape == (1, 1, length)


@pytest.mark.parametrize("length", [320, 640, 315, 319])
def test_forward_is_short_like_the_reference_near_whole_frames_16k(model, length):
    """The stride-5 decoder returns 320 * frames - 8 samples: for lengths within 8 of a multiple of the hop the
    cropped output is shorter than the input, exactly as in the reference `DAC.forward` (documented)."""
    out = model(torch.from_numpy(signal(1, 1, length, seed=length)))
    frames = math.ceil(length / 320)
    assert out.audio.shape == (1, 1, min(length, 320 * frames - 8))


# ----------------------------------------------------------------------------------------------------------------
# Mode, save and load
def test_model_is_in_eval_mode_after_construction():
    model = make_model(tiny_config())
    assert model.training is False
    assert not any(m.training for m in model.modules())


def test_save_pretrained_from_pretrained_gives_identical_outputs(model, tmp_path):
    model.save_pretrained(tmp_path)
    assert (tmp_path / "config.json").is_file()
    loaded = DacModel.from_pretrained(tmp_path)
    assert loaded.training is False
    ignore = {"_name_or_path"}  # transformers records where it loaded from
    assert {k: v for k, v in loaded.config.to_dict().items() if k not in ignore} == {
        k: v for k, v in model.config.to_dict().items() if k not in ignore
    }
    state, loaded_state = model.state_dict(), loaded.state_dict()
    assert state.keys() == loaded_state.keys()
    assert all(torch.equal(state[k], loaded_state[k]) for k in state)

    x = signal(2, 3000, seed=19)
    a, b = model.encode(x, sample_rate=16000), loaded.encode(x, sample_rate=16000)
    assert torch.equal(a.codes, b.codes) and torch.equal(a.z_q, b.z_q)
    assert torch.equal(model.decode(s=a.codes), loaded.decode(s=b.codes))


def test_a_differently_seeded_model_differs(model):
    # Guards the test above: equality there is not because every model computes the same thing.
    other = make_model(tiny_config(), seed=123)
    x = signal(3000, seed=19)
    assert not torch.equal(model.encode(x, sample_rate=16000).z_q, other.encode(x, sample_rate=16000).z_q)


# ----------------------------------------------------------------------------------------------------------------
# Weight norm
def test_apply_and_remove_weight_norm_keep_outputs(tmp_path):
    model = make_model(tiny_config(), seed=2)
    x = signal(4000, seed=20)
    before = model.encode(x, sample_rate=16000)
    audio_before = model.decode(zq=before.z_q)
    keys_before = set(model.state_dict())
    assert not any("parametrizations" in k for k in keys_before)

    model.apply_weight_norm()
    keys_normed = set(model.state_dict())
    assert any(k.endswith("parametrizations.weight.original0") for k in keys_normed)
    assert any(k.endswith("parametrizations.weight.original1") for k in keys_normed)
    assert "decoder.conv2.weight" not in keys_normed
    normed = model.encode(x, sample_rate=16000)
    torch.testing.assert_close(normed.z_q, before.z_q, atol=1e-6, rtol=0)
    assert torch.equal(normed.codes, before.codes)
    torch.testing.assert_close(model.decode(zq=before.z_q), audio_before, atol=1e-6, rtol=0)

    model.remove_weight_norm()
    assert set(model.state_dict()) == keys_before  # (registration order may differ: weight now after bias)
    assert "decoder.conv2.weight" in model.state_dict()
    after = model.encode(x, sample_rate=16000)
    torch.testing.assert_close(after.z_q, before.z_q, atol=1e-6, rtol=0)
    assert torch.equal(after.codes, before.codes)
    torch.testing.assert_close(model.decode(zq=before.z_q), audio_before, atol=1e-6, rtol=0)

    model.remove_weight_norm()  # idempotent
    assert set(model.state_dict()) == keys_before
    # The folded checkpoint loads as a plain model.
    model.save_pretrained(tmp_path)
    loaded = DacModel.from_pretrained(tmp_path)
    torch.testing.assert_close(loaded.decode(zq=before.z_q), audio_before, atol=1e-6, rtol=0)
