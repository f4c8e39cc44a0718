"""How close a reconstruction is to its input, by the measures codec papers and leaderboards report.

- The original evaluation's (descript-audio-codec `scripts/evaluate.py`): mel distance, multi-scale STFT distance, L1
  waveform distance and SI-SDR, each at 22.05 and 44.1 kHz, with the loss classes' own defaults (not the training
  config's): mel on (150, 80) bands of 2048- and 512-sample windows, magnitudes squared, both log and linear terms.
- ViSQOL v3 in audio mode (48 kHz) and speech mode (16 kHz), `visqol-python`'s port (no build needed).
- STOI (`pystoi`), wide-band PESQ (`pesq`, an extra for its licence terms), F0 correlation on frames both signals
  voice (librosa's pYIN at 16 kHz).
- Codebook usage: the perplexity of each codebook's codes, exp of their entropy: the number of codes in effective
  use, up to the codebook size, and a collapse after fine-tuning shows as a drop.

Signals are float32 numpy arrays (t,), mono, at a given rate; each measure resamples (soxr) to the rate it is
defined at. Every measure is a float; NaN where it is undefined for the pair (no voiced frames in common, say).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..audio_io import resample
from ..training.losses import MelSpectrogramLoss, MultiScaleSTFTLoss

ORIGINAL_RATES = {"22k": 22050, "44k": 44100}  # the original evaluation measures at both
VISQOL_RATES = {"audio": 48000, "speech": 16000}
PESQ_RATE = 16000  # wide band
F0_RATE = 16000
F0_RANGE = (50.0, 1000.0)  # Hz: voices, low male to high soprano
LOWER_IS_BETTER = {"mel", "stft", "waveform"}  # the distances; every other measure is better higher


def at_rate(signal: np.ndarray, sample_rate: int, target_rate: int) -> np.ndarray:
    if sample_rate == target_rate:
        return signal
    return resample(torch.from_numpy(np.ascontiguousarray(signal))[None, None], sample_rate, target_rate)[0, 0].numpy()


def si_sdr(reference: torch.Tensor, estimate: torch.Tensor) -> torch.Tensor:
    """Scale-invariant SDR in dB of estimate against reference, both (batch, time): zero-mean, the reference scaled
    onto the estimate, with the original's (audiotools') eps of 1e-8 in its three places."""
    eps = 1e-8
    reference = reference - reference.mean(-1, keepdim=True)
    estimate = estimate - estimate.mean(-1, keepdim=True)
    scale = ((estimate * reference).sum(-1, keepdim=True) + eps) / ((reference**2).sum(-1, keepdim=True) + eps)
    target = scale * reference
    return 10 * torch.log10((target**2).sum(-1) / ((estimate - target) ** 2).sum(-1) + eps)


class OriginalMetrics:
    """The original evaluation's four measures at 22.05 and 44.1 kHz: `mel-22k`, `stft-22k`, `waveform-22k`,
    `sisdr-22k` and the same at 44k."""

    def __init__(self) -> None:
        self.mel = {rate: MelSpectrogramLoss(rate, n_mels=(150, 80), window_lengths=(2048, 512), mag_weight=1.0,
                                             pow=2.0) for rate in ORIGINAL_RATES.values()}
        self.stft = MultiScaleSTFTLoss()

    @torch.no_grad()
    def __call__(self, reference: np.ndarray, estimate: np.ndarray, sample_rate: int) -> dict[str, float]:
        scores = {}
        for tag, rate in ORIGINAL_RATES.items():
            x, y = (torch.from_numpy(at_rate(s, sample_rate, rate).astype(np.float32))[None, None]
                    for s in (reference, estimate))
            scores[f"mel-{tag}"] = self.mel[rate](y, x).item()
            scores[f"stft-{tag}"] = self.stft(y, x).item()
            scores[f"waveform-{tag}"] = F.l1_loss(y, x).item()
            scores[f"sisdr-{tag}"] = si_sdr(x[0], y[0]).item()
        return scores


class Visqol:
    """ViSQOL's MOS-LQO (1 to 5) in audio mode at 48 kHz and speech mode at 16 kHz: `visqol-audio`,
    `visqol-speech`; NaN for inputs too short for its patches (about a second)."""

    def __init__(self) -> None:
        from visqol import VisqolApi

        self.apis = {}
        for mode in VISQOL_RATES:
            api = VisqolApi()
            api.create(mode=mode, **({"use_lattice_model": False} if mode == "speech" else {}))
            self.apis[mode] = api

    def __call__(self, reference: np.ndarray, estimate: np.ndarray, sample_rate: int) -> dict[str, float]:
        scores = {}
        for mode, rate in VISQOL_RATES.items():
            x, y = (at_rate(s, sample_rate, rate).astype(np.float64) for s in (reference, estimate))
            try:
                scores[f"visqol-{mode}"] = float(self.apis[mode].measure_from_arrays(x, y, rate).moslqo)
            except ValueError:  # under about a second of audio: too few patches to compare
                scores[f"visqol-{mode}"] = float("nan")
        return scores


def stoi(reference: np.ndarray, estimate: np.ndarray, sample_rate: int) -> dict[str, float]:
    """Short-time objective intelligibility (0 to 1), pystoi's, which resamples to its 10 kHz itself."""
    from pystoi import stoi as pystoi

    return {"stoi": float(pystoi(reference, estimate, sample_rate, extended=False))}


def pesq(reference: np.ndarray, estimate: np.ndarray, sample_rate: int) -> dict[str, float]:
    """Wide-band PESQ (MOS-LQO, 1.04 to 4.64) at 16 kHz; NaN where PESQ finds no utterance."""
    from pesq import BufferTooShortError, NoUtterancesError
    from pesq import pesq as pesq_wb

    x, y = (at_rate(s, sample_rate, PESQ_RATE) for s in (reference, estimate))
    try:
        return {"pesq": float(pesq_wb(PESQ_RATE, x, y, "wb"))}
    except (NoUtterancesError, BufferTooShortError):  # silence, or under a quarter second
        return {"pesq": float("nan")}


def pitch(signal: np.ndarray, sample_rate: int) -> np.ndarray:
    """F0 in Hz of each 16 ms hop of signal (NaN on unvoiced frames), librosa's pYIN at 16 kHz."""
    import librosa

    f0, _, _ = librosa.pyin(at_rate(signal, sample_rate, F0_RATE), fmin=F0_RANGE[0], fmax=F0_RANGE[1], sr=F0_RATE,
                            frame_length=1024, hop_length=256)
    return f0


def f0_correlation(reference: np.ndarray, estimate: np.ndarray, sample_rate: int) -> dict[str, float]:
    """Pearson correlation of the two F0 contours on the frames both voice (`f0-corr`); NaN with fewer than two
    such frames or a flat contour."""
    x, y = pitch(reference, sample_rate), pitch(estimate, sample_rate)
    voiced = ~np.isnan(x[: len(y)]) & ~np.isnan(y[: len(x)])
    x, y = x[: len(voiced)][voiced], y[: len(voiced)][voiced]
    if len(x) < 2 or x.std() == 0 or y.std() == 0:
        return {"f0-corr": float("nan")}
    return {"f0-corr": float(np.corrcoef(x, y)[0, 1])}


def perplexity(counts: np.ndarray) -> float:
    """exp of the entropy (nats) of a codebook's code counts (codebook_size,): codes in effective use."""
    total = counts.sum()
    if total == 0:
        return float("nan")
    p = counts[counts > 0] / total
    return float(np.exp(-(p * np.log(p)).sum()))


@dataclass(frozen=True)
class Measure:
    """A group of scores computed together, and the extra that installs what it needs."""

    name: str
    columns: tuple[str, ...]
    make: Callable[[], Callable[[np.ndarray, np.ndarray, int], dict[str, float]]]
    module: Optional[str] = None  # the import that needs the extra
    extra: str = "evaluate"


MEASURES = {m.name: m for m in (
    Measure("original", tuple(f"{k}-{tag}" for tag in ORIGINAL_RATES for k in ("mel", "stft", "waveform", "sisdr")),
            OriginalMetrics),
    Measure("visqol", ("visqol-audio", "visqol-speech"), Visqol, "visqol"),
    Measure("stoi", ("stoi",), lambda: stoi, "pystoi"),
    Measure("pesq", ("pesq",), lambda: pesq, "pesq", extra="pesq"),
    Measure("f0", ("f0-corr",), lambda: f0_correlation, "librosa"),
)}
DEFAULT_MEASURES = ("original", "visqol", "stoi", "f0")  # PESQ is asked for: its licence is not MIT's


def check_measures(names: list[str]) -> list[Measure]:
    """The measures of these names, each checked to be known and installed.

    Raises:
        ValueError: An unknown name, or one whose library is missing (with the pip command that installs it).
    """
    import importlib.util

    chosen = []
    for name in names:
        if name not in MEASURES:
            raise ValueError(f"Unknown measure {name!r}; choose from {', '.join(MEASURES)}.")
        measure = MEASURES[name]
        if measure.module and importlib.util.find_spec(measure.module) is None:
            raise ValueError(f"The {name} measure needs {measure.module}: pip install 'dac-codec[{measure.extra}]'")
        chosen.append(measure)
    return chosen


def better(column: str) -> str:
    """'lower' or 'higher': which way a column's scores improve."""
    return "lower" if column.split("-")[0] in LOWER_IS_BETTER else "higher"
