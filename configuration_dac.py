"""Configuration of the Descript Audio Codec (DAC), Kumar et al., NeurIPS 2023, and the checks of its values.

The checks (`check_int`, `check_chunk_size`) serve the config and the model's per-call arguments alike: a value of
the wrong type is a `TypeError`, a value of the right type outside what is allowed a `ValueError`.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
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
_RELEASE_DEFAULTS = dict(encoder_dim=64, decoder_dim=1536, codebook_size=1024, codebook_dim=8, latent_dim=None)
# What makes two models the same model: the converter, the Hub build and the tests compare configs on these.
ARCHITECTURE_KEYS = ("encoder_dim", "encoder_rates", "latent_dim", "decoder_dim", "decoder_rates", "n_codebooks",
                     "codebook_size", "codebook_dim", "sampling_rate")
# "exact": equal to whole-signal decoding; "overlap_average": the earlier model card's chunks, averaged where they
# overlap (approximate); "unpadded": the original package's decoding of its windowed `.dac` files, each chunk on
# its own with the convolutions' padding off (shorter audio than the frames span).
DECODING_MODES = ("exact", "overlap_average", "unpadded")


def check_int(name: str, value: Any, minimum: int = 1) -> int:
    """`value` as an int >= `minimum`; bools and floats are a TypeError, even 2.0."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"`{name}` must be an int, got {value!r} ({type(value).__name__}).")
    if value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}, got {value!r}.")
    return int(value)


def check_chunk_size(name: str, value: Any, unit: str) -> float:
    """A chunk size: 0 or None for no chunking, else a positive number of "seconds" or a positive int of "frames".
    Returns it as a number, 0 for no chunking."""
    if value is None:
        return 0
    if unit == "frames":
        return check_int(name, value, minimum=0)
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"`{name}` must be a number of seconds, got {value!r} ({type(value).__name__}).")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"`{name}` must be a positive number of seconds, or 0 for no chunking; got {value!r}.")
    return float(value)


def check_number(name: str, value: Any, low: float, high: float, allowed: str, include_high: bool = False) -> float:
    """A real number in [low, high) (or [low, high] with `include_high`); bools are a TypeError."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"`{name}` must be a number in {allowed}, got {value!r}.")
    number = float(value)
    if not (low <= number < high or (include_high and number == high)):
        raise ValueError(f"`{name}` must be in {allowed}, got {value!r}.")
    return number


def _int_list(name: str, value: Any) -> list[int]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"`{name}` must be a list of positive ints, got {value!r}.")
    if not value:
        raise ValueError(f"`{name}` must be a non-empty list of positive ints, got {value!r}.")
    return [check_int(f"{name}[{i}]", v) for i, v in enumerate(value)]


def _preset(name: str) -> dict[str, Any]:
    """Every architecture value of a released model."""
    if name not in PRESETS:
        raise ValueError(f"Unknown DAC preset {name!r}; choose one of {sorted(PRESETS)}.")
    return {**_RELEASE_DEFAULTS, **PRESETS[name]}


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
            It bounds the memory of the CPU's streams and of `encode_stream` on every device; on an accelerator,
            `encode` runs windows as long as memory allows unless a call gives a chunk size. The codes do not
            depend on it.
        decoding_chunk_size: Code frames per decoder chunk; 0 or None decodes all frames at once. As the encoding
            chunk: the CPU's streams, `decode_stream` and `decode_to_audiofile` everywhere, and on an accelerator
            `decode` only when a call gives it; in "overlap_average" and "unpadded" modes the chunks decoded alone.
        decoding_mode: One of `DECODING_MODES`: "exact" (the result equals whole-signal decoding), "overlap_average"
            (the earlier model card's chunks averaged over an overlap; approximate) or "unpadded" (the original's
            windowed files' decoding).
        decoding_overlap_rate: Overlap between chunks as a fraction of the chunk, for "overlap_average" only.
        quantizer_dropout: In training, the share of each batch whose items use a random number of codebooks
            (the reference's quantizer dropout; its base training configuration uses 1.0). 0 by default, as the
            reference's model constructor has it.
        commitment_loss_weight, codebook_loss_weight: The weights of the two vector-quantization losses in
            `DacOutput.loss` (the reference's training recipe and transformers' `DacModel`: 0.25 and 1).

    Raises:
        TypeError: A value of the wrong type (a float or bool for an int, a string for a list).
        ValueError: A value outside what is allowed, or a decoder that does not undo the encoder's hop.
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
        quantizer_dropout: float = 0.0,
        commitment_loss_weight: float = 0.25,
        codebook_loss_weight: float = 1.0,
        **kwargs: Any,
    ):
        # Architecture values left out come from the 44.1 kHz release, or from the preset that config.json files
        # of the earlier model card name in `model_type_by_sampling_freq`.
        given = dict(encoder_dim=encoder_dim, encoder_rates=encoder_rates, latent_dim=latent_dim,
                     decoder_dim=decoder_dim, decoder_rates=decoder_rates, n_codebooks=n_codebooks,
                     codebook_size=codebook_size, codebook_dim=codebook_dim, sampling_rate=sampling_rate)
        base = _preset(kwargs.get("model_type_by_sampling_freq") or "44khz")
        values: dict[str, Any] = {key: base[key] if value is None else value for key, value in given.items()}
        self.encoder_dim = check_int("encoder_dim", values["encoder_dim"])
        self.encoder_rates = _int_list("encoder_rates", values["encoder_rates"])
        latent_dim = values["latent_dim"]
        self.latent_dim = check_int(
            "latent_dim", self.encoder_dim * 2 ** len(self.encoder_rates) if latent_dim is None else latent_dim
        )
        self.decoder_dim = check_int("decoder_dim", values["decoder_dim"])
        self.decoder_rates = _int_list("decoder_rates", values["decoder_rates"])
        self.n_codebooks = check_int("n_codebooks", values["n_codebooks"])
        self.codebook_size = check_int("codebook_size", values["codebook_size"], minimum=2)
        self.codebook_dim = check_int("codebook_dim", values["codebook_dim"])
        self.sampling_rate = check_int("sampling_rate", values["sampling_rate"])
        self.encoding_chunk_size_in_sec = encoding_chunk_size_in_sec
        self.decoding_chunk_size = decoding_chunk_size
        self.decoding_mode = decoding_mode
        self.decoding_overlap_rate = decoding_overlap_rate
        self.quantizer_dropout = quantizer_dropout
        self.commitment_loss_weight = commitment_loss_weight
        self.codebook_loss_weight = codebook_loss_weight
        super().__init__(**kwargs)
        self._validate()

    def _validate(self) -> None:
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
        check_chunk_size("encoding_chunk_size_in_sec", self.encoding_chunk_size_in_sec, "seconds")
        check_chunk_size("decoding_chunk_size", self.decoding_chunk_size, "frames")
        if self.decoding_mode not in DECODING_MODES:
            raise ValueError(f"`decoding_mode` must be one of {DECODING_MODES}, got {self.decoding_mode!r}.")
        check_number("decoding_overlap_rate", self.decoding_overlap_rate, 0, 1, "[0, 1)")
        check_number("quantizer_dropout", self.quantizer_dropout, 0, 1, "[0, 1]", include_high=True)
        check_number("commitment_loss_weight", self.commitment_loss_weight, 0, math.inf, ">= 0")
        check_number("codebook_loss_weight", self.codebook_loss_weight, 0, math.inf, ">= 0")

    @classmethod
    def from_preset(cls, name: str, **kwargs: Any) -> "DacConfig":
        """The config of a released model: one of "16khz", "24khz", "44khz", "44khz_16kbps"."""
        return cls(**{**_preset(name), **kwargs})

    def architecture(self) -> dict[str, Any]:
        """The values of `ARCHITECTURE_KEYS`: equal for two configs exactly when their weights are interchangeable
        and they take the same audio."""
        return {key: getattr(self, key) for key in ARCHITECTURE_KEYS}

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
