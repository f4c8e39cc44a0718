"""Chunked and streamed processing equal whole-signal processing: identical codes, audio within 1e-5, same length.

Tiny configs keep the real strides and kernels of the presets ([2, 4, 5, 8] for 16 and 24 kHz, [2, 4, 8, 8] for
44.1 kHz), so the geometry is the real one; two full-size models check the same at scale. Audio tolerance: 1e-5
absolute on outputs bounded by tanh to [-1, 1], about 100 float32 ulps of the signal's scale.
"""

import random

import dac_package
import pytest
import torch

modeling = dac_package.load()
chunking = __import__("dac_codec.chunking", fromlist=["chunking"])
DacConfig, DacModel = modeling.DacConfig, modeling.DacModel
AUDIO_TOLERANCE = 1e-5
RATES = {"16khz/24khz": ([2, 4, 5, 8], 16000), "44khz": ([2, 4, 8, 8], 44100)}


def tiny_model(rates, sampling_rate, seed=0):
    torch.manual_seed(seed)
    config = DacConfig(encoder_dim=2, encoder_rates=rates, latent_dim=16, decoder_dim=32,
                       decoder_rates=rates[::-1], n_codebooks=3, codebook_size=32, codebook_dim=4,
                       sampling_rate=sampling_rate)
    model = DacModel(config)
    with torch.no_grad():  # non-trivial Snake frequencies and biases, as trained models have
        for name, p in model.named_parameters():
            if name.endswith("alpha"):
                p.uniform_(0.3, 3.0)
            elif name.endswith("bias"):
                p.normal_(0, 0.05)
            elif "conv" in name and name.endswith("weight"):
                p.mul_(8)  # keep activations well above float rounding through the stack
    return model


@pytest.fixture(scope="module", params=list(RATES))
def model(request):
    return tiny_model(*RATES[request.param])


def audio_of(n_samples, batch=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 0.5 * torch.randn(batch, 1, n_samples, generator=g)


def lengths(hop):
    rng = random.Random(hop)
    return [1, hop - 1, hop, hop + 1, 7 * hop + 3, *rng.sample(range(2, 40 * hop), 3)]


@pytest.mark.parametrize("module_name", ["encoder", "decoder"])
def test_receptive_field_matches_gradients(model, module_name):
    """input_span, from the layers' geometry, is exactly the support of the gradient of one output."""
    module = getattr(model, module_name)
    layers = chunking.conv_geometry(module)
    channels = 1 if module_name == "encoder" else model.config.latent_dim
    n_in = 60 * model.hop_length if module_name == "encoder" else 60
    x = torch.randn(1, channels, n_in, requires_grad=True)
    y = module(x)
    index = y.shape[-1] // 2
    y[0, :, index].sum().backward()
    support = x.grad.abs().sum(dim=(0, 1)).nonzero().flatten()
    lo, hi = chunking.input_span(layers, index, index)
    assert (support.min().item(), support.max().item()) == (lo, hi)
    assert chunking.output_length(layers, n_in) == y.shape[-1]


def test_stream_latency_is_the_receptive_field(model):
    hop, rate = model.hop_length, model.config.sampling_rate
    _, last_sample = chunking.input_span(chunking.conv_geometry(model.encoder), 0, 0)
    _, last_frame = chunking.input_span(chunking.conv_geometry(model.decoder), 0, hop - 1)
    assert model.stream_latency["encode"] == (last_sample + 1 - hop) / rate > 0
    assert model.stream_latency["decode"] == last_frame / model.config.frame_rate > 0


def test_chunked_encode_equals_whole(model):
    rate, frame_rate = model.config.sampling_rate, model.config.frame_rate
    for n in lengths(model.hop_length):
        audio = audio_of(n, batch=2, seed=n)
        z_q, codes = model.encode(audio, sample_rate=rate, chunk_size_in_sec=0)
        assert codes.shape[-1] == -(-n // model.hop_length)
        for chunk_frames in (1, 2, 3, 5, 9, 17):
            z_q_c, codes_c = model.encode(audio, sample_rate=rate, chunk_size_in_sec=chunk_frames / frame_rate)
            assert torch.equal(codes_c, codes), (n, chunk_frames)
            assert (z_q_c - z_q).abs().max() <= AUDIO_TOLERANCE * z_q.abs().max()


def test_chunked_decode_equals_whole(model):
    rng = random.Random(0)
    for n_frames in (1, 2, 3, 11, 24, rng.randrange(30, 60)):
        codes = torch.randint(0, model.config.codebook_size, (2, model.config.n_codebooks, n_frames))
        whole = model.decode(s=codes, chunk_size=0)
        assert whole.shape == (2, 1, model.num_samples(n_frames))
        for chunk in (1, 2, 3, 4, 7, 16):
            chunked = model.decode(s=codes, chunk_size=chunk)
            assert chunked.shape == whole.shape
            assert (chunked - whole).abs().max() <= AUDIO_TOLERANCE, (n_frames, chunk)


def random_split(tensor, n_pieces, rng):
    cuts = sorted(rng.sample(range(1, tensor.shape[-1]), min(n_pieces, tensor.shape[-1] - 1)))
    return [tensor[..., a:b] for a, b in zip([0, *cuts], [*cuts, tensor.shape[-1]])]


def test_encode_stream_equals_offline(model):
    rng = random.Random(1)
    rate = model.config.sampling_rate
    for n in lengths(model.hop_length):
        audio = audio_of(n, seed=n)
        _, codes = model.encode(audio, sample_rate=rate, chunk_size_in_sec=0)
        for n_blocks in (1, 3, 12):
            for step_sec in (0, 2 / model.config.frame_rate):
                blocks = random_split(audio, n_blocks, rng)
                streamed = list(model.encode_stream(blocks, sample_rate=rate, chunk_size_in_sec=step_sec))
                assert torch.equal(torch.cat(streamed, dim=-1), codes), (n, n_blocks, step_sec)


def test_encode_stream_yields_as_soon_as_determined(model):
    """A frame's codes come out as soon as the audio reaches the end of the frame's receptive field."""
    rate, hop = model.config.sampling_rate, model.hop_length
    _, last_sample = chunking.input_span(chunking.conv_geometry(model.encoder), 0, 0)
    audio = audio_of(30 * hop)
    block, received = 100, 0

    def blocks():
        nonlocal received
        for start in range(0, audio.shape[-1], block):
            received = min(start + block, audio.shape[-1])
            yield audio[..., start : start + block]

    yielded = 0
    for codes in model.encode_stream(blocks(), sample_rate=rate, chunk_size_in_sec=0):
        yielded += codes.shape[-1]
        if received < audio.shape[-1]:  # frame f is determined once samples up to f * hop + last_sample arrived
            assert yielded == (received - 1 - last_sample) // hop + 1
    assert yielded == 30


def test_decode_stream_equals_offline(model):
    rng = random.Random(2)
    for n_frames in (1, 2, 13, 40):
        codes = torch.randint(0, model.config.codebook_size, (1, 2, n_frames))
        whole = model.decode(s=codes, chunk_size=0)
        for n_blocks in (1, 4, n_frames):
            for max_frames in (0, 3):
                streamed = torch.cat(list(model.decode_stream(random_split(codes, n_blocks, rng), max_frames)), -1)
                assert streamed.shape == whole.shape
                assert (streamed - whole).abs().max() <= AUDIO_TOLERANCE, (n_frames, n_blocks, max_frames)


def test_overlap_average_mode(model):
    """The seed card's averaged chunks: same length, and the same as exact when one chunk spans everything;
    approximate otherwise, which is why exact is the default."""
    codes = torch.randint(0, model.config.codebook_size, (1, model.config.n_codebooks, 40))
    whole = model.decode(s=codes, chunk_size=0)
    averaged = model.decode(s=codes, chunk_size=10, mode="overlap_average")
    assert averaged.shape == whole.shape and torch.isfinite(averaged).all()
    one_chunk = model.decode(s=codes, chunk_size=40, mode="overlap_average")
    assert (one_chunk - whole).abs().max() <= AUDIO_TOLERANCE
    assert (averaged - whole).abs().max() > AUDIO_TOLERANCE


@pytest.mark.parametrize("preset", ["24khz", "44khz"])
def test_full_size_chunked_equals_whole(preset):
    torch.manual_seed(0)
    model = DacModel(DacConfig.from_preset(preset))
    rate = model.config.sampling_rate
    audio = audio_of(int(0.7 * rate), seed=3)
    z_q, codes = model.encode(audio, sample_rate=rate, chunk_size_in_sec=0)
    assert torch.equal(model.encode(audio, sample_rate=rate, chunk_size_in_sec=0.2).codes, codes)
    whole = model.decode(zq=z_q, chunk_size=0)
    chunked = model.decode(zq=z_q, chunk_size=16)
    assert chunked.shape == whole.shape
    assert (chunked - whole).abs().max() <= AUDIO_TOLERANCE


def test_decode_to_audiofile_writes_what_decode_returns(model, tmp_path):
    import soundfile

    codes = torch.randint(0, model.config.codebook_size, (1, model.config.n_codebooks, 37))
    expected = model.decode(s=codes, chunk_size=0)[0, 0]
    model.decode_to_audiofile(tmp_path / "out.flac", s=codes, chunk_size=5)
    model.decode_to_audiofile(tmp_path / "out.wav", s=codes, chunk_size=5)
    for name, tolerance in (("out.wav", 2.0**-14), ("out.flac", 2.0**-14)):  # 16-bit PCM: rounding and scaling
        data, rate = soundfile.read(tmp_path / name, dtype="float32")
        assert rate == model.config.sampling_rate and data.shape == expected.shape
        assert abs(torch.from_numpy(data) - expected).max() <= tolerance
    with pytest.raises(ValueError, match="one signal"):
        model.decode_to_audiofile(tmp_path / "batch.wav", s=codes.repeat(2, 1, 1))


def test_bfloat16_model_runs_close_to_float32(model):
    """The reduced-precision path: same shapes, codes mostly equal, audio within bf16's ~3 significant digits."""
    import copy

    rate = model.config.sampling_rate
    audio = audio_of(20 * model.hop_length, seed=5)
    z_q, codes = model.encode(audio, sample_rate=rate)
    reference = model.decode(s=codes)
    half = copy.deepcopy(model).to(torch.bfloat16)
    z_q16, codes16 = half.encode(audio, sample_rate=rate)
    assert codes16.shape == codes.shape and z_q16.dtype == torch.bfloat16
    assert (codes16 == codes).float().mean() > 0.5
    audio16 = half.decode(s=codes)
    assert audio16.shape == reference.shape and audio16.dtype == torch.bfloat16
    error = (audio16.float() - reference).pow(2).sum() / reference.pow(2).sum()
    assert error < 10 ** (-20 / 10)  # SNR above 20 dB


def test_padded_batch_with_lengths_equals_items_one_by_one(model):
    rate, hop = model.config.sampling_rate, model.hop_length
    lengths = [5 * hop + 7, 1, 12 * hop]
    batch = torch.zeros(3, 1, max(lengths))
    signals = [audio_of(n, seed=n) for n in lengths]
    for i, signal in enumerate(signals):
        batch[i, :, : lengths[i]] = signal[0]
        batch[i, :, lengths[i]:] = 0.7  # padding that must not leak into the codes
    z_q, codes, frame_lengths = model.encode(batch, sample_rate=rate, lengths=torch.tensor(lengths))
    assert frame_lengths.tolist() == [-(-n // hop) for n in lengths]
    for i, signal in enumerate(signals):
        alone = model.encode(signal, sample_rate=rate)
        assert torch.equal(codes[i, :, : frame_lengths[i]], alone.codes[0])
        assert (codes[i, :, frame_lengths[i]:] == 0).all()
    with pytest.raises(ValueError, match="lengths"):
        model.encode(batch, sample_rate=rate, lengths=[1, 2])
    with pytest.raises(ValueError, match="lengths"):
        model.encode(batch, sample_rate=rate, lengths=[1, 2, max(lengths) + 1])


def test_context_windows_cover_every_frame_once():
    rng = random.Random(4)
    for _ in range(200):
        n, chunk, left, right = rng.randrange(1, 60), rng.randrange(1, 20), rng.randrange(0, 6), rng.randrange(0, 6)
        windows = chunking.plan_context_windows(n, chunk, left, right)
        length = min(n, chunk + left + right)
        assert [keep for _, keep, _ in windows] == list(range(0, n, chunk))
        assert [stop for _, _, stop in windows] == [min(k + chunk, n) for k in range(0, n, chunk)]
        for start, keep, stop in windows:
            assert 0 <= start and start + length <= n  # inside the signal, so every window has one length
            # the kept frames have their context in the window, or sit at an end of the signal
            assert start <= max(0, keep - left) and min(n, stop + right) <= start + length


@pytest.fixture
def small_batches(monkeypatch):
    """Batched windows of any chunk size, a few windows a batch: many windows and batches on short signals."""
    monkeypatch.setattr(modeling, "MIN_CHUNK_OVER_CONTEXT", 0)
    monkeypatch.setattr(modeling, "BATCH_ELEMENTS", 20_000)


@torch.inference_mode()
def test_batched_windows_equal_whole(model, small_batches):
    """The accelerator path (batches of windows with context) gives whole-signal codes and audio; run here on
    the CPU, where `encode` / `decode` stream instead."""
    rate, hop = model.config.sampling_rate, model.hop_length
    for n in lengths(hop):
        audio = audio_of(n, batch=2, seed=n)
        z_q, codes = model.encode(audio, sample_rate=rate, chunk_size_in_sec=0)
        decoded = model.decode(zq=z_q, chunk_size=0)
        for chunk in (1, 2, 5, 17, None):  # None: windows as long as BATCH_ELEMENTS allows
            z_q_w, codes_w = model._encode_windows(audio, model.config.n_codebooks, chunk)
            assert torch.equal(codes_w, codes), (n, chunk)
            assert (z_q_w - z_q).abs().max() <= AUDIO_TOLERANCE * z_q.abs().max()
            decoded_w = model._decode_windows(z_q, None, chunk)
            assert decoded_w.shape == decoded.shape
            assert (decoded_w - decoded).abs().max() <= AUDIO_TOLERANCE, (n, chunk)
        from_codes = model.decode(s=codes, chunk_size=0)
        assert (model._decode_windows(None, codes, 3) - from_codes).abs().max() <= AUDIO_TOLERANCE
