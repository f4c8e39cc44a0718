"""DacConfig: the released presets, validation, serialization, and configs written for the old model card."""

import json
import math

import pytest

from dac_codec import configuration_dac as configuration

from conftest import DacConfig, tiny_config

# Every value a config.json carries: the architecture and the chunking options.
KEYS = (*configuration.ARCHITECTURE_KEYS, "encoding_chunk_size_in_sec", "decoding_chunk_size", "decoding_mode",
        "decoding_overlap_rate")


# ----------------------------------------------------------------------------------------------------------------
# Presets: the four released checkpoints (descript-audio-codec conf/final/*.yml).
# name: (sampling_rate, hop_length, n_codebooks, latent_dim, frame_rate)
RELEASES = {
    "16khz": (16000, 320, 12, 1024, 50.0),
    "24khz": (24000, 320, 32, 1024, 75.0),
    "44khz": (44100, 512, 9, 1024, 86.1328125),
    "44khz_16kbps": (44100, 512, 18, 128, 86.1328125),
}


@pytest.mark.parametrize("name", sorted(RELEASES))
def test_preset_geometry(name):
    sampling_rate, hop, n_codebooks, latent_dim, frame_rate = RELEASES[name]
    config = DacConfig.from_preset(name)
    assert config.sampling_rate == sampling_rate
    assert config.hop_length == hop
    assert math.prod(config.encoder_rates) == hop
    assert math.prod(config.decoder_rates) == hop
    assert config.n_codebooks == n_codebooks
    assert config.latent_dim == latent_dim
    assert config.codebook_size == 1024
    assert config.codebook_dim == 8
    assert config.encoder_dim == 64 and config.decoder_dim == 1536
    # Exactly sampling_rate / hop, never rounded (86.1328125 for 44.1 kHz, not 86 or 86.13).
    assert config.frame_rate == sampling_rate / hop == frame_rate
    assert config.bitrate == pytest.approx(frame_rate * n_codebooks * 10)


def test_44khz_frame_rate_is_not_rounded():
    config = DacConfig.from_preset("44khz")
    assert config.frame_rate == 86.1328125
    assert config.frame_rate != round(config.frame_rate)
    assert isinstance(config.frame_rate, float)


def test_default_config_is_the_44khz_8kbps_release():
    default, preset = DacConfig(), DacConfig.from_preset("44khz")
    assert {k: getattr(default, k) for k in KEYS} == {k: getattr(preset, k) for k in KEYS}


def test_preset_overrides():
    config = DacConfig.from_preset("24khz", n_codebooks=8, decoding_chunk_size=16)
    assert config.sampling_rate == 24000 and config.hop_length == 320
    assert config.n_codebooks == 8 and config.decoding_chunk_size == 16


@pytest.mark.parametrize("name", ["44khz_8kbps", "48khz", "44KHZ", ""])
def test_unknown_preset_names_the_allowed_ones(name):
    with pytest.raises(ValueError, match="preset") as info:
        DacConfig.from_preset(name)
    for allowed in RELEASES:
        assert repr(allowed) in str(info.value)


def test_latent_dim_defaults_to_encoder_width():
    assert tiny_config().latent_dim == 4 * 2**4
    assert tiny_config(latent_dim=12).latent_dim == 12


def test_model_type_does_not_collide_with_transformers_dac():
    # transformers ships its own DacConfig under model_type "dac"; ours must not shadow it in AutoConfig.
    assert DacConfig.model_type != "dac"
    assert DacConfig().model_type != "dac"
    assert DacConfig().to_dict()["model_type"] == DacConfig.model_type


# ----------------------------------------------------------------------------------------------------------------
# Validation
@pytest.mark.parametrize(
    "overrides, error, match",
    [
        # the decoder must undo the encoder's hop
        (dict(encoder_rates=[2, 4, 8, 8], decoder_rates=[8, 8, 4]), ValueError, "hop length"),
        (dict(encoder_rates=[2, 4, 5, 8], decoder_rates=[8, 8, 4, 2]), ValueError, "hop length"),
        # non-positive or non-int sizes
        (dict(encoder_dim=0), ValueError, "encoder_dim"),
        (dict(encoder_dim=-4), ValueError, "encoder_dim"),
        (dict(encoder_dim=4.0), TypeError, "encoder_dim"),
        (dict(encoder_dim=True), TypeError, "encoder_dim.*bool"),
        (dict(n_codebooks=True), TypeError, "n_codebooks"),
        (dict(codebook_size=2.0), TypeError, "codebook_size"),
        (dict(sampling_rate=16000.0), TypeError, "sampling_rate"),
        (dict(sampling_rate="16000"), TypeError, "sampling_rate"),
        (dict(latent_dim=0), ValueError, "latent_dim"),
        (dict(latent_dim=-1), ValueError, "latent_dim"),
        (dict(decoder_dim=0), ValueError, "decoder_dim"),
        (dict(decoder_dim=-32), ValueError, "decoder_dim"),
        (dict(decoder_dim=40), ValueError, "divisible"),  # 4 blocks halve it 4 times
        (dict(n_codebooks=0), ValueError, "n_codebooks"),
        (dict(codebook_dim=0), ValueError, "codebook_dim"),
        (dict(codebook_size=1), ValueError, "codebook_size"),
        (dict(codebook_size=0), ValueError, "codebook_size"),
        (dict(sampling_rate=0), ValueError, "sampling_rate"),
        (dict(sampling_rate=-16000), ValueError, "sampling_rate"),
        # rates
        (dict(encoder_rates=[], decoder_rates=[]), ValueError, "encoder_rates"),
        (dict(encoder_rates=[2, 0, 5, 8]), ValueError, "encoder_rates"),
        (dict(decoder_rates=[8, 5, -4, 2]), ValueError, "decoder_rates"),
        (dict(encoder_rates="2458"), TypeError, "encoder_rates"),
        (dict(encoder_rates=320), TypeError, "encoder_rates"),
        (dict(encoder_rates=[2.0, 4, 5, 8]), TypeError, "encoder_rates"),
        # decoding options
        (dict(decoding_mode="fast"), ValueError, "overlap_average"),
        (dict(decoding_mode=None), ValueError, "decoding_mode"),
        (dict(decoding_overlap_rate=-0.1), ValueError, r"\[0, 1\)"),
        (dict(decoding_overlap_rate=1.0), ValueError, r"\[0, 1\)"),
        (dict(decoding_overlap_rate=1.5), ValueError, r"\[0, 1\)"),
        (dict(decoding_overlap_rate="0.1"), TypeError, "decoding_overlap_rate"),
        (dict(decoding_overlap_rate=False), TypeError, "decoding_overlap_rate"),
        # chunk sizes
        (dict(encoding_chunk_size_in_sec=-1), ValueError, "encoding_chunk_size_in_sec"),
        (dict(encoding_chunk_size_in_sec=-0.5), ValueError, "encoding_chunk_size_in_sec"),
        (dict(decoding_chunk_size=-1), ValueError, "decoding_chunk_size"),
        (dict(decoding_chunk_size=2.5), TypeError, "decoding_chunk_size"),
        (dict(decoding_chunk_size=True), TypeError, "decoding_chunk_size"),
        (dict(encoding_chunk_size_in_sec=True), TypeError, "encoding_chunk_size_in_sec"),
        (dict(encoding_chunk_size_in_sec="1"), TypeError, "encoding_chunk_size_in_sec"),
        (dict(encoding_chunk_size_in_sec=float("inf")), ValueError, "encoding_chunk_size_in_sec"),
        (dict(encoder_rates=[2, True, 5, 8]), TypeError, "encoder_rates"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_invalid_values_are_rejected(overrides, error, match):
    with pytest.raises(error, match=match):
        tiny_config(**overrides)


@pytest.mark.parametrize(
    "overrides",
    [
        dict(encoding_chunk_size_in_sec=0),
        dict(encoding_chunk_size_in_sec=None),
        dict(encoding_chunk_size_in_sec=0.25),
        dict(encoding_chunk_size_in_sec=2),
        dict(decoding_chunk_size=0),
        dict(decoding_chunk_size=None),
        dict(decoding_chunk_size=1),
        dict(decoding_overlap_rate=0),
        dict(decoding_overlap_rate=0.99),
        dict(decoding_mode="overlap_average"),
    ],
)
def test_valid_edge_values_are_accepted(overrides):
    config = tiny_config(**overrides)
    for key, value in overrides.items():
        assert getattr(config, key) == value


def test_nan_encoding_chunk_size_is_rejected():
    with pytest.raises(ValueError, match="encoding_chunk_size_in_sec"):
        tiny_config(encoding_chunk_size_in_sec=float("nan"))


# ----------------------------------------------------------------------------------------------------------------
# Serialization
def _arch(config):
    return {key: getattr(config, key) for key in KEYS}


NON_DEFAULT = dict(
    latent_dim=24,
    decoding_mode="overlap_average",
    decoding_overlap_rate=0.25,
    decoding_chunk_size=None,
    encoding_chunk_size_in_sec=0.5,
)


def test_to_dict_from_dict_round_trip():
    config = tiny_config(**NON_DEFAULT)
    data = config.to_dict()
    assert data["encoder_rates"] == [2, 4, 5, 8] and data["latent_dim"] == 24
    again = DacConfig.from_dict(data)
    assert type(again) is DacConfig
    assert _arch(again) == _arch(config)
    assert again.to_dict() == data
    assert again.hop_length == 320 and again.frame_rate == 50.0


def test_from_dict_validates():
    data = tiny_config().to_dict()
    data["decoder_rates"] = [8, 8, 4, 2]
    with pytest.raises(ValueError, match="hop length"):
        DacConfig.from_dict(data)


def test_save_pretrained_from_pretrained_round_trip(tmp_path):
    config = tiny_config(**NON_DEFAULT)
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == DacConfig.model_type != "dac"
    assert saved["encoder_rates"] == [2, 4, 5, 8] and saved["decoding_chunk_size"] is None
    again = DacConfig.from_pretrained(tmp_path)
    assert _arch(again) == _arch(config)
    assert again.to_dict() == config.to_dict()


@pytest.mark.parametrize("name", sorted(RELEASES))
def test_presets_round_trip_through_json(tmp_path, name):
    config = DacConfig.from_preset(name)
    config.save_pretrained(tmp_path)
    again = DacConfig.from_pretrained(tmp_path)
    assert _arch(again) == _arch(config)
    assert again.frame_rate == RELEASES[name][4]


def test_old_model_card_config_json_still_loads(tmp_path):
    # config.json as the earlier model card (a wrapper around the `dac` package) wrote it: none of the architecture
    # keys, and keys of its own that this config does not use.
    old = {
        "architectures": ["DAC"],
        "auto_map": {"AutoConfig": "configuration_dac.DACConfig", "AutoModel": "modeling_dac.DAC"},
        "model_type_by_sampling_freq": "44khz",
        "encoding_chunk_size_in_sec": 1,
        "decoding_chunk_size": 64,
        "decoding_chunk_rate": 0.1,
        "decoding_overlap_rate": 0.1,
        "torch_dtype": "float32",
        "transformers_version": "4.44.2",
    }
    (tmp_path / "config.json").write_text(json.dumps(old))
    config = DacConfig.from_pretrained(tmp_path)
    assert config.encoding_chunk_size_in_sec == 1
    assert config.decoding_chunk_size == 64
    assert config.decoding_overlap_rate == 0.1
    assert config.decoding_mode == "exact"
    # The architecture falls back to the defaults: the 44.1 kHz release the old card names.
    preset = DacConfig.from_preset("44khz")
    assert config.architecture() == preset.architecture()
    assert config.frame_rate == 86.1328125
    # Unknown keys are kept, not dropped, and survive another save.
    assert config.model_type_by_sampling_freq == "44khz"
    config.save_pretrained(tmp_path / "again")
    assert DacConfig.from_pretrained(tmp_path / "again").model_type_by_sampling_freq == "44khz"


def test_old_model_card_style_kwargs_with_invalid_values_still_fail():
    with pytest.raises(ValueError, match="decoding_overlap_rate"):
        DacConfig(model_type_by_sampling_freq="44khz", encoding_chunk_size_in_sec=1, decoding_chunk_size=64,
                  decoding_overlap_rate=1.0)


@pytest.mark.parametrize("preset", ["16khz", "24khz", "44khz"])
def test_earlier_card_config_names_its_variant(preset):
    """config.json files of the earlier model card carry no architecture, only `model_type_by_sampling_freq`."""
    config = DacConfig(model_type_by_sampling_freq=preset)
    reference = DacConfig.from_preset(preset)
    assert (config.encoder_rates, config.n_codebooks, config.sampling_rate) == (
        reference.encoder_rates, reference.n_codebooks, reference.sampling_rate)
    with pytest.raises(ValueError, match="Unknown DAC preset"):
        DacConfig(model_type_by_sampling_freq="8khz")
