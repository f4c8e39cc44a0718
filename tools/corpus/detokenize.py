"""The way back: rows of codes (a tokenized folder's, or any Parquet file's) to audio files, every output planned
and every row checked before use."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Iterator, Optional, Union

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile
import torch

from ..command import first_line
from ..files import check_output_folder, write_atomically
from ..loading import check_identity, load_model, model_identity, resolve_device
from .shards import MANIFEST, read_manifest, row_codes


def audio_path(output: Path, id: str) -> Path:
    """Where the audio of row `id` goes: its path, relative to `output`, with the suffix .wav (a dataset row's index:
    17.wav; an absolute path is taken as relative to `output`).

    Raises:
        ValueError: An id that names no file inside `output` (empty, "..", a NUL character).
    """
    parts = [part for part in PurePosixPath(id).parts if part != "/"]
    if not parts or ".." in parts or "\0" in id or parts[-1] in (".",):
        raise ValueError(f"its id {id!r} names no file inside the output folder")
    return output / Path(*parts).with_suffix(".wav")


def codes_type_error(file: Path, schema: pa.Schema) -> Optional[str]:
    """Why a Parquet file's `codes` column cannot hold codes, or None."""
    if "codes" not in schema.names:
        return f"{file} has no `codes` column; its columns are {schema.names}."
    kind = schema.field("codes").type
    if not (pa.types.is_list(kind) and pa.types.is_list(kind.value_type) and pa.types.is_integer(
            kind.value_type.value_type)):
        return f"{file}: its `codes` column is {kind}, not lists of lists of integers (n_codebooks, frames)."
    if "n_samples" in schema.names and not pa.types.is_integer(schema.field("n_samples").type):
        return f"{file}: its `n_samples` column is {schema.field('n_samples').type}, not integers."
    return None


def parquet_files(source: Path) -> list[Path]:
    """The Parquet files of a folder of shards (or any Parquet files), or the one file given, each checked to hold
    codes."""
    files = [source] if source.is_file() else sorted(source.glob("part-*.parquet")) or sorted(source.glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"No Parquet files at {source}.")
    for file in files:
        try:
            problem = codes_type_error(file, pq.read_schema(file))
        except (OSError, pa.ArrowException) as error:
            raise ValueError(f"{file} is not a readable Parquet file ({first_line(error)}).") from None
        if problem:
            raise ValueError(problem)
    return files


def read_rows(files: list[Path], columns: tuple[str, ...], ids: Optional[set[str]] = None
              ) -> Iterator[tuple[str, dict[str, Any]]]:
    """(id, {column: value}) of every row of `files` that has `ids` (all where None), for the `columns` they have.
    Files without an `id` column name their rows <file stem>-<row>."""
    for file in files:
        parquet = pq.ParquetFile(file)
        names = parquet.schema_arrow.names
        row = 0
        for batch in parquet.iter_batches(batch_size=64, columns=[c for c in ("id", *columns) if c in names]):
            cells = batch.to_pydict()
            for i in range(batch.num_rows):
                id = str(cells["id"][i]) if "id" in cells else f"{file.stem}-{row:06d}"
                row += 1
                if ids is None or id in ids:
                    yield id, {k: cells[k][i] if k in cells else None for k in columns}


def plan_audio_paths(files: list[Path], output: Path, ids: Optional[set[str]]) -> dict[str, Union[Path, str]]:
    """The output of each row to be written (rows with an error have none), or why its id cannot be one; refuses
    before any work when two rows would write one file."""
    planned: dict[str, Union[Path, str]] = {}
    first: dict[str, str] = {}
    for id, cells in read_rows(files, ("error",), ids):
        if cells["error"] is not None:
            continue
        try:
            path = audio_path(output, id)
        except ValueError as error:
            planned[id] = str(error)
            continue
        key = os.path.normcase(os.fspath(path)).casefold()
        if key in first:
            raise ValueError(f"the rows {first[key]!r} and {id!r} would both write {path}; detokenize them to "
                             "separate folders (--ids) or rename one.")
        first[key], planned[id] = id, path
    return planned


def checked_codes(cell: Any, n_samples: Any, config, hop_length: int) -> tuple[np.ndarray, Optional[int]]:
    """A row's codes (n, frames) and `n_samples`, checked against the model: codebooks and values it has, and a
    length that its frames make (frames = ceil(n_samples / hop))."""
    codes = row_codes(cell)
    if codes.shape[-1] == 0:
        raise ValueError("it holds no frames")
    if codes.shape[0] > config.n_codebooks or not (0 <= int(codes.min()) and int(codes.max()) < config.codebook_size):
        raise ValueError(f"its codes (shape {tuple(codes.shape)}, values {int(codes.min())} to {int(codes.max())}) "
                         f"do not fit this model ({config.n_codebooks} codebooks of {config.codebook_size}); give the "
                         "model that made them with --model")
    frames = codes.shape[-1]
    if n_samples is not None and not (isinstance(n_samples, int) and -(-n_samples // hop_length) == frames):
        raise ValueError(f"its n_samples {n_samples!r} is not a length its {frames} frames make (hop {hop_length}: "
                         f"{(frames - 1) * hop_length + 1} to {frames * hop_length})")
    return codes, n_samples


@dataclass
class DetokenizeSummary:
    written: int = 0
    skipped: int = 0  # outputs that exist
    without_codes: int = 0  # rows of inputs that could not be tokenized
    failed: list = field(default_factory=list)  # (id, why)


def detokenize(source: Union[str, Path], output: Union[str, Path], model_name: Optional[str] = None,
               ids: Optional[Iterable[str]] = None, device: Optional[str] = None, dtype: str = "float32",
               overwrite: bool = False, progress: bool = True) -> DetokenizeSummary:
    """Decodes rows of codes to mono WAV files at the model's rate, one per row, named by `audio_path`, with exactly
    the row's `n_samples` where it has one (the 16 and 24 kHz decoders' last 8 samples are zeros).

    On the CPU each row is decoded as `decode(s=codes)` does; on an accelerator many rows' windows are packed into
    full batches. The model is `model_name`, or the one the folder's manifest names; where a manifest records the
    model that made the codes, another model is refused.
    """
    from tqdm import tqdm

    source, output = Path(source), Path(output)
    check_output_folder(output)
    torch_device, torch_dtype = resolve_device(device, dtype)
    files = parquet_files(source)
    manifest_path = source / MANIFEST if source.is_dir() else source.parent / MANIFEST
    manifest = read_manifest(manifest_path) if manifest_path.is_file() else None
    if model_name is None and manifest is None:
        raise ValueError(f"No {MANIFEST} beside {source} names the model; give it with --model.")
    wanted = set(ids) if ids is not None else None
    planned = plan_audio_paths(files, output, wanted)  # before the model loads: a clash is refused at once
    model_name = model_name or manifest["model"]
    model = load_model(model_name)
    if manifest is not None:
        recorded = {"name": manifest["model"], "architecture": manifest.get("architecture"),
                    "weights_sha256": manifest["weights_sha256"]}
        check_identity(recorded, model_identity(model, model_name), str(manifest_path))
    model = model.to(torch_device, torch_dtype)
    config, summary = model.config, DetokenizeSummary()
    pack_frames = model.pack_frames("decode")  # rows gathered for one `decode_many` (0: one a call)
    waiting: list[tuple[str, Path, torch.Tensor, Optional[int]]] = []
    found: set[str] = set()  # ids of the rows read

    def write(id: str, path: Path, audio: torch.Tensor, n_samples: Optional[int]) -> None:
        samples = audio[0, 0, :n_samples].float().cpu().numpy()
        if n_samples is not None and samples.shape[-1] < n_samples:  # the 16 and 24 kHz decoders' last 8 samples
            samples = np.pad(samples, (0, n_samples - samples.shape[-1]))
        try:
            write_atomically(path, lambda target: soundfile.write(target, samples, config.sampling_rate,
                                                                   format="WAV", subtype="FLOAT"))
            summary.written += 1
        except OSError as error:  # a name too long for the file system, no permission: this row's failure
            summary.failed.append((id, first_line(error)))

    def flush() -> None:
        audio = model.decode_many([codes for *_, codes, _ in waiting])
        for (id, path, _, n_samples), decoded in zip(waiting, audio):
            write(id, path, decoded, n_samples)
        bar.update(len(waiting))
        waiting.clear()

    with tqdm(unit="row", desc="detokenize", disable=not progress) as bar:
        for id, cells in read_rows(files, ("codes", "n_samples"), wanted):
            found.add(id)
            if cells["codes"] is None:
                summary.without_codes += 1
                bar.update(1)
                continue
            try:
                path = planned.get(id)
                if not isinstance(path, Path):
                    raise ValueError(path or "its row records an error beside its codes")
                if path.exists() and not overwrite:
                    summary.skipped += 1
                    bar.update(1)
                    continue
                codes, n_samples = checked_codes(cells["codes"], cells["n_samples"], config, model.hop_length)
                waiting.append((id, path, torch.from_numpy(codes)[None].to(model.device), n_samples))
                if sum(c.shape[-1] for *_, c, _ in waiting) >= pack_frames:
                    flush()
            except (ValueError, OSError) as problem:  # this row's codes, or a name the file system refuses
                summary.failed.append((id, first_line(problem)))
                bar.update(1)
        flush()
    if wanted is not None:
        summary.failed += [(id, "no row has this id") for id in sorted(wanted - found)]
    return summary
