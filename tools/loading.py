"""Loading a model by name, strictly, and saying which model it is.

`load_model` takes a folder or Hub id of this package's format, a transformers `DacModel` folder or Hub id (such as
descript/dac_44khz, whose weight norm is folded here), or an original release checkpoint (`weights_44khz_8kbps_
0.0.1.pth`). Every load is strict: a missing, unexpected or mis-shaped tensor, a damaged weights file or a config
that does not fit its weights is a `ValueError` of one line that names the file.

Key policy: our parameter names are those of transformers' `DacModel`. Original checkpoints name layers by their
`nn.Sequential` index and store weight norm as `weight_g` / `weight_v`; both are mapped and folded here, and the
result must match the model's keys and shapes exactly.

`model_identity` is what files and manifests record about the model that made them (its name, architecture and the
sha256 of its weights), and `check_identity` what decoding checks against it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import torch

from ..configuration_dac import ARCHITECTURE_KEYS, PRESETS, DacConfig
from ..modeling_dac import DacModel
from .command import first_line

# by name; "mixed": float32 weights and audio, bf16 products where they decide no codes (`resolve_device`)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "mixed": torch.float32}
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt")  # the original package's release files
RESIDUAL_UNIT = ("snake1", "conv1", "snake2", "conv2")  # reference ResidualUnit.block indices 0..3


# ----------------------------------------------------------------------------------------------------------------
# Weights
def fold_weight_norm(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replaces every weight-norm pair (`weight_g`/`weight_v`, or parametrizations' `original0`/`original1`) with
    the plain weight g * v / ||v|| over all dims but 0, computed by the same kernel the reference runs."""
    pairs = {".weight_g": ".weight_v", ".parametrizations.weight.original0": ".parametrizations.weight.original1"}
    folded = {}
    for name, value in state_dict.items():
        for g_suffix, v_suffix in pairs.items():
            if name.endswith(g_suffix):
                prefix = name[: -len(g_suffix)]
                if prefix + v_suffix not in state_dict:
                    raise ValueError(f"it holds {name} without {prefix + v_suffix}")
                folded[prefix + ".weight"] = torch._weight_norm(state_dict[prefix + v_suffix], value, 0)
                break
            if name.endswith(v_suffix):
                if name[: -len(v_suffix)] + g_suffix not in state_dict:
                    raise ValueError(f"it holds {name} without {name[: -len(v_suffix)] + g_suffix}")
                break
        else:
            folded[name] = value
    return folded


def load_strict(model: torch.nn.Module, state_dict: dict[str, Any], source: str) -> None:
    """Loads `state_dict` into `model`, refusing any missing, unexpected or mis-shaped tensor (one line naming
    `source`)."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    misshaped = [f"{k} {tuple(state_dict[k].shape)} for {tuple(v.shape)}" for k, v in expected.items()
                 if k in state_dict and (not isinstance(state_dict[k], torch.Tensor) or state_dict[k].shape != v.shape)]
    if missing or unexpected or misshaped:
        raise ValueError(f"{source} does not fit its model: {describe_keys(missing, unexpected, misshaped)}.")
    model.load_state_dict(state_dict, strict=True)


def describe_keys(missing: list[str], unexpected: list[str], misshaped: list[str]) -> str:
    """'missing 2 (a, b), unexpected 1 (c)': what a checkpoint lacks or has too much, a few names of each."""
    parts = []
    for what, names in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
        if names:
            shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
            parts.append(f"{len(names)} {what} ({shown})")
    return "; ".join(parts)


# ----------------------------------------------------------------------------------------------------------------
# The original package's checkpoints
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
    raise ValueError(f"it holds the unexpected tensor {name!r}")


def config_from_original(kwargs: Any, sampling_rate: Optional[int] = None) -> DacConfig:
    """Our config from an original checkpoint's constructor arguments (`metadata["kwargs"]`), which use our names
    but `sample_rate`; older files lack `latent_dim` (then encoder_dim * 2 ** len(rates)) and `sample_rate`."""
    if not isinstance(kwargs, dict):
        raise ValueError(f"its metadata 'kwargs' is a {type(kwargs).__name__}, not the model's constructor arguments")
    missing = [key for key in ARCHITECTURE_KEYS if key not in ("latent_dim", "sampling_rate", *kwargs)]
    if missing:
        raise ValueError(f"its metadata lacks the architecture values {missing}")
    arch: dict[str, Any] = {key: kwargs.get(key) for key in ARCHITECTURE_KEYS if key != "sampling_rate"}
    try:
        config = DacConfig(**arch)
        sampling_rate = sampling_rate or kwargs.get("sample_rate") or _preset_sampling_rate(config)
        return DacConfig(**arch, sampling_rate=sampling_rate)
    except TypeError as error:  # a field of the wrong type in a file from elsewhere: its data, not our bug
        raise ValueError(f"its metadata does not describe a DAC model ({error})") from None


def _preset_sampling_rate(config: DacConfig) -> int:
    """The sample rate of the released model whose architecture `config` has, for files that do not record it."""
    ours = {k: v for k, v in config.architecture().items() if k != "sampling_rate"}
    for name, preset in PRESETS.items():
        release = DacConfig.from_preset(name).architecture()
        if ours == {k: v for k, v in release.items() if k != "sampling_rate"}:
            return preset["sampling_rate"]
    raise ValueError("it does not record its sample rate and matches no released model; give the sampling rate")


def model_from_original(path: Union[str, os.PathLike], sampling_rate: Optional[int] = None) -> DacModel:
    """Our model with the weights of an original release checkpoint (.pth), read with `weights_only=True`."""
    path = os.fspath(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated, not a checkpoint, or a pickle that needs code to load
        raise ValueError(f"{path} is not a readable checkpoint ({first_line(error)}).") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict) or not isinstance(
            checkpoint.get("metadata"), dict):
        raise ValueError(f"{path} is not an original DAC checkpoint: it needs the dicts 'state_dict' and 'metadata'.")
    try:
        config = config_from_original(checkpoint["metadata"].get("kwargs"), sampling_rate)
        model = DacModel(config)
        n_enc, n_dec = len(config.encoder_rates), len(config.decoder_rates)
        tensors = checkpoint["state_dict"]
        if not all(isinstance(v, torch.Tensor) for v in tensors.values()):
            raise ValueError("its 'state_dict' holds values that are not tensors")
        state_dict = {original_key(k, n_enc, n_dec): v for k, v in fold_weight_norm(tensors).items()}
    except ValueError as error:
        raise ValueError(f"{path}: {error}.") from None
    load_strict(model, state_dict, path)
    return model


# ----------------------------------------------------------------------------------------------------------------
# Folders and Hub ids
def config_from_transformers(config: dict[str, Any]) -> DacConfig:
    """Our config from a transformers `DacConfig` (model_type "dac") as a dict."""
    keys = {"encoder_dim": "encoder_hidden_size", "encoder_rates": "downsampling_ratios", "latent_dim": "hidden_size",
            "decoder_dim": "decoder_hidden_size", "decoder_rates": "upsampling_ratios", "n_codebooks": "n_codebooks",
            "codebook_size": "codebook_size", "codebook_dim": "codebook_dim", "sampling_rate": "sampling_rate"}
    missing = sorted(theirs for theirs in keys.values() if theirs not in config)
    if missing:
        raise ValueError(f"its config.json lacks {missing}")
    try:
        return DacConfig(**{ours: config[theirs] for ours, theirs in keys.items()})
    except TypeError as error:
        raise ValueError(f"its config.json does not describe a DAC model ({error})") from None


def _hub_folder(name: str, patterns: list[str]) -> Path:
    """A local folder, or the snapshot of a Hub repo; one clear error where the Hub cannot be reached."""
    if Path(name).is_dir():
        return Path(name)
    if Path(name).exists() or name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise FileNotFoundError(f"No model folder or checkpoint at {name!r} (a Hub model is named owner/name).")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, allow_patterns=patterns))
    except Exception as error:  # offline, no such repo, no access: one line that says which and what to do
        raise ValueError(
            f"Could not get {name!r} from the Hugging Face Hub ({first_line(error)}). Check the name and the network, "
            "or give a local folder that holds config.json and the weights."
        ) from None


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No loading bar and no load report from transformers: a refused load is our one line."""
    from transformers.utils import logging

    verbosity, bar = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bar:
            logging.enable_progress_bar()


def load_model(name: Union[str, os.PathLike], sampling_rate: Optional[int] = None) -> DacModel:
    """Our model, in float32 on the CPU, from a folder or Hub id (ours or transformers'), or an original `.pth`;
    its `name_or_path` is `name` as `canonical_name` records it.

    Args:
        name: A folder or Hub id of this package's format or of transformers' `DacModel`, or the path of an
            original release checkpoint (.pth, .pt, .ckpt).
        sampling_rate: Only for original checkpoints that do not record their rate and match no released model.

    Raises:
        FileNotFoundError: Nothing at a local path.
        ValueError: Anything that is not a DAC model, or does not fit its model (one line naming the file).
    """
    model = _load(os.fspath(name), sampling_rate)
    model.name_or_path = model.config.name_or_path = canonical_name(name)
    return model


def _load(name: str, sampling_rate: Optional[int]) -> DacModel:
    if Path(name).is_file() or name.endswith(CHECKPOINT_SUFFIXES):
        if not Path(name).is_file():
            raise FileNotFoundError(f"No checkpoint file at {name!r}.")
        return model_from_original(name, sampling_rate)
    folder = _hub_folder(name, ["*.json", "*.safetensors"])
    config_file = folder / "config.json"
    try:
        config = json.loads(config_file.read_text())
    except FileNotFoundError:
        raise ValueError(f"{name!r} holds no config.json; it is not a model folder.") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{config_file} is not valid JSON ({first_line(error)}).") from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    with _quiet_transformers():
        if model_type == DacConfig.model_type:
            try:
                ours = DacConfig.from_pretrained(folder)
            except (TypeError, ValueError) as error:  # a value of the wrong type or range in a file from elsewhere
                raise ValueError(f"{config_file} does not describe a DAC model ({first_line(error)}).") from None
            return DacModel.from_pretrained(folder, config=ours)
        if model_type != "dac":
            raise ValueError(f"{config_file} describes a {model_type!r} model, neither this package's DAC "
                             f"({DacConfig.model_type!r}) nor transformers' DacModel ('dac').")
        return _model_from_transformers(folder, config)


def _model_from_transformers(folder: Path, config: dict) -> DacModel:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        model = DacModel(config_from_transformers(config))
    except ValueError as error:
        raise ValueError(f"{folder / 'config.json'}: {error}.") from None
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{folder} holds no .safetensors weights.")
    state_dict = {}
    for file in files:
        try:
            state_dict.update(load_file(file))
        except (SafetensorError, OSError) as error:
            raise ValueError(f"{file} is damaged or truncated ({first_line(error)}).") from None
    try:
        state_dict = fold_weight_norm(state_dict)
    except ValueError as error:
        raise ValueError(f"{files[0]}: {error}.") from None
    load_strict(model, state_dict, str(files[0]) if len(files) == 1 else str(folder))
    return model


# ----------------------------------------------------------------------------------------------------------------
# Which model
def canonical_name(name: Union[str, os.PathLike]) -> str:
    """How a model is recorded: a local folder or file by its absolute path (so that it names the same model from
    any working directory), a Hub id as given."""
    name = os.fspath(name)
    return str(Path(name).resolve()) if name and Path(name).exists() else name


def weights_sha256(model: torch.nn.Module) -> str:
    """sha256 of every tensor's name and bytes, in name order (of the model as loaded, before any cast)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def model_identity(model: DacModel, name: Optional[Union[str, os.PathLike]] = None) -> dict[str, Any]:
    """What a file or manifest records about the model that made it: its name (`name`, or the one it was loaded
    by), architecture and weights' hash. Of the weights as loaded: take it before a cast to another dtype."""
    return {"name": canonical_name(name if name is not None else str(model.name_or_path)),
            "architecture": model.config.architecture(), "weights_sha256": weights_sha256(model)}


def check_identity(recorded: dict[str, Any], ours: dict[str, Any], source: str) -> None:
    """Refuses to decode `source` with another model than the one it records (architecture, then weights)."""
    for key in ("architecture", "weights_sha256"):
        if recorded.get(key) is not None and recorded[key] != ours[key]:
            what = "architecture" if key == "architecture" else "set of weights"
            if key == "architecture":
                theirs, mine = recorded[key], ours[key]
                differ = sorted(k for k in set(theirs) | set(mine) if theirs.get(k) != mine.get(k))
                detail = "; ".join(f"{k} {theirs.get(k)!r} there, {mine.get(k)!r} here" for k in differ)
            else:
                detail = f"sha256 {recorded[key][:12]}... there, {ours[key][:12]}... here"
            raise ValueError(f"{source} was made by the model {recorded.get('name')!r}, another {what} than that of "
                             f"{ours['name']!r} ({detail}); decode it with the model that made it.")


# ----------------------------------------------------------------------------------------------------------------
# Devices and precision
def resolve_device(device: Optional[str] = None, dtype: str = "float32") -> tuple[torch.device, torch.dtype]:
    """The device and dtype to run on: `device` (default: cuda if available, else cpu) checked to exist here, and
    `dtype` (a name of `DTYPES`) checked to run there.

    "mixed" runs the float32 model under `torch.set_float32_matmul_precision("medium")`, which this sets for the
    calling process: on a CPU that takes them (`DacModel.takes_bf16_products`) the convolutions that decide no
    codes then take bf16 products, 1.4x faster encoding and 1.9x faster decoding, 99.4-100% of the codes as float32's.

    Raises:
        ValueError: A device that is not a device or not on this machine, or a precision it lacks.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {list(DTYPES)}.")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {device!r} is not a device; give cpu, cuda or cuda:N.") from None
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {device!r}: this machine has no CUDA GPU that torch can use; give cpu.")
        if resolved.index is not None and resolved.index >= count:
            raise ValueError(f"device {device!r}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}.")
        if dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
            raise ValueError(f"device {device!r} has no bfloat16 support; give float16 or float32.")
    elif resolved.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"device {device!r}: this machine has no MPS (Apple GPU) that torch can use; give cpu.")
    elif resolved.type != "cpu":
        raise ValueError(f"device {device!r} is not supported; give cpu, cuda or cuda:N.")
    if resolved.type == "cpu" and dtype == "float16":
        other = "bfloat16 or float32" if cpu_has_bfloat16() else "float32"
        raise ValueError(f"float16 does not run on the CPU at any useful speed; give {other}.")
    if resolved.type == "cpu" and dtype == "bfloat16" and not cpu_has_bfloat16():
        raise ValueError("dtype bfloat16: this CPU has no bfloat16 kernels (they need AVX-512), and it runs about 4x "
                         "slower than float32 here; give float32.")
    if dtype == "mixed":
        if resolved.type != "cpu":
            raise ValueError(f"dtype mixed (bf16 products) runs on a CPU, and device {device!r} is no CPU; give "
                             f"float32, or bfloat16 for reduced precision.")
        previous = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("medium")
        if not DacModel.takes_bf16_products(resolved):
            torch.set_float32_matmul_precision(previous)
            raise ValueError("dtype mixed (bf16 products): this CPU runs float32 matmuls in float32 even when allowed "
                             "bf16 products (CPUs with AMX take them), so mixed would be float32; give float32.")
    return resolved, DTYPES[dtype]


def cpu_has_bfloat16() -> bool:
    """Whether oneDNN runs bfloat16 convolutions on this CPU; without, torch falls back to its generic loops."""
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
