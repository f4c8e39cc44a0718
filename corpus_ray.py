"""The Ray engine of `tokenize`: the same shards and rows as the local engine, with the inputs read by Ray Data
tasks and encoded on an actor pool (one actor a GPU, or CPU actors with their threads set), across a cluster's
machines. The driver collects each shard's rows and writes the shard when complete, as the local engine does, so
a rerun resumes the same way. Every node needs this package installed and the inputs and model at the same paths
(or a Hub id). An optional extra: pip install "dac-codec[ray]".
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from .corpus import SCHEMA, Corpus, Report, Row, Shard, Tokenizer, _read_or_error, rows_table, write_shard
from .loading import DTYPES, load_model


def _read(row: dict, corpus: Corpus, sample_rate: int) -> dict:
    """A Ray Data task: one input read as `encode` reads it, or the error that says why not."""
    result = _read_or_error(corpus, row["reference"], sample_rate)
    if isinstance(result, str):
        audio, source_rate, source_samples, error = np.zeros(0, np.float32), 0, 0, result
    else:
        (audio, source_rate, source_samples), error = result, ""
    return {"shard": row["shard"], "position": row["position"], "id": row["id"], "audio": audio,
            "source_sample_rate": source_rate, "source_samples": source_samples, "error": error}


class _Encoder:
    """A Ray actor holding the model on its device (a GPU it was given, or the CPU with `threads` threads)."""

    def __init__(self, model_name: str, dtype: str, n_quantizers: int, threads: int):
        torch.set_num_threads(threads)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.tokenizer = Tokenizer(load_model(model_name).to(device, DTYPES[dtype]), n_quantizers)

    def __call__(self, batch: dict) -> pa.Table:
        rows, n = [], len(batch["id"])
        read = [i for i in range(n) if not batch["error"][i]]
        codes = dict(zip(read, self.tokenizer([np.array(batch["audio"][i], np.float32) for i in read])))  # writable
        for i in range(n):
            row = Row(str(batch["id"][i]), error=batch["error"][i] or None)
            if i in codes:
                row.source_sample_rate = int(batch["source_sample_rate"][i])
                row.duration_s = int(batch["source_samples"][i]) / row.source_sample_rate
                if isinstance(codes[i], str):
                    row.error = codes[i]
                else:
                    row.codes, row.n_samples = codes[i], len(batch["audio"][i])
            rows.append(row)
        table = rows_table(rows)
        return table.append_column("shard", pa.array(batch["shard"], pa.int64())).append_column(
            "position", pa.array(batch["position"], pa.int64()))


def tokenize_ray(model_name: str, sample_rate: int, corpus: Corpus, pending: list[Shard], output: Path,
                 n_quantizers: int, dtype: str, workers: int, address: Optional[str], report: Report) -> None:
    """Tokenizes the `pending` shards on a Ray cluster (`address`; a local one if None), `workers` actors."""
    try:
        import ray
        from ray.data import ActorPoolStrategy
    except ImportError:
        raise ImportError('The Ray engine needs Ray Data: pip install "dac-codec[ray]".') from None
    if not pending:
        return
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # the command shows its own progress bar
    ray.data.DataContext.get_current().enable_progress_bars = False
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    try:
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
        if gpus:
            workers = gpus if workers == 1 else min(workers, gpus)  # by default an actor a GPU
            threads, actor = 1, {"num_gpus": 1, "num_cpus": 1}
        else:
            # Actors that hold every CPU leave none for the read and write tasks, and the job waits forever.
            threads = (cpus - 1) // workers
            if threads < 1:
                raise ValueError(f"The cluster has {cpus} CPUs: {workers} CPU actors need at least {workers + 1}, "
                                 "one left for reading; give fewer --workers.")
            actor = {"num_cpus": threads}
        items = [{"shard": s.index, "position": j, "id": id, "reference": reference}
                 for s in pending for j, (id, reference) in enumerate(s.items)]
        rows = ray.data.from_items(items, override_num_blocks=min(len(items), 200))
        # Half a CPU a read task: other resources than the actors' keep Ray from fusing reading into the actors,
        # so that reading runs beside encoding.
        rows = rows.map(_read, fn_kwargs={"corpus": corpus, "sample_rate": sample_rate}, num_cpus=0.5)
        tables = rows.map_batches(
            _Encoder, fn_constructor_kwargs={"model_name": model_name, "dtype": dtype, "n_quantizers": n_quantizers,
                                             "threads": threads},
            batch_size=16 if gpus else 1, batch_format="numpy", compute=ActorPoolStrategy(size=workers), **actor)
        shards = {s.index: s for s in pending}
        parts: dict[int, list[pa.Table]] = {index: [] for index in shards}
        for batch in tables.iter_batches(batch_format="pyarrow", batch_size=None):
            seconds = pc.sum(batch.column("n_samples")).as_py() or 0
            report(batch.num_rows, seconds / sample_rate)
            for index in pc.unique(batch.column("shard")).to_pylist():
                parts[index].append(batch.filter(pc.equal(batch.column("shard"), index)))
                if sum(part.num_rows for part in parts[index]) == len(shards[index].items):
                    table = pa.concat_tables(parts.pop(index)).sort_by("position")
                    write_shard(shards[index].path(output), table.select(SCHEMA.names).cast(SCHEMA))
        if parts:
            raise RuntimeError(f"Ray returned no rows for shards {sorted(parts)[:5]}; rerun to resume.")
    finally:
        if started:
            ray.shutdown()
