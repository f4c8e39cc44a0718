"""The `.dac` file of the original package (descript-audio-codec 1.0), written so that the original reads it and read
without running any code.

A `.dac` file is `np.save` of one dict, so a NumPy header (`descr '|O'`) and a pickle of:

| key | value |
|---|---|
| `codes` | uint16 array (items * channels, n_codebooks, frames) |
| `metadata.input_db` | float32 array: the loudness of each item before encoding, in dB LUFS |
| `metadata.original_length` | samples of the input, at its own rate |
| `metadata.sample_rate` | the input's rate in Hz |
| `metadata.chunk_length` | frames per chunk that the decoder decodes on its own (all frames for padded files) |
| `metadata.channels` | channels of the input |
| `metadata.padding` | True for files encoded with zero padding (one pass), False for unpadded windows |
| `metadata.dac_version` | "1.0.0"; the original refuses other values |
| `model` | (ours) which model made the file, a dict; the original reads only `codes` and `metadata` |

`np.load(path, allow_pickle=True)` runs whatever the pickle says. `DacFile.load` unpickles with an allow-list of the
few NumPy objects that such files hold (under NumPy 1 and NumPy 2 names) and refuses anything else.
"""

from __future__ import annotations

import io
import os
import pickle
import re
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import TYPE_CHECKING, Any, Optional, Union, cast

import numpy as np

if TYPE_CHECKING:
    import torch

DAC_VERSION = "1.0.0"  # the only version the original reads
# (module, name) -> the NumPy object that a `.dac` pickle may name; NumPy 1 wrote `numpy.core`, NumPy 2 `numpy._core`
_MULTIARRAY = (np._core if hasattr(np, "_core") else np.core).multiarray
_ALLOWED = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    **{(f"numpy.{core}.multiarray", name): getattr(_MULTIARRAY, name) for core in ("core", "_core")
       for name in ("_reconstruct", "scalar")},
}
_INTS = ("original_length", "sample_rate", "chunk_length", "channels")  # metadata fields: positive ints
_MODEL_INTS = ("sampling_rate", "hop_length", "codebook_size")  # ours, under `model`
_SHA256 = re.compile(r"[0-9a-f]{64}")


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which a .dac file never holds")
        return _ALLOWED[module, name]


@dataclass
class DacFile:
    """The contents of a `.dac` file (see the module's table)."""

    codes: torch.Tensor  # (items * channels, n_codebooks, frames) int64
    chunk_length: int
    original_length: int
    input_db: torch.Tensor  # (items,) float32
    channels: int
    sample_rate: int
    padding: bool
    dac_version: str = DAC_VERSION
    model: Optional[dict[str, Any]] = field(default=None)

    def save(self, path: Union[str, os.PathLike]) -> str:
        """Writes the file (the original's layout; `model` beside it) and returns its path."""
        import torch

        if not isinstance(self.codes, torch.Tensor) or self.codes.dim() != 3:
            raise ValueError("`codes` must be a tensor shaped (items * channels, n_codebooks, frames).")
        if self.codes.numel() and (self.codes.min() < 0 or self.codes.max() > np.iinfo(np.uint16).max):
            raise ValueError("`codes` must lie in [0, 65535] to be stored as uint16.")
        artifacts = {
            "codes": self.codes.cpu().numpy().astype(np.uint16),
            "metadata": {
                "input_db": np.asarray(torch.as_tensor(self.input_db).cpu().numpy(), dtype=np.float32),
                "original_length": int(self.original_length),
                "sample_rate": int(self.sample_rate),
                "chunk_length": int(self.chunk_length),
                "channels": int(self.channels),
                "padding": bool(self.padding),
                "dac_version": self.dac_version,
            },
        }
        if self.model is not None:
            artifacts["model"] = dict(self.model)
        path = os.fspath(path)
        with open(path, "wb") as file:
            np.save(file, cast(Any, artifacts))  # to the open file: np.save would add ".npy" to a name
        return path

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "DacFile":
        """Reads a `.dac` file without running code, every field checked (see `read_fields`)."""
        import torch

        fields = read_fields(path)
        fields["codes"] = torch.from_numpy(fields["codes"].astype(np.int64))
        fields["input_db"] = torch.from_numpy(fields["input_db"])
        return cls(**fields)


def read_fields(path: Union[str, os.PathLike]) -> dict[str, Any]:
    """The fields of a `.dac` file as `DacFile` takes them, codes and loudness as NumPy arrays, each checked for
    type and range: codes integers in [0, 65535] shaped (items * channels, n_codebooks, frames), none of them 0;
    positive lengths, rate, chunk and channels that divide the codes' rows; one finite loudness per item.

    Raises:
        FileNotFoundError: No file at `path`.
        ValueError: Not a `.dac` file, a pickle that names anything but the NumPy objects such files hold, or a
            field of the wrong type or range (the message names the file, the field and the value).
    """
    name = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No .dac file at {name!r}.")
    with open(path, "rb") as file:
        try:
            version = np.lib.format.read_magic(file)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read_header is None:
                raise ValueError(f"NumPy format version {version}")
            header = read_header(file)  # (shape, fortran_order, dtype), parsed without eval
        except ValueError as error:
            raise ValueError(f"{name!r} is not a .dac file (no NumPy header): {error}") from error
        if header[2] != np.dtype(object) or header[0] != ():
            raise ValueError(f"{name!r} is not a .dac file: it holds an array of {header[2]}.")
        try:
            artifacts = _NumpyOnlyUnpickler(io.BytesIO(file.read())).load()
        except Exception as error:  # a refused name, or a damaged pickle
            raise ValueError(f"Refused to open {name!r}: {error}.") from error
    return _checked(artifacts, name)


def _checked(artifacts: Any, path: str) -> dict[str, Any]:
    def refuse(field: str, value: Any, wanted: str) -> ValueError:
        shown = repr(value) if not isinstance(value, np.ndarray) else f"an array of {value.dtype} {value.shape}"
        return ValueError(f"{path!r}: {field} must be {wanted}, got {shown[:80]}.")

    if isinstance(artifacts, np.ndarray) and artifacts.dtype == object and artifacts.shape == ():
        artifacts = artifacts[()]
    if not isinstance(artifacts, dict) or not isinstance(artifacts.get("metadata"), dict):
        raise ValueError(f"{path!r} is not a .dac file: expected a dict with 'codes' and 'metadata'.")
    codes, metadata = artifacts.get("codes"), artifacts["metadata"]
    if not isinstance(codes, np.ndarray) or codes.ndim != 3 or not np.issubdtype(codes.dtype, np.integer):
        raise refuse("codes", codes, "an integer array (items * channels, n_codebooks, frames)")
    if 0 in codes.shape:
        raise refuse("codes", codes, "an array with rows, codebooks and frames")
    if codes.min() < 0 or codes.max() > np.iinfo(np.uint16).max:
        raise refuse("codes", f"values {codes.min()} to {codes.max()}", "in [0, 65535]")
    fields: dict[str, Any] = {"codes": codes}
    for key in _INTS:
        value = metadata.get(key)
        value = value.item() if isinstance(value, np.generic) else value
        if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
            raise refuse(f"metadata.{key}", value, "a positive int")
        fields[key] = int(value)
    if codes.shape[0] % fields["channels"]:
        raise refuse("metadata.channels", fields["channels"], f"a divisor of the codes' {codes.shape[0]} rows")
    padding = metadata.get("padding")
    padding = padding.item() if isinstance(padding, np.bool_) else padding
    if not isinstance(padding, bool):
        raise refuse("metadata.padding", padding, "True or False")
    items = codes.shape[0] // fields["channels"]
    input_db = metadata.get("input_db")
    input_db = np.atleast_1d(np.asarray(input_db)) if isinstance(input_db, (np.ndarray, np.generic, Real)) else None
    if input_db is None or not np.issubdtype(input_db.dtype, np.floating) or input_db.size != items or not (
            np.isfinite(input_db).all()):
        raise refuse("metadata.input_db", metadata.get("input_db"), f"{items} finite loudness value(s) in LUFS")
    version = metadata.get("dac_version")
    if version != DAC_VERSION:
        raise ValueError(f"{path!r} is a .dac file of version {version!r}; this reads {DAC_VERSION!r}, as the "
                         "original does.")
    fields.update(padding=padding, input_db=input_db.reshape(-1).astype(np.float32), dac_version=version,
                  model=_checked_model(artifacts.get("model"), refuse))
    return fields


def _checked_model(model: Any, refuse) -> Optional[dict[str, Any]]:
    """Our record of the model that made a file (absent in the original's files), its known fields checked."""
    if model is None:
        return None
    if not isinstance(model, dict):
        raise refuse("model", model, "a dict")
    checked = dict(model)
    if "name" in model and not isinstance(model["name"], str):
        raise refuse("model.name", model["name"], "a string")
    for key in _MODEL_INTS:
        value = model.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise refuse(f"model.{key}", value, "a positive int")
    sha = model.get("weights_sha256")
    if sha is not None and not (isinstance(sha, str) and _SHA256.fullmatch(sha)):
        raise refuse("model.weights_sha256", sha, "64 hexadecimal digits")
    architecture = model.get("architecture")
    if architecture is not None and not (isinstance(architecture, dict) and all(
            isinstance(k, str) and (isinstance(v, int) or (isinstance(v, list) and all(isinstance(i, int) for i in v)))
            for k, v in architecture.items())):
        raise refuse("model.architecture", architecture, "a dict of ints and lists of ints")
    return checked
