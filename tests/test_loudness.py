"""The streaming loudness meter gives what the original's meter (audiotools, via pyloudnorm's filters) gives, for
any split into blocks. Tolerance: 0.001 dB, a gain error of 1e-4 (float32 filtering there, float64 here)."""

import random

import numpy as np
import pytest
import torch

from dac_codec.tools import loudness

audiotools = pytest.importorskip("audiotools", reason="the reference package's audio library is a test dependency")


def signal(channels, seconds, rate, seed, scale=0.1):
    rng = np.random.default_rng(seed)
    x = scale * rng.standard_normal((channels, int(seconds * rate)))
    x[:, : x.shape[1] // 3] *= 0.01  # a quiet part, below the relative gate
    return x.astype(np.float32)


@pytest.mark.parametrize("rate", [16000, 44100])
@pytest.mark.parametrize("channels, seconds", [(1, 0.25), (1, 3.37), (2, 2.0)])
def test_streamed_loudness_equals_the_originals(rate, channels, seconds):
    x = signal(channels, seconds, rate, seed=rate + channels)
    expected = audiotools.AudioSignal(torch.from_numpy(x)[None], rate).loudness().item()
    rng = random.Random(rate)
    for n_blocks in (1, 5, 40):
        meter = loudness.LoudnessMeter(rate)
        cuts = sorted(rng.sample(range(1, x.shape[1]), n_blocks - 1))
        for a, b in zip([0, *cuts], [*cuts, x.shape[1]]):
            meter.add(x[:, a:b])
        assert abs(meter.loudness() - expected) < 1e-3, (n_blocks, meter.loudness(), expected)


def test_filters_are_pyloudnorms():
    pyloudnorm = pytest.importorskip("pyloudnorm")
    for rate in (16000, 44100):
        theirs = pyloudnorm.Meter(rate)._filters
        for (b, a), stage in zip(loudness.k_weighting(rate), ("high_shelf", "high_pass")):
            np.testing.assert_allclose(b, theirs[stage].b, rtol=1e-12)
            np.testing.assert_allclose(a, theirs[stage].a, rtol=1e-12)


def test_silence_is_the_absolute_gate():
    meter = loudness.LoudnessMeter(16000)
    meter.add(np.zeros((1, 16000)))
    assert meter.loudness() == -70.0
