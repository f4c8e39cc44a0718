"""Tokenizing a corpus, the top of the corpus package: every input of a folder of audio files, one audio file, a
list of paths or a Hugging Face dataset to Parquet shards of codes (shards.py), resumably, on the local engine
(local.py) or Ray's (ray_engine.py).

A shard is written under a hidden temporary name and renamed when complete. A rerun skips the shards that read back
complete (every row of its inputs, in order, from inputs that have not changed since: same size and modification
time) and redoes the others, so after any interruption (`kill -9` included) it ends with the rows of an
uninterrupted run.

A row's codes are `model.encode(that input).codes`: the same reading, mono mix-down and resampling. On the CPU
each input is encoded on its own, exactly as `encode` does; on an accelerator the windows of many inputs are packed
into full batches (`DacModel.encode_many`), each input's codes as if alone, to the agreement that `encode` has
there (float rounding may flip near-ties of the nearest-code search). Reading, decoding and resampling run in
reader processes, ahead of the model; every process this starts dies with its parent.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import pyarrow.parquet as pq
import torch

from ...configuration_dac import check_int
from ..loading import DTYPES, load_model, resolve_device
from .local import run_encoder_processes, tokenize_shards
from .shards import DEFAULT_SHARD_SIZE, check_done, make_manifest, plan_shards, prepare_output
from .sources import Corpus


@dataclass
class Summary:
    """What a folder holds after a run: inputs tokenized and failed in all its shards (earlier runs' included),
    shards done in this run and skipped as already done, and the shards redone with the reason."""

    tokenized: int = 0
    failed: list = field(default_factory=list)  # (id, error) of every failed input of the folder
    shards_done: int = 0
    shards_skipped: int = 0
    redone: list = field(default_factory=list)  # why each redone shard was not done
    ray: Any = None  # the Ray engine's `RayRun`: its actors and the nodes they ran on


def tokenize(
    corpus: Corpus, output: Union[str, Path], model_name: str, n_quantizers: Optional[int] = None,
    devices: Optional[list[str]] = None, workers: Optional[int] = None, readers: Optional[int] = None,
    shard_size: Optional[int] = None, dtype: str = "float32", engine: str = "local",
    ray_address: Optional[str] = None, progress: bool = True, command: Optional[list[str]] = None,
) -> Summary:
    """Tokenizes `corpus` into `output` (see the module's docstring), skipping the shards already done.

    Args:
        devices: Where to encode, one encoder process per device (e.g. ["cuda:0", "cuda:1"]); ["cpu"] or ["cuda"]
            by default.
        workers: Local engine: CPU encoder processes, the cores split between them (CPU only; 1 by default).
            Ray: encoder actors (by default as many as fit: one a GPU, or one a node).
        readers: Reader processes per encoder; 1 on the CPU, else the spare cores shared out (at most 8).
        engine: "local", or "ray" for Ray Data (`ray_address` of a cluster, or a local one).
    """
    from tqdm import tqdm

    if engine not in ("local", "ray"):
        raise ValueError(f"engine must be 'local' or 'ray', got {engine!r}.")
    shard_size = check_int("shard_size", DEFAULT_SHARD_SIZE if shard_size is None else shard_size)
    for name, value, least in (("workers", workers, 1), ("readers", readers, 0)):
        if value is not None:
            check_int(name, value, least)
    if engine == "ray":
        from .ray_engine import check_cluster

        if dtype not in DTYPES:  # the device each actor gets checks the rest
            raise ValueError(f"dtype {dtype!r} is not one of {list(DTYPES)}.")
        check_cluster(ray_address)  # Ray installed and its cluster reachable, before anything is written
    else:
        devices = [str(resolve_device(d, dtype)[0]) for d in (devices or [None])]  # each exists, with the dtype
    output = Path(output)
    items = corpus.items()  # bad input fails before the model loads
    model = load_model(model_name)
    if model.config.codebook_size > np.iinfo(np.int16).max + 1:
        raise ValueError(f"codebook_size {model.config.codebook_size} does not fit the int16 codes of the shards.")
    n_quantizers = model.check_n_quantizers(n_quantizers)
    manifest = make_manifest(model, model_name, corpus, items, n_quantizers, dtype, shard_size, command)
    model_name = manifest["model"]  # a local folder by its absolute path, the same for every process and node
    prepare_output(output, manifest)
    shards = plan_shards(items, shard_size)
    summary = Summary()
    pending = []
    for shard in shards:
        why = check_done(shard, shard.path(output), corpus) if shard.path(output).is_file() else "not done"
        if why is None:
            summary.shards_skipped += 1
            continue
        if why != "not done":
            summary.redone.append(why)
            shard.path(output).unlink()
        pending.append(shard)
    cpu = engine == "ray" or all(torch.device(d).type == "cpu" for d in devices)
    encoders = (workers or 1) if cpu else len(devices)
    if readers is None:
        readers = 1 if cpu else max(1, min(8, ((os.cpu_count() or 1) - encoders) // encoders))

    bar = tqdm(total=sum(len(s.items) for s in pending), unit="file", desc="tokenize", disable=not progress)
    seconds_done = [0.0]

    def report(files: int, seconds: float) -> None:
        seconds_done[0] += seconds
        bar.update(files)
        bar.set_postfix({"audio": f"{seconds_done[0] / 3600:.3f} h"}, refresh=False)

    with bar:
        if engine == "ray":
            from .ray_engine import tokenize_ray

            summary.ray = tokenize_ray(model_name, model.sampling_rate, corpus, pending, output, n_quantizers, dtype,
                                       workers, report, ray_address)
        elif encoders == 1 and pending:
            model.to(*resolve_device(devices[0], dtype))
            tokenize_shards(model, corpus, pending, output, n_quantizers, readers, report)
        elif pending:
            threads = max(1, (os.cpu_count() or 1) // encoders) if cpu else 1
            run_encoder_processes(model_name, devices if not cpu else ["cpu"] * encoders, dtype, threads, corpus,
                                   output, n_quantizers, readers, pending, report)
    summary.shards_done = sum(shard.path(output).is_file() for shard in pending)
    for shard in shards:  # every shard's rows, earlier runs' too: a rerun's summary and exit status count them
        if shard.path(output).is_file():
            table = pq.read_table(shard.path(output), columns=["id", "error"])
            errors = table.filter(table.column("error").is_valid())
            summary.failed += list(zip(errors.column("id").to_pylist(), errors.column("error").to_pylist()))
            summary.tokenized += table.num_rows - errors.num_rows
    return summary
