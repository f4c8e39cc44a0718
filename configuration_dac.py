"""Configuration of the Descript Audio Codec (DAC), Kumar et al., NeurIPS 2023."""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

from transformers import PretrainedConfig

# The four released checkpoints (descriptinc/descript-audio-codec, conf/final/*.yml).
PRESETS: dict[str, dict[str, Any]] = {
    "16khz": dict(encoder_rates=[2, 4, 5, 8], decoder_rates=[8, 5, 4, 2], n_codebooks=12, sampling_rate=16000),
    "24khz": dict(encoder_rates=[2, 4, 5, 8], decoder_rates=[8, 5, 4, 2], n_codebooks=32, sampling_rate=24000),
    "44khz": dict(encoder_rates=[2, 4, 8, 8], decoder_rates=[8, 8, 4, 2], n_codebooks=9, sampling_rate=44100),
    "44khz_16kbps": dict(
        encoder_rates=[2, 4, 8, 8], decoder_rates=[8, 8, 4, 2], n_codebooks=18, latent_dim=128, sampling_rate=44100
    ),
}

DECODING_MODES = ("exact", "overlap_average")
_RELEASE_DEFAULTS = dict(encoder_dim=64, decoder_dim=1536, codebook_size=1024, codebook_dim=8, latent_dim=None)


def _preset(name: str) -> dict[str, Any]:
    """Every architecture value of a released model."""
    if name not in PRESETS:
        raise ValueError(f"Unknown DAC preset {name!r}; choose one of {sorted(PRESETS)}.")
    return {**_RELEASE_DEFAULTS, **PRESETS[name]}


def _positive_int_list(name: str, value: Sequence[int]) -> list[int]:
    if isinstance(value, (int, str)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise TypeError(f"`{name}` must be a list of positive ints, got {value!r}.")
    value = list(value)
    if not value or any(v <= 0 for v in value):
        raise ValueError(f"`{name}` must be a non-empty list of positive ints, got {value!r}.")
    return value


def _positive(name: str, value: Any, kind: type = int) -> None:
    ok = isinstance(value, (int, float) if kind is float else int) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value <= 0:
        raise ValueError(f"`{name}` must be a positive {kind.__name__}, got {value!r}.")


class DacConfig(PretrainedConfig):
    """Hyperparameters of a DAC model. Defaults are the 44.1 kHz, 8 kbps release.

    Args:
        encoder_dim: Channels after the encoder's first convolution; doubled by each encoder block.
        encoder_rates: Stride of each encoder block. Their product is the hop length.
        latent_dim: Channels of the continuous latent `z`. Defaults to `encoder_dim * 2 ** len(encoder_rates)`.
        decoder_dim: Channels after the decoder's first convolution; halved by each decoder block.
        decoder_rates: Upsampling factor of each decoder block. Their product must equal the hop length.
        n_codebooks: Number of residual vector quantizers.
        codebook_size: Entries per codebook (the token vocabulary).
        codebook_dim: Dimension of the low-dimensional space where codes are looked up.
        sampling_rate: Sample rate of the audio the model takes and returns, in Hz.
        encoding_chunk_size_in_sec: Audio per encoder chunk, in seconds; 0 or None encodes the whole signal at once.
        decoding_chunk_size: Code frames per decoder chunk; 0 or None decodes all frames at once.
        decoding_mode: "exact" (chunks carry cropped receptive-field context, the result equals whole-signal
            decoding) or "overlap_average" (the seed model card's chunks averaged over an overlap; approximate).
        decoding_overlap_rate: Overlap between chunks as a fraction of the chunk, for "overlap_average" only.
    """

    model_type = "descript_audio_codec"

    def __init__(
        self,
        encoder_dim: Optional[int] = None,
        encoder_rates: Optional[Sequence[int]] = None,
        latent_dim: Optional[int] = None,
        decoder_dim: Optional[int] = None,
        decoder_rates: Optional[Sequence[int]] = None,
        n_codebooks: Optional[int] = None,
        codebook_size: Optional[int] = None,
        codebook_dim: Optional[int] = None,
        sampling_rate: Optional[int] = None,
        encoding_chunk_size_in_sec: Optional[float] = 1.0,
        decoding_chunk_size: Optional[int] = 64,
        decoding_mode: str = "exact",
        decoding_overlap_rate: float = 0.1,
        **kwargs: Any,
    ):
        # Architecture values left out come from the 44.1 kHz release, or from the preset that config.json files
        # of the earlier model card name in `model_type_by_sampling_freq`.
        base = _preset(kwargs.get("model_type_by_sampling_freq") or "44khz")
        encoder_dim = base["encoder_dim"] if encoder_dim is None else encoder_dim
        encoder_rates = base["encoder_rates"] if encoder_rates is None else encoder_rates
        decoder_dim = base["decoder_dim"] if decoder_dim is None else decoder_dim
        decoder_rates = base["decoder_rates"] if decoder_rates is None else decoder_rates
        n_codebooks = base["n_codebooks"] if n_codebooks is None else n_codebooks
        codebook_size = base["codebook_size"] if codebook_size is None else codebook_size
        codebook_dim = base["codebook_dim"] if codebook_dim is None else codebook_dim
        sampling_rate = base["sampling_rate"] if sampling_rate is None else sampling_rate
        if not isinstance(encoder_dim, int) or isinstance(encoder_dim, bool):
            raise ValueError(f"`encoder_dim` must be a positive int, got {encoder_dim!r}.")
        self.encoder_dim = encoder_dim
        self.encoder_rates = _positive_int_list("encoder_rates", encoder_rates)
        self.latent_dim = latent_dim if latent_dim is not None else encoder_dim * 2 ** len(self.encoder_rates)
        self.decoder_dim = decoder_dim
        self.decoder_rates = _positive_int_list("decoder_rates", decoder_rates)
        self.n_codebooks = n_codebooks
        self.codebook_size = codebook_size
        self.codebook_dim = codebook_dim
        self.sampling_rate = sampling_rate
        self.encoding_chunk_size_in_sec = encoding_chunk_size_in_sec
        self.decoding_chunk_size = decoding_chunk_size
        self.decoding_mode = decoding_mode
        self.decoding_overlap_rate = decoding_overlap_rate
        super().__init__(**kwargs)
        self._validate()

    def _validate(self) -> None:
        for name in ("encoder_dim", "latent_dim", "decoder_dim", "n_codebooks", "codebook_dim", "sampling_rate"):
            _positive(name, getattr(self, name))
        if not isinstance(self.codebook_size, int) or self.codebook_size < 2:
            raise ValueError(f"`codebook_size` must be an int >= 2, got {self.codebook_size!r}.")
        if math.prod(self.decoder_rates) != self.hop_length:
            raise ValueError(
                f"The decoder must upsample by the encoder's hop length: prod(decoder_rates={self.decoder_rates}) = "
                f"{math.prod(self.decoder_rates)} but prod(encoder_rates={self.encoder_rates}) = {self.hop_length}."
            )
        if self.decoder_dim % 2 ** len(self.decoder_rates):
            raise ValueError(
                f"`decoder_dim` ({self.decoder_dim}) must be divisible by 2 ** len(decoder_rates) "
                f"= {2 ** len(self.decoder_rates)}, since each decoder block halves the channels."
            )
        if self.encoding_chunk_size_in_sec not in (None, 0):
            _positive("encoding_chunk_size_in_sec", self.encoding_chunk_size_in_sec, float)
        if self.decoding_chunk_size not in (None, 0):
            _positive("decoding_chunk_size", self.decoding_chunk_size)
        if self.decoding_mode not in DECODING_MODES:
            raise ValueError(f"`decoding_mode` must be one of {DECODING_MODES}, got {self.decoding_mode!r}.")
        if not (isinstance(self.decoding_overlap_rate, (int, float)) and 0 <= self.decoding_overlap_rate < 1):
            raise ValueError(f"`decoding_overlap_rate` must be in [0, 1), got {self.decoding_overlap_rate!r}.")

    @classmethod
    def from_preset(cls, name: str, **kwargs: Any) -> "DacConfig":
        """The config of a released model: one of "16khz", "24khz", "44khz", "44khz_16kbps"."""
        return cls(**{**_preset(name), **kwargs})

    @property
    def hop_length(self) -> int:
        """Audio samples per code frame."""
        return math.prod(self.encoder_rates)

    @property
    def frame_rate(self) -> float:
        """Code frames per second (44100 / 512 = 86.1328125 for the 44.1 kHz model)."""
        return self.sampling_rate / self.hop_length

    @property
    def bitrate(self) -> float:
        """Bits per second of the codes at full `n_codebooks`."""
        return self.frame_rate * self.n_codebooks * math.log2(self.codebook_size)
