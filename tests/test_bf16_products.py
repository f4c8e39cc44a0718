"""bf16 products under `torch.set_float32_matmul_precision("medium")`: on CPUs that take them (oneDNN with AMX) the
convs that do not decide codes run as per-tap GEMMs, whose products oneDNN then takes in bf16 and sums in float32;
the convs and the nearest-code search that decide codes stay float32. On other CPUs the setting changes nothing.

Tolerances: 1e-5 of the output's peak between float32 sums taken in another order (as test_streaming.py); 1e-2 of
the peak for bf16 products, whose operands are rounded to 8 significant bits (2^-9 relative each).
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dac_codec import chunking, streaming
from dac_codec import dac_layers as layers

from conftest import tiny_model, tone

FLOAT32 = 1e-5
BF16 = 1e-2


def cpu_takes_bf16_products():
    torch.set_float32_matmul_precision("medium")
    try:
        return streaming.cpu_takes_bf16_products()
    finally:
        torch.set_float32_matmul_precision("highest")


TAKES_BF16 = cpu_takes_bf16_products()
needs_bf16 = pytest.mark.skipif(not TAKES_BF16, reason="this CPU's float32 matmuls take no bf16 products (AMX does)")


@pytest.fixture
def medium():
    """torch's float32 matmuls with bf16 products for the test, restored after it."""
    torch.set_float32_matmul_precision("medium")
    yield
    torch.set_float32_matmul_precision("highest")


def peak_error(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def rounded(t):
    return t.bfloat16().float()


@pytest.mark.parametrize("kernel, stride, dilation", [(7, 1, 1), (7, 1, 9), (2, 1, 1), (4, 2, 1), (1, 1, 1)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_tap_gemms_give_the_conv(kernel, stride, dilation, with_bias):
    """One GEMM per tap is the conv, in float32 at torch's default precision."""
    g = torch.Generator().manual_seed(kernel * 100 + stride * 10 + dilation)
    weight, bias = torch.randn(24, 16, kernel, generator=g), torch.randn(24, generator=g) if with_bias else None
    x = torch.randn(2, 300, 16, generator=g)
    taps = weight.permute(2, 1, 0).contiguous()
    expected = F.conv1d(x.transpose(1, 2), weight, bias, stride, 0, dilation).transpose(1, 2)
    assert peak_error(streaming.tap_gemms(x, taps, bias, stride, dilation), expected) <= FLOAT32


def test_matmul_precision_follows_torchs_setting(medium):
    """The precision is torch's setting; the model takes bf16 products under "medium" where the CPU does."""
    from dac_codec.modeling_dac import DacModel

    assert streaming.matmul_precision(torch.device("cpu")) == "bf16"
    assert DacModel.takes_bf16_products() == TAKES_BF16 == DacModel.takes_bf16_products("cpu")
    torch.set_float32_matmul_precision("highest")
    assert streaming.matmul_precision(torch.device("cpu")) == "ieee"
    assert not DacModel.takes_bf16_products()


@torch.no_grad()
def test_under_medium_only_the_convs_that_may_take_bf16_products(medium):
    """On a CPU that takes bf16 products, a conv that may (`bf16=True`) runs with them: the conv of its rounded
    operands, summed in float32. One that may not stays float32, short inputs (which torch would run as a GEMM) as
    long ones. On a CPU that takes none (an AMD Zen 4 has AVX512-BF16 but no AMX) every conv keeps its float32
    route, which the per-tap GEMMs would only slow down."""
    g = torch.Generator().manual_seed(0)
    conv = nn.Conv1d(64, 64, 7, dilation=3, padding=9)
    for steps in (150, 3000):
        x = torch.randn(1, steps, 64, generator=g)
        torch.set_float32_matmul_precision("highest")  # torch runs small convs as GEMMs, which "medium" changes
        exact = conv(x.transpose(1, 2)).transpose(1, 2)
        emulated = F.conv1d(rounded(x).transpose(1, 2), rounded(conv.weight), conv.bias, 1, 9, 3).transpose(1, 2)
        torch.set_float32_matmul_precision("medium")
        fast = streaming.ConvStream.of(conv, streaming.Scratch(), bf16=True)
        kept = streaming.ConvStream.of(conv, streaming.Scratch())
        assert kept.taps is None and (fast.taps is not None) == TAKES_BF16
        products = fast.step(x, final=True)
        if TAKES_BF16:
            assert peak_error(products, emulated) <= FLOAT32
            assert FLOAT32 * 10 < peak_error(products, exact) <= BF16  # rounded indeed
        else:
            assert peak_error(products, exact) <= FLOAT32
        assert peak_error(kept.step(x, final=True), exact) <= FLOAT32


@needs_bf16
@torch.no_grad()
def test_taps_are_derived_once_per_model_and_weights(medium):
    conv = nn.Conv1d(8, 8, 7, padding=3)
    first = streaming.ConvStream.of(conv, streaming.Scratch(), bf16=True).taps
    assert streaming.ConvStream.of(conv, streaming.Scratch(), bf16=True).taps is first
    conv.weight.mul_(2)
    assert torch.equal(streaming.ConvStream.of(conv, streaming.Scratch(), bf16=True).taps, 2 * first)
    upsampler = nn.ConvTranspose1d(16, 8, kernel_size=8, stride=4, padding=2)
    phases = streaming.ConvTransposeStream(upsampler, streaming.Scratch(), bf16=True).phases
    assert torch.equal(phases.taps, streaming.polyphase_weights(upsampler)[0].permute(2, 1, 0))


@needs_bf16
@torch.no_grad()
def test_the_encoder_takes_bf16_products_only_in_its_residual_units_dilated_convs(medium):
    """What decides codes keeps float32 convolutions: the encoder's input, downsampling and output convs and its
    residual units' 1x1 convs. The decoder decides none, and all of its residual units' convs take bf16."""
    model = tiny_model("44khz")
    unit = model.encoder.block[0].res_unit1.stream(streaming.Scratch())
    dilated, pointwise = unit.branch.streams
    assert dilated.taps is not None and pointwise.taps is None and not pointwise.gemm
    block = model.encoder.block[0].stream(streaming.Scratch())
    assert block.streams[-1].taps is None and not block.streams[-1].gemm  # the downsampling conv
    upsampler, *units = model.decoder.block[0].stream(streaming.Scratch()).streams
    assert upsampler.phases.taps is not None
    assert all(stream.taps is not None for unit in units for stream in unit.branch.streams)


@torch.no_grad()
def test_the_quantizer_ignores_the_matmul_precision(medium):
    """Codes decided under "medium" equal those under "highest": the nearest-code search takes its products in
    float64 then, which no precision setting changes, and the projections run as oneDNN's convolutions. Codebooks
    of 32 dimensions: torch runs the released models' 8 as float32 GEMMs here (54 of these 8000 codes would change
    with bf16 products), which another torch version or device may not."""
    torch.manual_seed(0)
    quantizer = layers.VectorQuantize(1024, 1024, 32)
    z_e, z = torch.randn(2, 32, 4000), torch.randn(1, 1024, 12)
    codes, (z_q, short_codes, _) = quantizer.nearest(z_e), quantizer(z)
    torch.set_float32_matmul_precision("highest")
    assert torch.equal(codes, quantizer.nearest(z_e))
    expected_z_q, expected_codes, _ = quantizer(z)
    assert torch.equal(short_codes, expected_codes) and peak_error(z_q, expected_z_q) <= FLOAT32


def test_encodes_under_medium_stream_whatever_their_length(medium, monkeypatch):
    """A plain pass would run the small convs that decide codes as GEMMs with bf16 products; streams do not. Where
    the CPU takes no bf16 products, the setting changes nothing."""
    monkeypatch.setattr(streaming, "cpu_takes_bf16_products", lambda: True)
    assert chunking.choose_strategy("cpu", widest=1000) == chunking.STREAM
    assert chunking.choose_strategy("cpu", widest=1000, direction="decode") == chunking.WINDOWS
    torch.set_float32_matmul_precision("highest")
    assert chunking.choose_strategy("cpu", widest=1000) == chunking.WINDOWS
    torch.set_float32_matmul_precision("medium")
    monkeypatch.setattr(streaming, "cpu_takes_bf16_products", lambda: False)
    assert chunking.choose_strategy("cpu", widest=1000) == chunking.WINDOWS


@needs_bf16
@torch.no_grad()
def test_encode_and_decode_under_medium(medium):
    """A whole encode and decode under "medium": nearly all codes as in float32 (this tiny model: 97.8% at 44.1
    kHz, a full-size one 99.4-100%), and the audio of the float32 codes at over 30 dB SNR (36 dB here)."""
    model = tiny_model("44khz")
    audio = torch.from_numpy(tone(3.0, model.sampling_rate, 1, 0)).T[None]
    torch.set_float32_matmul_precision("highest")
    expected = model.encode(audio, model.sampling_rate).codes
    expected_audio = model.decode(s=expected)
    torch.set_float32_matmul_precision("medium")
    codes, decoded = model.encode(audio, model.sampling_rate).codes, model.decode(s=expected)
    assert (codes == expected).float().mean() >= 0.95
    assert 10 * torch.log10(expected_audio.pow(2).sum() / (decoded - expected_audio).pow(2).sum()) > 30


@needs_bf16
def test_the_cli_encodes_and_decodes_in_mixed_precision(tree, tmp_path, medium):
    """`--dtype mixed` sets "medium" for the run: the codes of a tone as float32's but for near-ties, and its
    decoding."""
    from dac_codec.tools import cli
    from dac_codec.tools.dac_file import read_fields

    torch.set_float32_matmul_precision("highest")
    wav = tree / "data" / "speech.flac"
    for dtype in ("float32", "mixed"):
        assert cli.main(["encode", str(wav), "--output", str(tmp_path / dtype), "--model", str(tree / "model"),
                         "--device", "cpu", "--dtype", dtype]) == 0
    assert streaming.matmul_precision(torch.device("cpu")) == "bf16"
    codes = {dtype: torch.as_tensor(read_fields(tmp_path / dtype / "speech.dac")["codes"]) for dtype in ("float32",
                                                                                                     "mixed")}
    assert codes["mixed"].shape == codes["float32"].shape
    assert (codes["mixed"] == codes["float32"]).float().mean() >= 0.95
    assert cli.main(["decode", str(tmp_path / "mixed"), "--output", str(tmp_path / "wav"), "--dtype", "mixed",
                     "--device", "cpu"]) == 0
    assert (tmp_path / "wav" / "speech.wav").is_file()


def test_mixed_precision_where_it_cannot_run_is_one_line(monkeypatch):
    """Where the CPU takes no bf16 products, `--dtype mixed` is refused in one line that says why, leaving the
    precision as it was; where it takes them, the precision is "medium"."""
    from dac_codec.tools import loading

    monkeypatch.setattr(streaming, "cpu_takes_bf16_products", lambda: False)
    with pytest.raises(ValueError, match="this CPU runs float32 matmuls in float32 .*; give float32"):
        loading.resolve_device("cpu", "mixed")
    assert streaming.matmul_precision(torch.device("cpu")) == "ieee"  # left as it was
    monkeypatch.setattr(streaming, "cpu_takes_bf16_products", lambda: True)
    try:
        assert loading.resolve_device("cpu", "mixed") == (torch.device("cpu"), torch.float32)
        assert streaming.matmul_precision(torch.device("cpu")) == "bf16"
    finally:
        torch.set_float32_matmul_precision("highest")
