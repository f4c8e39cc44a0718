"""The stream engine, one part at a time: each streamed convolution, transposed convolution and layer, fed a signal
cut at random points (empty pieces too, and a last piece that is not empty), gives what the plain layer gives for
the whole signal.

Tolerance: 1e-5 relative to the output's peak. The streams run the same sums as torch's convolutions, in another
order (a GEMM over gathered windows, or a channels-last convolution, its weight packed once or not); float32
rounding then differs by a few ulps.
"""

import math
import random
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dac_codec import dac_layers as layers
from dac_codec import streaming

from conftest import stream_steps, tiny_model

TOLERANCE = 1e-5


def pieces(length, rng, n_pieces):
    """Random cut points of [0, length), with empty pieces among them."""
    cuts = sorted(rng.choices(range(length + 1), k=n_pieces - 1))
    bounds = [0, *cuts, length]
    return list(zip(bounds[:-1], bounds[1:]))


def run_stream(stream, x, rng, n_pieces, final_piece):
    """Feeds time-major x (B, t, C) to `stream` in random pieces; the last one with final=True, holding the last
    piece when `final_piece`, else empty."""
    cut = pieces(x.shape[1], rng, n_pieces)
    if final_piece:
        *cut, (last_start, _) = cut
    else:
        last_start = x.shape[1]
    outputs = [stream.step(x[:, a:b], final=False) for a, b in cut]
    outputs.append(stream.step(x[:, last_start:], final=True))
    return torch.cat(outputs, dim=1)


def close(streamed, expected):
    assert streamed.shape == expected.shape
    if expected.numel():  # a stride-1 upsampler of one input has no output
        assert (streamed - expected).abs().max() <= TOLERANCE * expected.abs().max()


def snake(x, out=None):
    """A time-major activation with the signature the streams take."""
    return torch.sin(x, out=out).add_(x) if out is not None else torch.sin(x) + x


CONVS = [(k, s, d) for k in (1, 2, 3, 7) for s in (1, 2, 3, 5) for d in (1, 3, 9) if s == 1 or d == 1]


@pytest.mark.parametrize("kernel, stride, dilation", CONVS)
@pytest.mark.parametrize("time_steps", [1, 7, 150, 1300])  # 1300: past GEMM_STEPS, the conv2d path
def test_conv_stream_equals_conv1d(kernel, stride, dilation, time_steps):
    rng = random.Random(kernel * 1000 + stride * 100 + dilation * 10 + time_steps)
    g = torch.Generator().manual_seed(rng.randrange(1 << 30))
    c_in, c_out = 6, 5
    padding = rng.choice([0, dilation * (kernel - 1) // 2, (stride + 1) // 2])
    weight, bias = torch.randn(c_out, c_in, kernel, generator=g), torch.randn(c_out, generator=g)
    x = torch.randn(2, time_steps, c_in, generator=g)
    for activation in (None, snake):
        signal = x if activation is None else snake(x)
        if (signal.shape[1] + 2 * padding - dilation * (kernel - 1) - 1) < 0:
            continue  # no output at all: torch refuses such a conv
        expected = F.conv1d(signal.transpose(1, 2), weight, bias, stride, padding, dilation).transpose(1, 2)
        for n_pieces, final_piece in ((1, False), (1, True), (4, True), (13, False)):
            stream = streaming.ConvStream(weight, bias, streaming.Scratch(), stride, dilation, padding, activation)
            close(run_stream(stream, x, rng, n_pieces, final_piece), expected)


class CountedSteps:
    """A stream that counts its steps."""

    def __init__(self, stream):
        self.stream, self.steps = stream, 0

    def step(self, x, final):
        self.steps += 1
        return self.stream.step(x, final)


@pytest.mark.parametrize("budget, steps", [(10**6, [1, 1, 1]), (40, None)])  # the piece in one tile, or in many
def test_pipeline_gives_its_stages_in_turn_and_ends_with_the_last_tile(budget, steps):
    """A Pipeline's outputs are its stages' applied one after another, however its tiles fall; a piece given with
    the end that fits one tile takes one step per stage (the end travels with the last tile)."""
    g = torch.Generator().manual_seed(3)
    specs = [(6, 3, 1, 1, 1), (5, 5, 2, 1, 2), (4, 3, 1, 3, 3)]  # (C_out, kernel, stride, dilation, padding)
    x, c_in, stages = torch.randn(2, 57, 3, generator=g), 3, []
    expected = x.transpose(1, 2)
    for c_out, kernel, stride, dilation, padding in specs:
        weight, bias = torch.randn(c_out, c_in, kernel, generator=g), torch.randn(c_out, generator=g)
        stream = streaming.ConvStream(weight, bias, streaming.Scratch(), stride, dilation, padding)
        stages.append((CountedSteps(stream), 2.0))
        expected, c_in = F.conv1d(expected, weight, bias, stride, padding, dilation), c_out
    pipeline = streaming.Pipeline(stages, budget=budget)
    close(torch.cat(list(pipeline.steps(x, final=True)), dim=1), expected.transpose(1, 2))
    if steps is not None:
        assert [stream.steps for stream, _ in stages] == steps


needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch was built without oneDNN")


@pytest.fixture
def packing(monkeypatch):
    """Weights packed whatever the CPU (`PACK_WEIGHTS` decides it from the CPU's vector ISA): both choices are
    tested on every machine."""
    monkeypatch.setattr(streaming, "PACK_WEIGHTS", True)


def test_weights_are_packed_only_where_the_layout_does_not_follow_the_length(monkeypatch):
    """With AVX-512 kernels float32 weights are packed; bfloat16 ones never (their layout follows the length too);
    elsewhere the convs reorder their weights themselves."""
    assert streaming.PACK_WEIGHTS == (torch.backends.cpu.get_cpu_capability() == "AVX512")
    monkeypatch.setattr(streaming, "PACK_WEIGHTS", True)
    assert streaming.pack_weight(torch.zeros(384, 384, 7, dtype=torch.bfloat16)) is None
    monkeypatch.setattr(streaming, "PACK_WEIGHTS", False)
    assert streaming.pack_weight(torch.zeros(384, 384, 7)) is None


@needs_onednn
@torch.inference_mode()
@pytest.mark.parametrize("kernel, stride, dilation", [(7, 1, 1), (7, 1, 9), (16, 8, 1), (2, 1, 1), (3, 1, 1)])
def test_packed_weights_give_the_unpacked_conv(kernel, stride, dilation, packing):
    """A conv with its weight packed once (`pack_weight`) runs oneDNN's kernel of the unpacked conv on the same
    sums: bit-equal where the unpacked conv runs as a convolution (long outputs), and within the GEMM's rounding
    (TOLERANCE) where it runs as one GEMM (short outputs); inputs under PACKED_STEPS run as the unpacked GEMM, to
    the bit. The packed layout depends on what the CPU reports; this holds whatever layout it chose, also where
    packing is off by default (a packed weight of another length's layout is reordered again)."""
    g = torch.Generator().manual_seed(kernel * 100 + stride * 10 + dilation)
    c_in, c_out = 384, 352  # a weight over PACK_ELEMENTS, which is packed
    weight, bias = torch.randn(c_out, c_in, kernel, generator=g) / 60, torch.randn(c_out, generator=g)
    packed = streaming.pack_weight(weight, stride, dilation)
    assert packed is not None and weight.numel() >= streaming.PACK_ELEMENTS
    for t_out in (1, 5, 300, streaming.GEMM_STEPS + 37):
        x = torch.randn(2, (t_out - 1) * stride + dilation * (kernel - 1) + 1, c_in, generator=g)
        plain = streaming.time_major_conv(x, weight, bias, stride, dilation)
        fast = streaming.time_major_conv(x, weight, bias, stride, dilation, packed)
        assert fast.shape == plain.shape == (2, t_out, c_out)
        if t_out >= streaming.GEMM_STEPS or x.shape[1] < streaming.PACKED_STEPS:
            assert torch.equal(fast, plain)
        else:
            close(fast, plain)


@needs_onednn
@pytest.mark.parametrize("onednn", [False, True])
@pytest.mark.parametrize("c_in, c_out, kernel, stride", [(512, 512, 1, 1), (384, 352, 7, 1), (256, 160, 16, 8),
                                                         (64, 64, 7, 1)])
def test_short_convs_run_as_one_gemm_on_the_kernel_the_cpu_chooses(c_in, c_out, kernel, stride, onednn, monkeypatch):
    """Short outputs run as one GEMM: on oneDNN's matmul for wide float32 weights where `ONEDNN_GEMMS` (an AMD
    CPU, whose MKL is slow) says so, else and under autograd (which oneDNN's matmul does not carry) on F.linear.
    Either kernel gives the conv (TOLERANCE), and a gradient flows through the autograd one."""
    monkeypatch.setattr(streaming, "ONEDNN_GEMMS", onednn)
    linear_calls = []
    linear = F.linear
    monkeypatch.setattr(F, "linear", lambda *args: linear_calls.append(1) or linear(*args))
    g = torch.Generator().manual_seed(c_in + kernel)
    weight, bias = torch.randn(c_out, c_in, kernel, generator=g) / 60, torch.randn(c_out, generator=g)
    x = torch.randn(2, 40 * stride + kernel - 1, c_in, generator=g)
    expected = F.conv1d(x.transpose(1, 2), weight, bias, stride).transpose(1, 2)
    with torch.inference_mode():
        close(streaming.time_major_conv(x, weight, bias, stride), expected)
    wide = weight.numel() >= streaming.PACK_ELEMENTS
    assert linear_calls == ([] if onednn and wide else [1])
    weight.requires_grad_(True)
    streaming.time_major_conv(x, weight, bias, stride).square().sum().backward()
    assert weight.grad.abs().sum() > 0 and len(linear_calls) == (1 if onednn and wide else 2)


@needs_onednn
def test_streams_pack_the_weights_once_and_only_for_inference(packing):
    """A stream built for inference takes each wide conv's packed weight, derived once per model and weights (a
    weight update packs anew); under autograd, which the packed conv does not carry, it takes none; pointwise and
    small convs, whose reorder costs little, are never packed."""
    torch.manual_seed(0)
    wide, pointwise = nn.Conv1d(384, 384, 7, padding=3), nn.Conv1d(512, 512, 1)
    upsampler = nn.ConvTranspose1d(256, 128, kernel_size=16, stride=8, padding=4)
    with torch.inference_mode():
        first = streaming.ConvStream.of(wide, streaming.Scratch()).packed
        assert first is not None and streaming.ConvStream.of(wide, streaming.Scratch()).packed is first
        assert streaming.ConvStream.of(pointwise, streaming.Scratch()).packed is None
        assert streaming.ConvTransposeStream(upsampler, streaming.Scratch()).phases.packed is not None
    with torch.no_grad():
        wide.weight.mul_(2)
        assert streaming.ConvStream.of(wide, streaming.Scratch()).packed is not first
    assert streaming.ConvStream.of(wide, streaming.Scratch()).packed is None  # autograd on


@pytest.mark.parametrize("stride", [1, 2, 3, 4, 5, 8])
@pytest.mark.parametrize("time_steps", [1, 2, 9, 200])
def test_polyphase_transposed_conv_stream_equals_conv_transpose1d(stride, time_steps):
    rng = random.Random(stride * 1000 + time_steps)
    g = torch.Generator().manual_seed(stride)
    conv = nn.ConvTranspose1d(6, 5, kernel_size=2 * stride, stride=stride, padding=(stride + 1) // 2)
    with torch.no_grad():
        conv.weight.normal_(generator=g), conv.bias.normal_(generator=g)
    x = torch.randn(2, time_steps, 6, generator=g)
    with torch.no_grad():
        expected = conv(snake(x).transpose(1, 2)).transpose(1, 2)
        for n_pieces, final_piece in ((1, False), (1, True), (3, True), (9, False)):
            stream = streaming.ConvTransposeStream(conv, streaming.Scratch(), snake)
            close(run_stream(stream, x, rng, n_pieces, final_piece), expected)


@pytest.mark.parametrize("geometry", ["16khz", "44khz"])
@torch.no_grad()
def test_layer_streams_equal_forward(geometry):
    """Each layer kind's `stream` against its `forward`: residual units (pending skips), encoder blocks (strided
    convs) and decoder blocks (polyphase upsampling and crops), sharing one scratch buffer as in a model."""
    model = tiny_model(geometry)
    rng = random.Random(7)
    g = torch.Generator().manual_seed(7)
    cases = [model.encoder.block[0].res_unit3, model.decoder.block[1].res_unit2, *model.encoder.block,
             *model.decoder.block]
    for layer in cases:
        channels = layer.conv1.in_channels if not isinstance(layer, layers.DecoderBlock) else layer.conv_t1.in_channels
        x = torch.randn(1, channels, 97, generator=g)
        expected = layer(x).transpose(1, 2)
        for n_pieces in (1, 5, 20):
            close(run_stream(layer.stream(streaming.Scratch()), x.transpose(1, 2), rng, n_pieces, True), expected)


@torch.no_grad()
def test_pipeline_tiles_do_not_change_the_result():
    """Tiles of one step (down to a step each) give what one tile gives: the budget sets memory, not results."""
    model = tiny_model("44khz")
    g = torch.Generator().manual_seed(3)
    z = torch.randn(1, 40, model.config.latent_dim, generator=g)
    whole = torch.cat(list(model.decoder.stream().steps(z, final=True)), dim=1)
    expected = model.decoder(z.transpose(1, 2)).transpose(1, 2)
    close(whole, expected)
    for budget in (1, 300, 5000):
        stream = model.decoder.stream()
        stream.budget = budget
        close(torch.cat([*stream.steps(z[:, :17], final=False), *stream.steps(z[:, 17:], final=True)], 1), expected)


@torch.no_grad()
def test_streams_of_a_thread_share_its_scratch_even_interleaved():
    """A thread's streams write their windows into its one scratch, which outlives them (a call reuses the last
    call's memory, no page faults); two streams stepped in turn still give what each gives alone, since no window
    outlives its conv's step. Another thread has its own scratch; each dtype keeps its own buffer in it."""
    model = tiny_model("44khz")
    g = torch.Generator().manual_seed(5)
    signals = [torch.randn(1, 40, model.config.latent_dim, generator=g) for _ in range(2)]
    streams = [model.decoder.stream(), model.decoder.stream()]
    outputs = [[], []]
    for start in range(0, 40, 7):
        for output, stream, z in zip(outputs, streams, signals):
            output.extend(stream.steps(z[:, start : start + 7], final=start + 7 >= 40))
    for output, z in zip(outputs, signals):
        close(torch.cat(output, dim=1), model.decoder(z.transpose(1, 2)).transpose(1, 2))

    scratch = streaming.Scratch.of_thread()
    assert all(stream.stages[0][0].scratch is scratch for stream in streams)
    assert scratch.memory  # the windows were taken from it
    other = []
    thread = threading.Thread(target=lambda: other.append(streaming.Scratch.of_thread()))
    thread.start()
    thread.join(timeout=30)
    assert other and other[0] is not scratch
    floats = scratch.take((3, 4), torch.zeros(1))
    halves = scratch.take((3, 4), torch.zeros(1, dtype=torch.bfloat16))
    assert (floats.dtype, halves.dtype) == (torch.float32, torch.bfloat16)
    assert scratch.take((2, 5), torch.zeros(1)).data_ptr() == floats.data_ptr()  # bf16 did not evict float32


def torch_step(graph):
    """A step graph as the numpy function that `StepStream` calls."""
    def step(*arrays):
        with torch.no_grad():
            return [t.numpy() for t in graph(*map(torch.from_numpy, arrays))]
    return step


@pytest.mark.parametrize("block_frames", [1, 3])
def test_step_graphs_give_the_whole_signal_codes_and_audio(model, block_frames):
    """The fixed-block streams with explicit state (what encoder_step.onnx and decoder_step.onnx run), at random
    signal lengths (shorter than a block, a block's multiple, any) and random splits."""
    encoder, decoder = model.step_graphs(block_frames)
    hop, rng = model.hop_length, random.Random(block_frames)
    for length in (1, hop * block_frames * 3, rng.randrange(hop, 40 * hop)):
        audio = 0.3 * torch.randn(2, 1, length, generator=torch.Generator().manual_seed(length))
        with torch.no_grad():
            codes = model.encode(audio, model.sampling_rate, chunk_size_in_sec=0).codes
            expected = model.decode(s=codes, chunk_size=0).numpy()
        assert np.array_equal(stream_steps(torch_step(encoder), encoder.spec(), audio.numpy(), rng, 3 * hop),
                              codes.numpy())
        decoded = stream_steps(torch_step(decoder), decoder.spec(), codes.numpy(), rng, 5)
        assert decoded.shape == expected.shape
        assert np.abs(decoded - expected).max() <= TOLERANCE * np.abs(expected).max()


def test_step_graphs_lag_by_the_lookahead(model):
    """The step graphs' delay is the streams' lookahead, in whole frames for the encoder's codes."""
    encoder, decoder = model.step_graphs(2)
    lookahead = model.stream_latency
    assert encoder.delay == math.ceil(round(lookahead["encode"] * model.sampling_rate) / model.hop_length)
    assert math.ceil(decoder.delay / model.hop_length) == round(lookahead["decode"] * model.config.frame_rate)


def test_derived_weights_are_kept_per_module_and_weights():
    """The polyphase weights are derived once per transposed conv and reused while its weights stay; an in-place
    update (an optimizer step, load_state_dict) or a move to another dtype derives them anew, and a weight-normed
    conv (its weight recomputed on every access) is never cached."""
    torch.manual_seed(0)
    conv = nn.ConvTranspose1d(6, 4, kernel_size=8, stride=4, padding=2)
    first = streaming.polyphase_weights(conv)
    assert all(a is b for a, b in zip(streaming.polyphase_weights(conv), first))  # kept
    with torch.no_grad():
        conv.weight.mul_(2)  # as an optimizer step updates it
    second = streaming.polyphase_weights(conv)
    assert torch.equal(second[0], 2 * first[0])
    conv.load_state_dict({"weight": torch.randn(6, 4, 8), "bias": torch.randn(4)})
    third = streaming.polyphase_weights(conv)
    assert torch.equal(third[1], conv.bias.detach().repeat(4))
    conv.double()
    assert streaming.polyphase_weights(conv)[0].dtype == torch.float64
    normed = nn.utils.parametrizations.weight_norm(nn.ConvTranspose1d(6, 4, kernel_size=8, stride=4), dim=0)
    before = streaming.polyphase_weights(normed)[0]
    with torch.no_grad():
        normed.parametrizations.weight.original0.mul_(3)  # the gain g
    assert torch.allclose(streaming.polyphase_weights(normed)[0], 3 * before)


def test_concurrent_decodes_share_the_derived_weights():
    """Threads decoding with one model at once (the derived weights computed under a lock) give the serial audio."""
    import threading

    model = tiny_model("16khz", seed=5)  # a model whose derived weights no test has made yet
    codes = torch.randint(0, model.config.codebook_size, (1, model.config.n_codebooks, 30),
                          generator=torch.Generator().manual_seed(0))
    results = [None] * 4

    def decode(i):
        results[i] = model.decode(s=codes)

    threads = [threading.Thread(target=decode, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    expected = model.decode(s=codes)
    assert all(result is not None and torch.equal(result, expected) for result in results)
