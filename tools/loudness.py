"""Integrated loudness (ITU-R BS.1770: K-weighting, 400 ms blocks with 75% overlap, absolute and relative gates),
measured on a signal that arrives in blocks, as the original package's `.dac` files need it.

The original measures with audiotools' `Meter` (pyloudnorm's filters and gates; blocks cut as `julius.unfold` cuts
them, the last one zero-padded) and normalises to -16 LUFS before encoding; its decoder restores `input_db`. This
meter gives the same number while holding only one 100 ms segment's energy per step, so an hour of audio is measured
in flat memory.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
from scipy.signal import lfilter, lfilter_zi

ABSOLUTE_GATE = -70.0  # LUFS
RELATIVE_GATE = -10.0  # dB below the absolutely gated loudness
BLOCK_SECONDS = 0.4


def k_weighting(sample_rate: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(b, a) of BS.1770's two K-weighting stages, a high shelf (+4 dB above ~1.5 kHz) then a high pass (38 Hz),
    designed for `sample_rate` as pyloudnorm designs them."""
    stages = []
    for gain_db, q, fc, kind in ((4.0, 1 / math.sqrt(2.0), 1500.0, "high_shelf"), (0.0, 0.5, 38.0, "high_pass")):
        a_gain = 10 ** (gain_db / 40.0)
        w0 = 2.0 * math.pi * (fc / sample_rate)
        alpha = math.sin(w0) / (2.0 * q)
        cos = math.cos(w0)
        if kind == "high_shelf":
            root = 2 * math.sqrt(a_gain) * alpha
            b = [a_gain * ((a_gain + 1) + (a_gain - 1) * cos + root), -2 * a_gain * ((a_gain - 1) + (a_gain + 1) * cos),
                 a_gain * ((a_gain + 1) + (a_gain - 1) * cos - root)]
            a = [(a_gain + 1) - (a_gain - 1) * cos + root, 2 * ((a_gain - 1) - (a_gain + 1) * cos),
                 (a_gain + 1) - (a_gain - 1) * cos - root]
        else:
            b = [(1 + cos) / 2, -(1 + cos), (1 + cos) / 2]
            a = [1 + alpha, -2 * cos, 1 - alpha]
        stages.append((np.array(b) / a[0], np.array(a) / a[0]))
    return stages


class LoudnessMeter:
    """Feed (channels, time) blocks of one signal with `add`, then read `loudness()` in LUFS (-70 for silence).
    Channels count with weight 1 (BS.1770's left, right and centre)."""

    def __init__(self, sample_rate: int):
        self.filters = k_weighting(sample_rate)
        self._zi = [lfilter_zi(b, a) for b, a in self.filters]
        self.state: Optional[list[np.ndarray]] = None
        self.block = int(BLOCK_SECONDS * sample_rate)
        self.step = int(BLOCK_SECONDS * sample_rate * 0.25)
        if self.block != 4 * self.step:
            raise ValueError(f"{sample_rate} Hz does not cut 400 ms blocks into four 100 ms steps; measure at the "
                             "model's rate (16, 24 or 44.1 kHz).")
        self.segments: list[np.ndarray] = []  # energy of each `step` samples, per channel
        self.partial: Optional[np.ndarray] = None  # filtered samples of the segment under way
        self.length = 0
        self.sample_rate = sample_rate

    def add(self, block: np.ndarray) -> None:
        """One block (channels, time) of the signal, in order."""
        x = np.asarray(block, dtype=np.float64)
        if self.state is None:
            self.state = [np.zeros((x.shape[0], 2)) for _ in self.filters]  # the filters start at rest
        for i, (b, a) in enumerate(self.filters):
            x, self.state[i] = lfilter(b, a, x, axis=-1, zi=self.state[i])
        self.length += x.shape[-1]
        x = x if self.partial is None else np.concatenate([self.partial, x], axis=-1)
        whole = x.shape[-1] // self.step * self.step
        if whole:
            self.segments.extend(np.square(x[:, :whole]).reshape(x.shape[0], -1, self.step).sum(-1).T)
        self.partial = x[:, whole:]

    def loudness(self) -> float:
        """Integrated loudness of everything added, in LUFS, at least -70. Call it once, at the end."""
        if self.length == 0:
            raise ValueError("No audio was measured.")
        if self.length < 0.5 * self.sample_rate:  # as the original: short signals are measured zero-padded to 0.5 s
            self.add(np.zeros((self.partial.shape[0], int((0.5 - self.length / self.sample_rate) * self.sample_rate))))
        segments = list(self.segments)
        if self.partial is not None and self.partial.shape[-1]:
            segments.append(np.square(self.partial).sum(-1))
        per_block = self.block // self.step  # 4 segments a block
        n_blocks = math.ceil((max(self.length, self.block) - self.block) / self.step) + 1  # as julius.unfold cuts
        energy = np.zeros((n_blocks + per_block, len(segments[0])))
        energy[: len(segments)] = np.stack(segments)
        z = sum(energy[k : k + n_blocks] for k in range(per_block)) / self.block  # (blocks, channels)
        with np.errstate(divide="ignore"):
            block_loudness = -0.691 + 10.0 * np.log10(z.sum(-1))
        loud = block_loudness > ABSOLUTE_GATE
        if not loud.any():
            return ABSOLUTE_GATE
        relative = -0.691 + 10.0 * np.log10(z[loud].mean(0).sum()) + RELATIVE_GATE
        gated = loud & (block_loudness > relative)
        return max(ABSOLUTE_GATE, float(-0.691 + 10.0 * np.log10(z[gated].mean(0).sum())))
