"""DacModel's public API on tiny seeded models: shapes, input forms, encode/decode, the earlier model card's file
helpers, input errors, forward, save/load and weight norm."""

import copy
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import soxr
import torch

from conftest import TINY, DacModel, tiny_model

N_CODEBOOKS, CODEBOOK_SIZE = TINY["n_codebooks"], TINY["codebook_size"]
LATENT_DIM = TINY["encoder_dim"] * 2**4


def expected_decoded_length(frames, decoder_rates):
    """Samples the decoder returns for `frames` frames, from the layer arithmetic alone: each block's transposed
    conv (kernel 2s, stride s, padding ceil(s / 2)) gives s * T + s - 2 * ceil(s / 2), i.e. s * T - 1 for odd s."""
    length = frames
    for s in decoder_rates:
        length = s * length + s - 2 * math.ceil(s / 2)
    return length


def signal(*shape, seed=0, scale=0.3, dtype=np.float32):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


# ----------------------------------------------------------------------------------------------------------------
# Shapes
_rng = random.Random(20240601)
RANDOM_LENGTHS = sorted(_rng.sample(range(2, 6000), 5))


@pytest.mark.parametrize("length", [1, 2, 319, 320, 321, 511, 512, 513, *RANDOM_LENGTHS])
def test_encode_decode_shapes(model, length):
    config = model.config
    hop = math.prod(config.encoder_rates)
    frames = math.ceil(length / hop)
    x = torch.from_numpy(signal(2, 1, length, seed=length))

    out = model.encode(x, sample_rate=config.sampling_rate)
    assert out.codes.shape == (2, N_CODEBOOKS, frames)
    assert out.codes.dtype == torch.int64
    assert 0 <= int(out.codes.min()) and int(out.codes.max()) < CODEBOOK_SIZE
    assert out.z_q.shape == (2, LATENT_DIM, frames)
    assert out.z_q.dtype == torch.float32

    samples = expected_decoded_length(frames, config.decoder_rates)
    assert model.num_frames(length) == frames
    assert model.num_samples(frames) == samples
    for audio in (model.decode(s=out.codes), model.decode(zq=out.z_q)):
        assert audio.shape == (2, 1, samples)
        assert audio.dtype == torch.float32
        assert torch.isfinite(audio).all() and audio.abs().max() <= 1  # tanh output


def test_batch_items_are_encoded_independently(model16):
    x = torch.from_numpy(signal(3, 1, 2000, seed=3))
    batch = model16.encode(x, sample_rate=16000)
    for i in range(3):
        single = model16.encode(x[i], sample_rate=16000)
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
def test_path_input(model16, tmp_path, suffix):
    x = signal(4000, seed=5)
    path = tmp_path / f"speech{suffix}"
    _write_or_skip(path, x, 16000)
    data, rate = soundfile.read(path, dtype="float32")  # what the (possibly lossy) file holds
    assert rate == 16000
    from_path = model16.encode(path)
    _encode_same(from_path, model16.encode(data, sample_rate=rate))
    _encode_same(from_path, model16.encode(str(path)))  # str and PathLike
    assert from_path.codes.shape == (1, N_CODEBOOKS, math.ceil(len(data) / 320))


def test_float_wav_file_is_encoded_as_its_samples(model16, tmp_path):
    x = signal(3333, seed=6)
    path = tmp_path / "float.wav"
    soundfile.write(path, x, 16000, subtype="FLOAT")
    _encode_same(model16.encode(path), model16.encode(x, sample_rate=16000))


def test_stereo_file_is_mixed_down(model16, tmp_path):
    x = signal(2, 2500, seed=7)
    path = tmp_path / "stereo.wav"
    soundfile.write(path, x.T, 16000, subtype="FLOAT")  # soundfile takes (time, channels)
    mono = torch.from_numpy(x).mean(dim=0)
    _encode_same(model16.encode(path), model16.encode(mono, sample_rate=16000))


def test_file_at_another_rate_is_resampled(model16, tmp_path):
    x = signal(2400, seed=8)
    path = tmp_path / "8k.wav"
    soundfile.write(path, x, 8000, subtype="FLOAT")
    resampled = soxr.resample(x.astype(np.float64), 8000, 16000, quality="HQ")
    out = model16.encode(path)
    assert out.codes.shape[-1] == math.ceil(len(resampled) / 320)
    _encode_same(out, model16.encode(x, sample_rate=8000))


def test_sample_rate_contradicting_the_file(model16, tmp_path):
    path = tmp_path / "a.wav"
    soundfile.write(path, signal(1000), 16000)
    model16.encode(path, sample_rate=16000)  # agreeing is fine
    with pytest.raises(ValueError, match="contradicts the file's own rate 16000"):
        model16.encode(path, sample_rate=8000)


def test_layouts_and_array_types_agree(model16):
    x = signal(2900, seed=9)
    reference = model16.encode(x, sample_rate=16000)  # numpy (time,)
    assert reference.codes.shape == (1, N_CODEBOOKS, math.ceil(2900 / 320))
    for form in (x[None], x[None, None], torch.from_numpy(x), torch.from_numpy(x)[None],
                 torch.from_numpy(x)[None, None]):
        _encode_same(model16.encode(form, sample_rate=16000), reference)
    _encode_same(model16.encode(x, sample_rate=np.int64(16000)), reference)


def test_stereo_is_mixed_down_to_mono(model16):
    x = torch.from_numpy(signal(2, 3000, seed=10))
    stereo = model16.encode(x, sample_rate=16000)
    _encode_same(stereo, model16.encode(x.mean(dim=0), sample_rate=16000))
    _encode_same(model16.encode(x.numpy(), sample_rate=16000), stereo)
    # The mix really is the mean, not one channel.
    assert not torch.equal(stereo.codes, model16.encode(x[0], sample_rate=16000).codes)

    batch = torch.from_numpy(signal(3, 2, 1500, seed=11))  # (batch, channels, time)
    out = model16.encode(batch, sample_rate=16000)
    assert out.codes.shape == (3, N_CODEBOOKS, math.ceil(1500 / 320))
    _encode_same(out, model16.encode(batch.mean(dim=1, keepdim=True), sample_rate=16000))


@pytest.mark.parametrize("rate, length", [(8000, 1234), (8000, 1), (44100, 5000), (22050, 777)])
def test_other_sample_rates_are_resampled(model16, rate, length):
    x = signal(length, seed=length)
    resampled = soxr.resample(x.astype(np.float64), rate, 16000, quality="HQ")
    out = model16.encode(torch.from_numpy(x), sample_rate=rate)
    frames = math.ceil(len(resampled) / 320)
    assert out.codes.shape == (1, N_CODEBOOKS, frames)
    assert abs(frames - math.ceil(length * 16000 / rate / 320)) <= 1
    _encode_same(out, model16.encode(resampled.astype(np.float32), sample_rate=16000))


def test_float64_input(model16):
    x = signal(2100, seed=12, dtype=np.float64)
    reference = model16.encode(x.astype(np.float32), sample_rate=16000)
    for form in (x, torch.from_numpy(x)):
        out = model16.encode(form, sample_rate=16000)
        assert out.z_q.dtype == torch.float32
        _encode_same(out, reference)


# ----------------------------------------------------------------------------------------------------------------
# encode / decode
def test_encode_output_unpacks_as_zq_s(model16):
    out = model16.encode(signal(1000, seed=13), sample_rate=16000)
    zq, s = out
    assert zq is out.z_q and s is out.codes
    assert zq.shape == (1, LATENT_DIM, 4) and s.shape == (1, N_CODEBOOKS, 4)


def test_decode_from_zq_and_from_codes(model16):
    zq, s = model16.encode(signal(5000, seed=14), sample_rate=16000)
    from_zq, from_s = model16.decode(zq=zq), model16.decode(s=s)
    assert from_zq.shape == from_s.shape == (1, 1, expected_decoded_length(16, [8, 5, 4, 2]))
    # z_q is the sum of the codebook vectors of s, up to the straight-through estimator's rounding.
    torch.testing.assert_close(from_zq, from_s, atol=1e-5, rtol=1e-4)
    # Unbatched codes and latents are accepted as batch 1.
    torch.testing.assert_close(model16.decode(s=s[0]), from_s, atol=0, rtol=0)
    torch.testing.assert_close(model16.decode(zq=zq[0]), from_zq, atol=0, rtol=0)
    # Narrower integer dtypes are accepted.
    torch.testing.assert_close(model16.decode(s=s.to(torch.int32)), from_s, atol=0, rtol=0)


@pytest.mark.parametrize("k", range(1, N_CODEBOOKS + 1))
def test_n_quantizers(model16, k):
    x = signal(3000, seed=15)
    full = model16.encode(x, sample_rate=16000)
    part = model16.encode(x, sample_rate=16000, n_quantizers=k)
    assert part.codes.shape == (1, k, full.codes.shape[-1])
    assert part.z_q.shape == full.z_q.shape
    assert torch.equal(part.codes, full.codes[:, :k])
    # Fewer codebooks than the model has decode, and agree with the k-codebook latent.
    audio = model16.decode(s=part.codes)
    assert audio.shape == model16.decode(s=full.codes).shape
    torch.testing.assert_close(audio, model16.decode(zq=part.z_q), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(audio, model16.decode(s=full.codes[:, :k]), atol=0, rtol=0)
    if k < N_CODEBOOKS:  # the later codebooks do contribute
        assert not torch.allclose(audio, model16.decode(s=full.codes), atol=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# The earlier model card's file helpers
@pytest.mark.parametrize("which", ["16k", "44k"])
@pytest.mark.parametrize("suffix", [".wav", ".flac"])
@pytest.mark.parametrize("shape", ["batch", "2d", "1d"])
def test_waveform_to_audiofile(model16, model44, tmp_path, which, suffix, shape):
    net = model16 if which == "16k" else model44
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


def test_long_ogg_file_is_written(tmp_path):
    """libsndfile's Vorbis encoder crashes the process on a few million samples in one call; writes go in blocks.
    In a child process, so that a regression fails this test rather than ending the test run."""
    script = (
        "import sys, numpy as np, soundfile, torch\n"
        "from dac_codec.audio_io import write_audio\n"
        "x = torch.from_numpy(np.random.default_rng(0).uniform(-0.3, 0.3, 90 * 44100).astype(np.float32))\n"
        "write_audio(sys.argv[1], x, 44100)\n"
        "print(soundfile.info(sys.argv[1]).frames)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "long.ogg")], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.split()[-1]) == 90 * 44100


def test_waveform_to_audiofile_rejects_batches_and_non_tensors(model16, tmp_path):
    with pytest.raises(ValueError, match="one mono signal"):
        model16.waveform_to_audiofile(torch.zeros(2, 1, 100), tmp_path / "x.wav")
    with pytest.raises(ValueError, match="one mono signal"):
        model16.waveform_to_audiofile(torch.zeros(1, 1, 0), tmp_path / "x.wav")
    with pytest.raises(TypeError, match="torch tensor"):
        model16.waveform_to_audiofile(np.zeros(100, np.float32), tmp_path / "x.wav")
    assert not (tmp_path / "x.wav").exists()


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_save_load_tensor_round_trip(model16, tmp_path, suffix):
    zq, s = model16.encode(signal(2000, seed=17), sample_rate=16000)
    for name, tensor in (("codes", s), ("latent", zq)):
        path = tmp_path / f"{name}{suffix}"
        model16.save_tensor(tensor, path)
        assert path.is_file()
        loaded = model16.load_tensor(path)
        assert loaded.dtype == tensor.dtype and loaded.shape == tensor.shape
        assert torch.equal(loaded, tensor)
        assert torch.equal(DacModel.load_tensor(str(path)), tensor)  # static, str paths too
    if suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(tmp_path / f"codes{suffix}", "pt") as f:  # really a safetensors file
            assert list(f.keys()) == ["tensor"]
    # Saved codes decode to what the original codes decode to.
    assert torch.equal(model16.decode(s=model16.load_tensor(tmp_path / f"codes{suffix}")), model16.decode(s=s))


class _Payload:
    """Unpickling this calls os.mkdir(marker): the classic pickle code-execution payload, made harmless."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_load_tensor_does_not_execute_pickled_code(model16, tmp_path):
    marker = tmp_path / "payload_ran"
    path = tmp_path / "codes.pt"
    torch.save(_Payload(marker), path)
    with pytest.raises(Exception, match="[Ww]eights.only") as info:
        model16.load_tensor(path)
    assert not isinstance(info.value, FileNotFoundError)
    assert not marker.exists(), "load_tensor ran code from the pickle"
    # Control: the payload is live, so the check above could fail; a plain unpickle runs it.
    torch.load(path, weights_only=False)
    assert marker.is_dir()


class _PlainObject:
    def __init__(self):
        self.codes = [1, 2, 3]


def test_load_tensor_refuses_a_pickled_class_instance(model16, tmp_path):
    path = tmp_path / "object.pt"
    torch.save(_PlainObject(), path)
    with pytest.raises(Exception, match="[Ww]eights.only"):
        model16.load_tensor(path)


def test_earlier_model_card_usage_verbatim(model16, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    soundfile.write("input.wav", signal(2, 5000, seed=21).T, 16000)  # a stereo file, as users have
    audio_filename = "input.wav"

    # --- as in the earlier model card ---
    zq, s = model16.encode(audio_filename)
    waveform = model16.decode(zq=zq)
    waveform = model16.decode(s=s)
    model16.waveform_to_audiofile(waveform, "out.wav")
    model16.save_tensor(s, "tokens.pt")
    s_loaded = model16.load_tensor("tokens.pt")
    model16.save_tensor(zq, "zq.pt")
    zq_loaded = model16.load_tensor("zq.pt")
    # ---

    frames = math.ceil(5000 / 320)
    assert zq.shape == (1, LATENT_DIM, frames) and s.shape == (1, N_CODEBOOKS, frames)
    assert waveform.shape == (1, 1, expected_decoded_length(frames, [8, 5, 4, 2]))
    assert soundfile.info("out.wav").samplerate == 16000
    assert soundfile.info("out.wav").frames == waveform.shape[-1]
    assert torch.equal(s_loaded, s) and torch.equal(zq_loaded, zq)


def test_load_tensor_of_a_non_tensor(model16, tmp_path):
    path = tmp_path / "dict.pt"
    torch.save({"codes": torch.zeros(1, 4, 2, dtype=torch.long)}, path)
    with pytest.raises(ValueError, match="holds a dict, not a tensor"):
        model16.load_tensor(path)


def test_load_tensor_of_a_missing_file(model16, tmp_path):
    for name in ("nothing.pt", "nothing.safetensors"):
        with pytest.raises(FileNotFoundError, match="nothing"):
            model16.load_tensor(tmp_path / name)


# ----------------------------------------------------------------------------------------------------------------
# Bad input
def _write_garbage(tmp_path):
    path = tmp_path / "garbage.wav"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    return path


def _write_wav(tmp_path):
    path = tmp_path / "speech.wav"
    soundfile.write(path, signal(1000), 16000)
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
    # audio in soundfile's (time, channels) layout, as `sf.read` returns it
    "(time, channels) array": (lambda m, p: m.encode(signal(4000, 2), sample_rate=16000), ValueError,
                               r"looks like \(time, channels\).*x\.T"),
    "(time, 1) array": (lambda m, p: m.encode(signal(4000, 1), sample_rate=16000), ValueError,
                        r"more channels \(4000\) than samples \(1\)"),
    "(batch, time, channels)": (lambda m, p: m.encode(torch.zeros(1, 4000, 2), sample_rate=16000), ValueError,
                                r"\(time, channels\)"),
    # a bool or float where an int is expected
    "sample_rate True": (lambda m, p: m.encode(torch.zeros(100), sample_rate=True), TypeError,
                         "sample_rate.*True.*bool"),
    "sample_rate float": (lambda m, p: m.encode(torch.zeros(100), sample_rate=16000.0), TypeError,
                          "sample_rate.*int"),
    "sample_rate str": (lambda m, p: m.encode(torch.zeros(100), sample_rate="16000"), TypeError, "sample_rate"),
    "path and sample_rate True": (lambda m, p: m.encode(_write_wav(p), sample_rate=True), TypeError, "sample_rate"),
    "n_quantizers True": (lambda m, p: m.encode(torch.zeros(100), sample_rate=16000, n_quantizers=True), TypeError,
                          r"n_quantizers.*\[1, 4\].*True"),
    "n_quantizers float": (lambda m, p: m.encode(torch.zeros(100), sample_rate=16000, n_quantizers=2.0), TypeError,
                           "n_quantizers"),
    "encode chunk str": (lambda m, p: m.encode(torch.zeros(100), sample_rate=16000, chunk_size_in_sec="1"),
                         TypeError, "chunk_size_in_sec"),
    "encode chunk True": (lambda m, p: m.encode(torch.zeros(100), sample_rate=16000, chunk_size_in_sec=True),
                          TypeError, "chunk_size_in_sec"),
    "encode chunk nan": (lambda m, p: m.encode(torch.zeros(100), sample_rate=16000, chunk_size_in_sec=float("nan")),
                         ValueError, "chunk_size_in_sec"),
    "encode chunk inf": (lambda m, p: m.encode(torch.zeros(100), sample_rate=16000, chunk_size_in_sec=float("inf")),
                         ValueError, "chunk_size_in_sec"),
    "decode chunk True": (lambda m, p: m.decode(s=_codes(1, 4, 3), chunk_size=True), TypeError, "chunk_size"),
    "decode chunk 2.5": (lambda m, p: m.decode(s=_codes(1, 4, 3), chunk_size=2.5), TypeError, "chunk_size.*int"),
    "decode chunk inf": (lambda m, p: m.decode(s=_codes(1, 4, 3), chunk_size=float("inf")), TypeError,
                         "chunk_size"),
    "mode int": (lambda m, p: m.decode(s=_codes(1, 4, 3), mode=1), ValueError, "mode"),
    # tensors without data, or not dense, or of the wrong kind
    "meta audio": (lambda m, p: m.encode(torch.zeros(100, device="meta"), sample_rate=16000), ValueError, "meta"),
    "sparse audio": (lambda m, p: m.encode(torch.zeros(1, 100).to_sparse(), sample_rate=16000), TypeError, "dense"),
    "complex audio": (lambda m, p: m.encode(torch.zeros(100, dtype=torch.complex64), sample_rate=16000), TypeError,
                      "floating point"),
    "bool audio": (lambda m, p: m.encode(torch.zeros(100, dtype=torch.bool), sample_rate=16000), TypeError,
                   "floating point"),
    "meta codes": (lambda m, p: m.decode(s=torch.zeros(1, 4, 3, dtype=torch.long, device="meta")), ValueError,
                   "meta"),
    "meta zq": (lambda m, p: m.decode(zq=torch.zeros(1, LATENT_DIM, 3, device="meta")), ValueError, "meta"),
    "numpy codes": (lambda m, p: m.decode(s=np.zeros((1, 4, 3), np.int64)), TypeError, "torch tensor.*ndarray"),
    "numpy zq": (lambda m, p: m.decode(zq=np.zeros((1, LATENT_DIM, 3), np.float32)), TypeError,
                 "torch tensor.*ndarray"),
    "integer zq": (lambda m, p: m.decode(zq=torch.zeros(1, LATENT_DIM, 3, dtype=torch.long)), TypeError,
                   "floating point"),
    "bool codes": (lambda m, p: m.decode(s=torch.zeros(1, 4, 3, dtype=torch.bool)), TypeError, "integer"),
    "1-D codes": (lambda m, p: m.decode(s=_codes(3)), ValueError, r"\(batch, n_codebooks, frames\)"),
    # a padded batch's lengths
    "fractional lengths": (lambda m, p: m.encode(torch.zeros(2, 1, 100), sample_rate=16000, lengths=[50.5, 100]),
                           TypeError, "lengths.*ints"),
    "float tensor lengths": (lambda m, p: m.encode(torch.zeros(2, 1, 100), sample_rate=16000,
                                                   lengths=torch.tensor([50.0, 100.0])), TypeError, "lengths"),
    "bool lengths": (lambda m, p: m.encode(torch.zeros(2, 1, 100), sample_rate=16000, lengths=[True, 100]),
                     TypeError, "lengths"),
    "lengths of a path": (lambda m, p: m.encode(_write_wav(p), lengths=[10]), ValueError, "padded batch"),
    # files to write
    "audio file in a missing folder": (lambda m, p: m.waveform_to_audiofile(torch.zeros(100), p / "no" / "x.wav"),
                                       FileNotFoundError, "folder .*no.* does not exist"),
    "decoded file in a missing folder": (lambda m, p: m.decode_to_audiofile(p / "no" / "x.wav", s=_codes(1, 4, 3)),
                                         FileNotFoundError, "does not exist"),
    "tensor file in a missing folder": (lambda m, p: m.save_tensor(torch.zeros(3), p / "no" / "x.pt"),
                                        FileNotFoundError, "does not exist"),
    "audio file that is a folder": (lambda m, p: m.waveform_to_audiofile(torch.zeros(100), p), ValueError,
                                    "is a folder"),
    "unknown audio extension": (lambda m, p: m.waveform_to_audiofile(torch.zeros(100), p / "x.xyz"), ValueError,
                                r"extension such as .*\.wav"),
    "save a non-tensor": (lambda m, p: m.save_tensor([1, 2], p / "x.pt"), TypeError, "torch tensor.*list"),
    "meta waveform": (lambda m, p: m.waveform_to_audiofile(torch.zeros(100, device="meta"), p / "x.wav"),
                      ValueError, "meta"),
    # forward
    "forward numpy": (lambda m, p: m(np.zeros((1, 1, 640), np.float32)), TypeError, "torch tensor"),
    "forward integer": (lambda m, p: m(torch.zeros(1, 1, 640, dtype=torch.long)), TypeError, "float audio"),
    "forward empty": (lambda m, p: m(torch.zeros(1, 1, 0)), ValueError, r"\(batch, 1, samples\)"),
    "forward meta": (lambda m, p: m(torch.zeros(1, 1, 640, device="meta")), ValueError, "meta"),
    "forward n_quantizers True": (lambda m, p: m(torch.zeros(1, 1, 640), n_quantizers=True), TypeError,
                                  "n_quantizers"),
    # streams: checked when called, or at the block that breaks the stream
    "encode_stream of one tensor": (lambda m, p: m.encode_stream(torch.zeros(1, 100), sample_rate=16000),
                                    TypeError, "iterable of blocks, not one tensor"),
    "encode_stream of an int": (lambda m, p: m.encode_stream(5, sample_rate=16000), TypeError, "iterable"),
    "encode_stream sample_rate True": (lambda m, p: m.encode_stream([torch.zeros(100)], sample_rate=True),
                                       TypeError, "sample_rate"),
    "encode_stream n_quantizers 9": (lambda m, p: m.encode_stream([torch.zeros(100)], 16000, n_quantizers=9),
                                     ValueError, "n_quantizers"),
    "encode_stream channels change": (lambda m, p: list(m.encode_stream([torch.zeros(2, 100), torch.zeros(1, 100)],
                                                                        sample_rate=16000)),
                                      ValueError, r"Block 1 .*\(1, 1\).*began with \(1, 2\)"),
    "encode_stream batch change": (lambda m, p: list(m.encode_stream([torch.zeros(1, 1, 900),
                                                                      torch.zeros(2, 1, 100)], sample_rate=16000)),
                                   ValueError, r"Block 1 .*\(2, 1\).*began with \(1, 1\)"),
    "encode_stream (time, channels) block": (lambda m, p: list(m.encode_stream([signal(2, 500), signal(500, 2)],
                                                                               sample_rate=16000)),
                                             ValueError, r"block 1.*\(time, channels\)"),
    "encode_stream nan block": (lambda m, p: list(m.encode_stream([torch.zeros(100), torch.full((9,), np.nan)],
                                                                  sample_rate=16000)), ValueError, "block 1.*NaN"),
    "encode_stream of nothing": (lambda m, p: list(m.encode_stream([], sample_rate=16000)), ValueError,
                                 "no samples"),
    "encode_stream of empty blocks": (lambda m, p: list(m.encode_stream([torch.zeros(0)] * 3, sample_rate=8000)),
                                      ValueError, "no samples"),
    "decode_stream codebooks change": (lambda m, p: list(m.decode_stream([_codes(1, 4, 3), _codes(1, 3, 3)])),
                                       ValueError, r"Block 1 .*\(1, 3\).*began with \(1, 4\)"),
    "decode_stream batch change": (lambda m, p: list(m.decode_stream([_codes(2, 4, 3), _codes(1, 4, 3)])),
                                   ValueError, r"Block 1 .*\(1, 4\).*began with \(2, 4\)"),
    "decode_stream of nothing": (lambda m, p: list(m.decode_stream([])), ValueError, "no frames"),
    "decode_stream float block": (lambda m, p: list(m.decode_stream([_codes(1, 4, 3, dtype=torch.float32)])),
                                  TypeError, "block 0.*integer"),
    "decode_stream chunk 1.5": (lambda m, p: m.decode_stream([_codes(1, 4, 3)], chunk_size=1.5), TypeError,
                                "chunk_size"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_rejected_with_a_helpful_error(model16, tmp_path, case):
    call, error, match = BAD_INPUTS[case]
    with pytest.raises(error, match=match):
        call(model16, tmp_path)


def test_codes_with_an_empty_batch_are_rejected(model16):
    with pytest.raises(ValueError, match="batch and frames >= 1"):
        model16.decode(s=_codes(0, 4, 3))


def test_fractional_seconds_are_a_valid_encode_chunk(model16):
    assert model16.encode(torch.zeros(100), sample_rate=16000, chunk_size_in_sec=2.5).codes.shape[-1] == 1


def test_bad_codes_write_no_file(model16, tmp_path):
    with pytest.raises(ValueError, match="codebooks"):
        model16.decode_to_audiofile(tmp_path / "out.wav", s=_codes(1, 5, 3))
    assert not (tmp_path / "out.wav").exists()


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
    audio, codes, z_q, *_ = model44(x, return_dict=False)
    assert torch.equal(audio, out.audio) and torch.equal(codes, out.codes)


def test_forward_n_quantizers_and_gradients(model44):
    x = torch.from_numpy(signal(1, 1, 1000, seed=18))
    out = model44(x, n_quantizers=2)
    assert out.codes.shape == (1, 2, 2)
    assert torch.equal(out.codes, model44.encode(x, sample_rate=44100, n_quantizers=2).codes)
    model = copy.deepcopy(model44)  # the session's model stays without gradients
    model(x).audio.square().mean().backward()  # forward is the training path: differentiable
    for name in ("decoder.conv2.weight", "decoder.block.0.conv_t1.weight", "quantizer.quantizers.0.out_proj.weight"):
        assert model.get_parameter(name).grad.abs().sum() > 0, name


@pytest.mark.parametrize("length", [1, 300, 321, 700])
def test_forward_crops_to_input_length_16k(model16, length):
    # Lengths whose padded frames decode to at least `length` samples (320 * frames - 8 >= length).
    out = model16(torch.from_numpy(signal(1, 1, length, seed=length)))
    assert out.audio.shape == (1, 1, length)


@pytest.mark.parametrize("length", [320, 640, 315, 319])
def test_forward_is_short_like_the_reference_near_whole_frames_16k(model16, length):
    """The stride-5 decoder returns 320 * frames - 8 samples: for lengths within 8 of a multiple of the hop the
    cropped output is shorter than the input, exactly as in the reference `DAC.forward` (documented)."""
    out = model16(torch.from_numpy(signal(1, 1, length, seed=length)))
    frames = math.ceil(length / 320)
    assert out.audio.shape == (1, 1, min(length, 320 * frames - 8))


# ----------------------------------------------------------------------------------------------------------------
# Mode, save and load
def test_model_is_in_eval_mode_after_construction():
    model = tiny_model()
    assert model.training is False
    assert not any(m.training for m in model.modules())


def test_save_pretrained_from_pretrained_gives_identical_outputs(model16, tmp_path):
    model16.save_pretrained(tmp_path)
    assert (tmp_path / "config.json").is_file()
    loaded = DacModel.from_pretrained(tmp_path)
    assert loaded.training is False
    ignore = {"_name_or_path"}  # transformers records where it loaded from
    assert {k: v for k, v in loaded.config.to_dict().items() if k not in ignore} == {
        k: v for k, v in model16.config.to_dict().items() if k not in ignore
    }
    state, loaded_state = model16.state_dict(), loaded.state_dict()
    assert state.keys() == loaded_state.keys()
    assert all(torch.equal(state[k], loaded_state[k]) for k in state)

    x = signal(2, 3000, seed=19)
    a, b = model16.encode(x, sample_rate=16000), loaded.encode(x, sample_rate=16000)
    assert torch.equal(a.codes, b.codes) and torch.equal(a.z_q, b.z_q)
    assert torch.equal(model16.decode(s=a.codes), loaded.decode(s=b.codes))


def test_a_differently_seeded_model_differs(model16):
    # Guards the test above: equality there is not because every model computes the same thing.
    other = tiny_model(seed=123)
    x = signal(3000, seed=19)
    assert not torch.equal(model16.encode(x, sample_rate=16000).z_q, other.encode(x, sample_rate=16000).z_q)


# ----------------------------------------------------------------------------------------------------------------
# Weight norm
def test_apply_and_remove_weight_norm_keep_outputs(tmp_path):
    """Weight norm recomputes each weight as g * v / ||v||, equal to within an ulp, which moves outputs by float
    rounding: latents and audio within 1e-5 of their peak, codes identical."""
    model = tiny_model(seed=2)
    x = signal(4000, seed=20)
    before = model.encode(x, sample_rate=16000)
    audio_before = model.decode(zq=before.z_q)
    z_tol, audio_tol = 1e-5 * before.z_q.abs().max().item(), 1e-5 * audio_before.abs().max().item()
    keys_before = set(model.state_dict())
    assert not any("parametrizations" in k for k in keys_before)

    model.apply_weight_norm()
    keys_normed = set(model.state_dict())
    assert any(k.endswith("parametrizations.weight.original0") for k in keys_normed)
    assert any(k.endswith("parametrizations.weight.original1") for k in keys_normed)
    assert "decoder.conv2.weight" not in keys_normed
    normed = model.encode(x, sample_rate=16000)
    torch.testing.assert_close(normed.z_q, before.z_q, atol=z_tol, rtol=0)
    assert torch.equal(normed.codes, before.codes)
    torch.testing.assert_close(model.decode(zq=before.z_q), audio_before, atol=audio_tol, rtol=0)

    model.remove_weight_norm()
    assert set(model.state_dict()) == keys_before  # (registration order may differ: weight now after bias)
    assert "decoder.conv2.weight" in model.state_dict()
    after = model.encode(x, sample_rate=16000)
    torch.testing.assert_close(after.z_q, before.z_q, atol=z_tol, rtol=0)
    assert torch.equal(after.codes, before.codes)
    torch.testing.assert_close(model.decode(zq=before.z_q), audio_before, atol=audio_tol, rtol=0)

    model.remove_weight_norm()  # idempotent
    assert set(model.state_dict()) == keys_before
    # The folded checkpoint loads as a plain model.
    model.save_pretrained(tmp_path)
    loaded = DacModel.from_pretrained(tmp_path)
    torch.testing.assert_close(loaded.decode(zq=before.z_q), audio_before, atol=audio_tol, rtol=0)
