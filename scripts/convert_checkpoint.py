"""Converts a DAC checkpoint into a folder that `AutoModel.from_pretrained(DIR, trust_remote_code=True)` loads.

    python scripts/convert_checkpoint.py --checkpoint weights_44khz_8kbps_0.0.1.pth --output-dir dac_44khz
    python scripts/convert_checkpoint.py --checkpoint descript/dac_44khz --output-dir dac_44khz

Accepts an original release checkpoint (`.pth`: {"state_dict", "metadata": {"kwargs"}}) or a transformers
`DacModel` checkpoint (a folder or Hub id with config.json and model.safetensors).

Key policy: our parameter names are those of transformers' `DacModel`. Original checkpoints name layers by their
`nn.Sequential` index and store weight norm as `weight_g` / `weight_v`; both are mapped and folded here, and the
result must match the model's keys and shapes exactly, or conversion fails.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dac_package  # noqa: E402

modeling = dac_package.load()
DacConfig, DacModel = modeling.DacConfig, modeling.DacModel
configuration = sys.modules["dac_codec.configuration_dac"]
loading = importlib.import_module("dac_codec.loading")
fold_weight_norm, load_strict, load_model_by_name = loading.fold_weight_norm, loading.load_strict, loading.load_model
PRESETS, ARCHITECTURE_KEYS = configuration.PRESETS, configuration.ARCHITECTURE_KEYS

AUTO_MAP = {"AutoConfig": "configuration_dac.DacConfig", "AutoModel": "modeling_dac.DacModel"}
RUNTIME_FILES = (*dac_package.MODEL_FILES, "requirements.txt")
RESIDUAL_UNIT = ("snake1", "conv1", "snake2", "conv2")  # reference ResidualUnit.block indices 0..3


def original_key(name: str, n_encoder_blocks: int, n_decoder_blocks: int) -> str:
    """Our name for a parameter of the original package's `DAC` (its `nn.Sequential` indices)."""
    rules = [
        (r"encoder\.block\.0\.", lambda m: "encoder.conv1."),
        (r"encoder\.block\.(\d+)\.block\.([0-2])\.block\.([0-3])\.",
         lambda m: f"encoder.block.{int(m[1]) - 1}.res_unit{int(m[2]) + 1}.{RESIDUAL_UNIT[int(m[3])]}."),
        (r"encoder\.block\.(\d+)\.block\.3\.", lambda m: f"encoder.block.{int(m[1]) - 1}.snake1."),
        (r"encoder\.block\.(\d+)\.block\.4\.", lambda m: f"encoder.block.{int(m[1]) - 1}.conv1."),
        (rf"encoder\.block\.{n_encoder_blocks + 1}\.", lambda m: "encoder.snake1."),
        (rf"encoder\.block\.{n_encoder_blocks + 2}\.", lambda m: "encoder.conv2."),
        (r"decoder\.model\.0\.", lambda m: "decoder.conv1."),
        (r"decoder\.model\.(\d+)\.block\.0\.", lambda m: f"decoder.block.{int(m[1]) - 1}.snake1."),
        (r"decoder\.model\.(\d+)\.block\.1\.", lambda m: f"decoder.block.{int(m[1]) - 1}.conv_t1."),
        (r"decoder\.model\.(\d+)\.block\.([2-4])\.block\.([0-3])\.",
         lambda m: f"decoder.block.{int(m[1]) - 1}.res_unit{int(m[2]) - 1}.{RESIDUAL_UNIT[int(m[3])]}."),
        (rf"decoder\.model\.{n_decoder_blocks + 1}\.", lambda m: "decoder.snake1."),
        (rf"decoder\.model\.{n_decoder_blocks + 2}\.", lambda m: "decoder.conv2."),
        (r"quantizer\.quantizers\.(\d+)\.", lambda m: m[0]),
    ]
    for pattern, rename in rules:
        match = re.match(pattern, name)
        if match:
            return rename(match) + name[match.end():]
    raise ValueError(f"Unexpected key in the original checkpoint: {name!r}.")


def config_from_original(kwargs: dict[str, Any], sampling_rate: Optional[int] = None) -> DacConfig:
    """Our config from an original checkpoint's constructor arguments (`metadata["kwargs"]`), which use our names
    but `sample_rate`; older files lack `latent_dim` (then encoder_dim * 2 ** len(rates)) and `sample_rate`."""
    missing = [key for key in ARCHITECTURE_KEYS if key not in ("latent_dim", "sampling_rate", *kwargs)]
    if missing:
        raise ValueError(f"The checkpoint's metadata lacks the architecture values {missing}.")
    arch = {key: kwargs.get(key) for key in ARCHITECTURE_KEYS if key != "sampling_rate"}
    sampling_rate = sampling_rate or kwargs.get("sample_rate") or _preset_sampling_rate(DacConfig(**arch))
    return DacConfig(**arch, sampling_rate=sampling_rate)


def _preset_sampling_rate(config: DacConfig) -> int:
    """The sample rate of the released model whose architecture `config` has, for files that do not record it."""
    ours = {k: v for k, v in config.architecture().items() if k != "sampling_rate"}
    for name, preset in PRESETS.items():
        release = DacConfig.from_preset(name).architecture()
        if ours == {k: v for k, v in release.items() if k != "sampling_rate"}:
            return preset["sampling_rate"]
    raise ValueError("The checkpoint does not record its sample rate and matches no released model; "
                     "pass --sampling-rate.")


def model_from_original(path: str, sampling_rate: Optional[int] = None) -> DacModel:
    """Our model with the weights of an original release checkpoint (.pth)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # corrupt file, or a pickle that needs code to load
        raise ValueError(f"Could not read {path!r} as a checkpoint with weights_only=True: {error}") from error
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "metadata" not in checkpoint:
        raise ValueError(f"{path!r} is not an original DAC checkpoint: expected keys 'state_dict' and 'metadata'.")
    config = config_from_original(checkpoint["metadata"]["kwargs"], sampling_rate)
    model = DacModel(config)
    n_enc, n_dec = len(config.encoder_rates), len(config.decoder_rates)
    state_dict = {original_key(k, n_enc, n_dec): v for k, v in fold_weight_norm(checkpoint["state_dict"]).items()}
    load_strict(model, state_dict)
    return model


def write_model_folder(model: DacModel, output_dir: str | os.PathLike, readme: Optional[str] = None) -> Path:
    """Writes config.json (with auto_map), model.safetensors, the root modules, requirements.txt and README.md."""
    output_dir = Path(output_dir)
    model.config.auto_map = AUTO_MAP
    model.config.architectures = ["DacModel"]
    model.save_pretrained(output_dir)
    for name in RUNTIME_FILES:
        shutil.copy(dac_package.ROOT / name, output_dir / name)
    if readme is None:
        readme = (dac_package.ROOT / "README.md").read_text()
    (output_dir / "README.md").write_text(readme)
    return output_dir


def load_model(checkpoint: str, sampling_rate: Optional[int] = None) -> DacModel:
    """Our model from an original .pth, a transformers DacModel folder or Hub id, or a folder or Hub id of ours."""
    if checkpoint.endswith((".pth", ".pt", ".ckpt")) or Path(checkpoint).is_file():
        if not Path(checkpoint).is_file():
            raise FileNotFoundError(f"No checkpoint file at {checkpoint!r}.")
        return model_from_original(checkpoint, sampling_rate)
    return load_model_by_name(checkpoint)


def convert(checkpoint: str, output_dir: str, sampling_rate: Optional[int] = None) -> Path:
    return write_model_folder(load_model(checkpoint, sampling_rate), output_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="original .pth, or transformers DacModel folder / Hub id")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--sampling-rate", type=int, help="only for checkpoints that do not record it")
    args = parser.parse_args()
    folder = convert(args.checkpoint, args.output_dir, args.sampling_rate)
    print(f"Wrote {folder}: load it with AutoModel.from_pretrained({str(folder)!r}, trust_remote_code=True)")


if __name__ == "__main__":
    main()
