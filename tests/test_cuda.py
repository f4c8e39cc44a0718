"""CUDA: `encode` and `decode` run on the GPU as batches of windows with receptive-field context, and give the
CPU's (whole-signal) results. Skipped where no CUDA device exists; run on one with `pytest tests/test_cuda.py`.

Tolerances: fp32 with TF32 off must reproduce the CPU up to summation order. GPU kernels sum in another order than
oneDNN, which moves latents by float rounding and so flips the rare near-ties of the nearest-codebook search (about
1 code in 2000 with these random weights): codes at least 99% equal, and audio decoded from the same codes within
1e-4 (outputs are bounded by tanh to [-1, 1]). Chunk sizes and streams on one device: same tolerances. bf16 and fp16
are checked as the reduced-precision path is published: most codes equal, audio above 20 dB SNR against fp32.
"""

import copy

import pytest
import torch

from dac_codec.tools.random_weights import random_model, reference_model, sample_audio

from conftest import DacConfig

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
AUDIO_TOLERANCE = 1e-4
CODE_AGREEMENT = 0.99


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return (a.cpu() == b.cpu()).float().mean().item()


@pytest.fixture(autouse=True)
def no_tf32():
    """True fp32 on the GPU, to compare with the CPU; TF32 (torch's default for cuDNN convolutions) rounds
    products to 10 mantissa bits."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.fixture(scope="module", params=["16khz", "44khz"])
def models(request):
    cpu = random_model(DacConfig.from_preset(request.param))
    return cpu, copy.deepcopy(cpu).cuda()


def test_cuda_encode_decode_equal_cpu(models):
    cpu, gpu = models
    rate = cpu.config.sampling_rate
    audio = sample_audio(rate, 4.3, seed=1).repeat(2, 1, 1)  # a batch of 2; several windows each
    audio[1] *= 0.5
    z_q, codes = cpu.encode(audio, sample_rate=rate)
    z_q_gpu, codes_gpu = gpu.encode(audio.cuda(), sample_rate=rate)
    assert codes_gpu.is_cuda and z_q_gpu.is_cuda and agreement(codes_gpu, codes) >= CODE_AGREEMENT
    decoded = cpu.decode(s=codes)
    decoded_gpu = gpu.decode(s=codes.cuda())
    assert decoded_gpu.is_cuda and decoded_gpu.shape == decoded.shape
    assert (decoded_gpu.cpu() - decoded).abs().max() <= AUDIO_TOLERANCE


def test_cuda_chunk_sizes_and_streams_agree(models):
    _, gpu = models
    rate = gpu.config.sampling_rate
    audio = sample_audio(rate, 6.1, seed=2).cuda()
    codes = gpu.encode(audio, sample_rate=rate, chunk_size_in_sec=0).codes  # one window: the whole signal
    assert agreement(gpu.encode(audio, sample_rate=rate, chunk_size_in_sec=2.5).codes, codes) >= CODE_AGREEMENT
    streamed = torch.cat(list(gpu.encode_stream(audio.split(rate // 3, -1), sample_rate=rate)), -1)
    assert agreement(streamed, codes) >= CODE_AGREEMENT
    whole = gpu.decode(s=codes, chunk_size=0)
    assert (gpu.decode(s=codes, chunk_size=200) - whole).abs().max() <= AUDIO_TOLERANCE
    assert (torch.cat(list(gpu.decode_stream(codes.split(50, -1))), -1) - whole).abs().max() <= AUDIO_TOLERANCE


def test_cuda_padded_batch_packs_items_as_if_alone(models):
    """A padded batch with `lengths` packs its items' windows into shared batches: each item's codes are those of
    the item encoded alone on the same device (up to near-ties), whatever the padding holds."""
    _, gpu = models
    rate = gpu.config.sampling_rate
    lengths = [int(rate * 0.21), int(rate * 7.3), 1, int(rate * 2.9)]
    batch = torch.full((len(lengths), 1, max(lengths)), 0.7, device="cuda")
    for i, n in enumerate(lengths):
        batch[i, :, :n] = sample_audio(rate, n / rate, seed=i)[..., :n].cuda()
    _, codes, frames = gpu.encode(batch, sample_rate=rate, lengths=lengths)
    for i, n in enumerate(lengths):
        alone = gpu.encode(batch[i : i + 1, :, :n], sample_rate=rate).codes[0]
        assert agreement(codes[i, :, : frames[i]], alone) >= CODE_AGREEMENT


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_half_precision_close_to_float32(models, dtype):
    _, gpu = models
    rate = gpu.config.sampling_rate
    audio = sample_audio(rate, 3.0, seed=3).cuda()
    codes = gpu.encode(audio, sample_rate=rate).codes
    reference = gpu.decode(s=codes)
    half = copy.deepcopy(gpu).to(dtype)
    codes_half = half.encode(audio, sample_rate=rate).codes
    assert codes_half.shape == codes.shape and (codes_half == codes).float().mean() > 0.5
    assert (codes_half[:, 0] == codes[:, 0]).float().mean() > 0.8  # the first codebook carries the most
    decoded = half.decode(s=codes)
    assert decoded.dtype == dtype and torch.isfinite(decoded).all()
    snr = 10 * torch.log10(reference.pow(2).sum() / (decoded.float() - reference).pow(2).sum())
    assert snr > 20, snr


def test_cuda_matches_reference_package(tmp_path):
    """Both on the GPU, full-size 44.1 kHz with perturbed random weights: our windows give the reference's codes
    (up to near-ties) and audio."""
    pytest.importorskip("dac", reason="the reference package is a test dependency")
    from dac_codec.tools.loading import model_from_original

    reference = reference_model("44khz")
    reference.save(str(tmp_path / "weights.pth"), package=False)
    ours = model_from_original(str(tmp_path / "weights.pth")).cuda()
    reference = reference.cuda()
    audio = sample_audio(44100, 3.0, seed=4).cuda()
    with torch.no_grad():
        z, codes, *_ = reference.encode(reference.preprocess(audio, 44100))
        audio_ref = reference.decode(z)
        audio_ref_codes = reference.decode(reference.quantizer.from_codes(codes)[0])
    assert agreement(ours.encode(audio, sample_rate=44100).codes, codes) >= CODE_AGREEMENT
    decoded = ours.decode(zq=z)
    assert decoded.shape == audio_ref.shape
    assert (ours.decode(s=codes) - audio_ref_codes).abs().max() <= AUDIO_TOLERANCE
    assert (decoded - audio_ref).abs().max() <= AUDIO_TOLERANCE
