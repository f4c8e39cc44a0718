"""The shard format and the manifest: what a tokenized folder holds, written whole or not at all, and read back
with every field checked.

`DIR/manifest.json` records the model (name, architecture, config and weights hashes), the settings and the inputs;
shard k, `DIR/part-NNNNN.parquet`, holds inputs [k * shard_size, (k + 1) * shard_size) of the input list, one row
each (`SCHEMA`: plain Arrow types that pandas, polars and `datasets` read without this package).
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..command import first_line
from ..files import check_output_folder, write_atomically
from ..loading import model_identity
from .sources import Corpus, Input, file_stamp

FORMAT = "dac-codec tokens 2"
READABLE_FORMATS = ("dac-codec tokens 1", FORMAT)  # 1: rows without the inputs' sizes and times
MANIFEST = "manifest.json"
SCHEMA = pa.schema([
    ("id", pa.string()),
    ("codes", pa.list_(pa.list_(pa.int16()))),  # (n_codebooks, n_frames); null where `error` says why
    ("n_frames", pa.int32()),
    ("n_samples", pa.int64()),  # at the model's rate
    ("source_sample_rate", pa.int32()),
    ("duration_s", pa.float64()),  # of the source
    ("source_size", pa.int64()),  # bytes of the input file when it was read (null for dataset rows)
    ("source_mtime_ns", pa.int64()),  # its modification time, ns since the epoch
    ("error", pa.string()),
])
# What a rerun must share with the run that made a folder; the rest of the manifest is informative.
IDENTITY = ("format", "config_sha256", "weights_sha256", "n_codebooks", "dtype", "shard_size", "inputs")
DEFAULT_SHARD_SIZE = 1000


@dataclass(frozen=True)
class Shard:
    index: int
    items: list  # (id, reference) of its inputs, in order

    def path(self, output: Path) -> Path:
        return output / f"part-{self.index:05d}.parquet"


def plan_shards(items: list, shard_size: int) -> list[Shard]:
    return [Shard(k, items[start : start + shard_size]) for k, start in enumerate(range(0, len(items), shard_size))]


def make_manifest(model, model_name: str, corpus: Corpus, items: list, n_quantizers: int, dtype: str,
                  shard_size: int, command: Optional[list[str]] = None) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    try:
        package_version = version("dac-codec")
    except PackageNotFoundError:
        package_version = None
    config, identity = model.config, model_identity(model, model_name)
    ids = hashlib.sha256("\n".join(i for i, _ in items).encode()).hexdigest()
    return {
        "format": FORMAT, "model": identity["name"], "architecture": identity["architecture"],
        "config_sha256": hashlib.sha256(json.dumps(identity["architecture"], sort_keys=True).encode()).hexdigest(),
        "weights_sha256": identity["weights_sha256"], "package_version": package_version,
        "n_codebooks": n_quantizers, "codebook_size": config.codebook_size, "sample_rate": config.sampling_rate,
        "hop_length": config.hop_length, "frame_rate": config.frame_rate, "dtype": dtype, "shard_size": shard_size,
        "n_shards": -(-len(items) // shard_size),
        "inputs": {"kind": corpus.kind, "location": corpus.location, "audio_column": corpus.audio_column,
                   "id_column": corpus.id_column, "split": corpus.split, "count": len(items), "ids_sha256": ids},
        "command": command if command is not None else sys.argv,
    }


_MANIFEST_FIELDS = {"format": str, "model": str, "weights_sha256": str, "config_sha256": str, "n_codebooks": int,
                    "sample_rate": int, "hop_length": int, "shard_size": int, "inputs": dict}


def read_manifest(path: Path) -> dict:
    """A folder's manifest, every field that is read checked for type (one line naming the file and the field)."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({first_line(error)}).") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"{path} holds a JSON {type(manifest).__name__}, not a manifest (an object).")
    for key, kind in _MANIFEST_FIELDS.items():
        value = manifest.get(key)
        if not isinstance(value, kind) or isinstance(value, bool) or (kind is int and value < 1):
            wanted = "a positive int" if kind is int else f"a {kind.__name__}"
            raise ValueError(f"{path}: field {key!r} must be {wanted}, got {value!r:.80}.")
    for key in ("weights_sha256", "config_sha256"):
        if not re.fullmatch(r"[0-9a-f]{64}", manifest[key]):
            raise ValueError(f"{path}: field {key!r} must be 64 hexadecimal digits, got {manifest[key]!r:.80}.")
    if manifest["format"] not in READABLE_FORMATS:
        raise ValueError(f"{path} is of the format {manifest['format']!r}; this package reads {READABLE_FORMATS}.")
    return manifest


def prepare_output(output: Path, manifest: dict) -> None:
    """Writes the manifest into a new or empty folder, or checks that a folder's own manifest matches (resuming);
    removes what an interrupted run left half-written."""
    check_output_folder(output)
    output.mkdir(parents=True, exist_ok=True)
    path = output / MANIFEST
    if path.is_file():
        try:
            made = read_manifest(path)
        except ValueError as error:
            raise ValueError(f"{error} Give another --output.") from None
        different = [key for key in IDENTITY if made.get(key) != manifest[key]]
        if different:
            details = "; ".join(f"{key}: {made.get(key)!r} there, {manifest[key]!r} now" for key in different)
            raise ValueError(f"{output} holds tokens made with another model, other settings or other inputs "
                             f"({details}). Give another --output, or the same model, settings and inputs to resume.")
    elif any(output.glob("part-*.parquet")):
        raise ValueError(f"{output} holds shards but no {MANIFEST}; give another --output.")
    else:
        write_atomically(path, lambda target: Path(target).write_text(json.dumps(manifest, indent=2)))
    for partial in output.glob("*.partial"):
        partial.unlink()


def check_done(shard: Shard, path: Path, corpus: Corpus) -> Optional[str]:
    """Why the shard at `path` must be redone (it does not read back whole, or an input changed since it was
    written), or None when it is done."""
    try:
        parquet = pq.ParquetFile(path)
        if parquet.schema_arrow.names != SCHEMA.names:
            return f"{path.name} has the columns {parquet.schema_arrow.names}, not a shard's"
        table = parquet.read(columns=["id", "source_size", "source_mtime_ns"])
    except (OSError, pa.ArrowException) as error:  # truncated or damaged
        return f"{path.name} does not read back ({first_line(error)})"
    if table.column("id").to_pylist() != [id for id, _ in shard.items]:
        return f"{path.name} holds {table.num_rows} rows, not those of its {len(shard.items)} inputs"
    if corpus.kind == "dataset":
        return None
    stamps = zip(table.column("source_size").to_pylist(), table.column("source_mtime_ns").to_pylist())
    for (id, reference), stamp in zip(shard.items, stamps):
        if file_stamp(reference) != stamp:
            return f"{id} changed since {path.name} was written"
    return None


# ----------------------------------------------------------------------------------------------------------------
# Rows
@dataclass
class Row:
    id: str
    codes: Optional[np.ndarray] = None  # (n_codebooks, n_frames) int16
    n_samples: Optional[int] = None
    source_sample_rate: Optional[int] = None
    duration_s: Optional[float] = None
    source_size: Optional[int] = None
    source_mtime_ns: Optional[int] = None
    error: Optional[str] = None

    def fill(self, read: Input) -> None:
        """The row's description of its input (and why it could not be read)."""
        self.source_size, self.source_mtime_ns, self.error = read.size, read.mtime_ns, read.error
        if read.source_rate:
            self.source_sample_rate, self.duration_s = read.source_rate, read.source_samples / read.source_rate


def codes_array(codes: list[Optional[np.ndarray]]) -> pa.Array:
    """list<list<int16>> of (n, frames) arrays, None for null, built from offsets without Python lists."""
    present = [c for c in codes if c is not None]
    values = pa.array(np.concatenate([c.reshape(-1) for c in present]) if present else np.zeros(0, np.int16))
    row_lengths = [np.full(c.shape[0], c.shape[1]) for c in present]
    inner_offsets = np.concatenate([[0], np.cumsum(np.concatenate(row_lengths) if present else [])])
    inner = pa.ListArray.from_arrays(pa.array(inner_offsets.astype(np.int32)), values)
    outer_offsets = np.concatenate([[0], np.cumsum([0 if c is None else c.shape[0] for c in codes])])
    mask = pa.array([c is None for c in codes])
    return pa.ListArray.from_arrays(pa.array(outer_offsets.astype(np.int32)), inner, mask=mask).cast(
        SCHEMA.field("codes").type)


def rows_table(rows: list[Row]) -> pa.Table:
    return pa.Table.from_arrays([
        pa.array([r.id for r in rows], pa.string()),
        codes_array([r.codes for r in rows]),
        pa.array([None if r.codes is None else r.codes.shape[1] for r in rows], pa.int32()),
        pa.array([r.n_samples for r in rows], pa.int64()),
        pa.array([r.source_sample_rate for r in rows], pa.int32()),
        pa.array([r.duration_s for r in rows], pa.float64()),
        pa.array([r.source_size for r in rows], pa.int64()),
        pa.array([r.source_mtime_ns for r in rows], pa.int64()),
        pa.array([r.error for r in rows], pa.string()),
    ], schema=SCHEMA)


def write_shard(path: Path, table: pa.Table) -> None:
    write_atomically(path, lambda target: pq.write_table(table, target))


def row_codes(codes: Optional[list]) -> Optional[np.ndarray]:
    """A `codes` cell (list of codebook rows) as an int64 array (n_codebooks, n_frames)."""
    if codes is None:
        return None
    lengths = {len(row) if row is not None else -1 for row in codes}
    if not codes or len(lengths) != 1 or -1 in lengths:
        raise ValueError(f"its codebooks have {sorted(lengths)} frames; every codebook needs the same number")
    return np.asarray(codes, dtype=np.int64).reshape(len(codes), lengths.pop())
