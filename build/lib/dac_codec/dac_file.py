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
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import numpy as np
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
_METADATA = {"input_db": np.ndarray, "original_length": int, "sample_rate": int, "chunk_length": int,
             "channels": int, "padding": bool, "dac_version": str}


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
            np.save(file, artifacts)  # writes to the open file: np.save would add ".npy" to a name
        return path

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "DacFile":
        """Reads a `.dac` file without running code.

        Raises:
            FileNotFoundError: No file at `path`.
            ValueError: Not a `.dac` file, a pickle that names anything but the NumPy objects such files hold, or
                fields of the wrong type.
        """
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No .dac file at {os.fspath(path)!r}.")
        with open(path, "rb") as file:
            try:
                version = np.lib.format.read_magic(file)
                read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                               (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                if read_header is None:
                    raise ValueError(f"NumPy format version {version}")
                header = read_header(file)  # (shape, fortran_order, dtype), parsed without eval
            except ValueError as error:
                raise ValueError(f"{os.fspath(path)!r} is not a .dac file (no NumPy header): {error}") from error
            if header[2] != np.dtype(object) or header[0] != ():
                raise ValueError(f"{os.fspath(path)!r} is not a .dac file: it holds an array of {header[2]}.")
            try:
                artifacts = _NumpyOnlyUnpickler(io.BytesIO(file.read())).load()
            except Exception as error:  # a refused name, or a damaged pickle
                raise ValueError(f"Refused to open {os.fspath(path)!r}: {error}.") from error
        return cls._from_artifacts(artifacts, os.fspath(path))

    @classmethod
    def _from_artifacts(cls, artifacts: Any, path: str) -> "DacFile":
        if isinstance(artifacts, np.ndarray) and artifacts.dtype == object and artifacts.shape == ():
            artifacts = artifacts[()]
        if not isinstance(artifacts, dict) or not isinstance(artifacts.get("metadata"), dict):
            raise ValueError(f"{path!r} is not a .dac file: expected a dict with 'codes' and 'metadata'.")
        codes, metadata = artifacts.get("codes"), artifacts["metadata"]
        if not isinstance(codes, np.ndarray) or codes.ndim != 3 or not np.issubdtype(codes.dtype, np.integer):
            raise ValueError(f"{path!r}: 'codes' must be an integer array (items * channels, codebooks, frames).")
        for key, kind in _METADATA.items():
            value = metadata.get(key)
            if isinstance(value, np.generic):
                value = value.item()
            ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
            if not ok:
                raise ValueError(f"{path!r}: metadata {key!r} must be a {kind.__name__}, got {value!r}.")
            metadata = {**metadata, key: value}
        if metadata["dac_version"] != DAC_VERSION:
            raise ValueError(f"{path!r} is a .dac file of version {metadata['dac_version']!r}; this reads "
                             f"{DAC_VERSION!r}, as the original does.")
        model = artifacts.get("model")
        return cls(codes=torch.from_numpy(codes.astype(np.int64)), model=model if isinstance(model, dict) else None,
                   input_db=torch.from_numpy(np.atleast_1d(metadata["input_db"]).astype(np.float32)),
                   **{k: metadata[k] for k in _METADATA if k != "input_db"})
