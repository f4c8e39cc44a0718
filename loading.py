"""Loading a model by name: a folder or Hub id of this package's format, or a transformers `DacModel` (such as
descript/dac_44khz), whose weights are the same tensors under weight norm and are folded here."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import torch

from .configuration_dac import DacConfig
from .modeling_dac import DacModel

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}  # by name


def first_line(error: BaseException) -> str:
    """The first line of an error's message, or its type's name: how a long job reports one failed item."""
    return str(error).splitlines()[0] if str(error).strip() else type(error).__name__


def write_atomically(output: Path, write: Callable[[str], None]) -> None:
    """`write(path)` to a temporary name beside `output`, then renamed: an interrupted run leaves no output that a
    rerun would take for done."""
    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = output.with_name(output.name + ".partial")
    try:
        write(str(temporary))
        os.replace(temporary, output)
    finally:
        if temporary.exists():
            temporary.unlink()


def fold_weight_norm(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replaces every weight-norm pair (`weight_g`/`weight_v`, or parametrizations' `original0`/`original1`) with
    the plain weight g * v / ||v|| over all dims but 0, computed by the same kernel the reference runs."""
    pairs = {".weight_g": ".weight_v", ".parametrizations.weight.original0": ".parametrizations.weight.original1"}
    folded = {}
    for name, value in state_dict.items():
        for g_suffix, v_suffix in pairs.items():
            if name.endswith(g_suffix):
                prefix = name[: -len(g_suffix)]
                folded[prefix + ".weight"] = torch._weight_norm(state_dict[prefix + v_suffix], value, 0)
                break
            if name.endswith(v_suffix):
                break
        else:
            folded[name] = value
    return folded


def load_strict(model: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Loads `state_dict`, failing on any missing, unexpected or mis-shaped key."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    misshaped = [
        f"{k}: {tuple(state_dict[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    if missing or unexpected or misshaped:
        raise ValueError(
            f"Checkpoint does not fit the model: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}, mis-shaped {misshaped[:5]}."
        )
    model.load_state_dict(state_dict, strict=True)


def config_from_transformers(config: dict[str, Any]) -> DacConfig:
    """Our config from a transformers `DacConfig` (model_type "dac") as a dict."""
    return DacConfig(
        encoder_dim=config["encoder_hidden_size"],
        encoder_rates=list(config["downsampling_ratios"]),
        latent_dim=config["hidden_size"],
        decoder_dim=config["decoder_hidden_size"],
        decoder_rates=list(config["upsampling_ratios"]),
        n_codebooks=config["n_codebooks"],
        codebook_size=config["codebook_size"],
        codebook_dim=config["codebook_dim"],
        sampling_rate=config["sampling_rate"],
    )


def _hub_folder(name: str, patterns: list[str]) -> Path:
    """A local folder, or the snapshot of a Hub repo; one clear error where the Hub cannot be reached."""
    if Path(name).is_dir():
        return Path(name)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, allow_patterns=patterns))
    except Exception as error:  # offline, no such repo, no access: one line that says which and what to do
        raise ValueError(
            f"Could not get {name!r} from the Hugging Face Hub ({first_line(error)}). Check the name and the network, "
            "or give a local folder that holds config.json and the weights."
        ) from None


def load_model(name: str) -> DacModel:
    """Our model from a folder or Hub id: of this package's format, or a transformers `DacModel`, converted."""
    folder = _hub_folder(name, ["*.json", "*.safetensors"])
    if not (folder / "config.json").is_file():
        raise ValueError(f"{name!r} holds no config.json; it is not a model folder.")
    config = json.loads((folder / "config.json").read_text())
    if config.get("model_type") == DacConfig.model_type:
        return DacModel.from_pretrained(folder)
    if config.get("model_type") != "dac":
        raise ValueError(f"{name!r} holds a {config.get('model_type')!r} model, neither this package's DAC "
                         f"({DacConfig.model_type!r}) nor transformers' DacModel ('dac').")
    from safetensors.torch import load_file

    state_dict = {}
    for file in sorted(folder.glob("*.safetensors")):
        state_dict.update(load_file(file))
    model = DacModel(config_from_transformers(config))
    load_strict(model, fold_weight_norm(state_dict))
    return model
