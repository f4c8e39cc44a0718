"""The Ray engine of `tokenize`: the same shards and rows as the local engine, with the inputs read by Ray Data
tasks and encoded on an actor pool (one actor a GPU, or CPU actors with their threads set), across a cluster's
machines. The driver collects each shard's rows and writes the shard when complete, as the local engine does, so
a rerun resumes the same way. Every node needs this package installed and the inputs and model at the same paths
(or a Hub id). An optional extra: pip install "dac-codec[ray]".

Ray places an actor on one node, so the actors are sized from the nodes (`plan_actors`), never from the cluster's
total: a request that no node can hold would wait forever.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from ..loading import load_model, resolve_device
from .shards import SCHEMA, Row, Shard, rows_table, write_shard
from .sources import Corpus, InputReader
from .tokenizer import Report, Tokenizer

CONNECT_TIMEOUT_S = 5.0  # an address that does not answer within this is reported, not retried for minutes
ACTORS_START_TIMEOUT_S = 300  # the actors' models loaded, or Ray Data gives up (they were sized to fit the nodes)
RESERVED_CPUS = 1  # per node, for the read tasks: actors that hold every CPU leave reading none, and the job waits
LOCAL = (None, "local")  # addresses at which this process starts a Ray instance of its own
# Ray binds a local instance's servers, which run whatever code they are sent, to the machine's network address
# unless this is "0" when ray is imported: then the node's address is 127.0.0.1 and they listen on loopback alone.
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def check_cluster(address: Optional[str]) -> None:
    """Ray is installed and the cluster at `address` (host:port, or ray://host:port; "auto": the one this machine
    runs) answers; for None or "local", that the instance `tokenize_ray` will start listens on loopback alone.

    Raises:
        ImportError: Ray is not installed (with the pip command).
        ValueError: Nothing answers at `address` within CONNECT_TIMEOUT_S, or a local instance would listen on the
            network (ray was imported, without LOOPBACK_ENV, before this was called).
    """
    if address in LOCAL and "ray" not in sys.modules:
        os.environ.setdefault(LOOPBACK_ENV, "0")  # the instance `tokenize_ray` starts listens on loopback alone
    try:
        import ray
        from ray.data import ActorPoolStrategy  # noqa: F401
    except ImportError:
        raise ImportError('The Ray engine needs Ray Data: pip install "dac-codec[ray]".') from None
    if address in LOCAL:
        node = ray.util.get_node_ip_address()  # the address a local instance would listen at
        if not ray.is_initialized() and node != "127.0.0.1":
            raise ValueError(f"A local Ray instance would listen at {node}, open to the network: set {LOOPBACK_ENV}=0 "
                             "before ray is imported, or start a cluster and give --ray-address.")
        return
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--ray-address {address!r} is not HOST:PORT (e.g. 10.0.0.1:6379).")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as error:
        raise ValueError(f"Nothing answers at the Ray address {address!r} ({error}); start the cluster "
                         "(`ray start --head`) or give its head's HOST:PORT.") from None


@dataclass(frozen=True)
class ActorPlan:
    """How many encoder actors, and what each one asks for."""

    actors: int
    threads: int  # torch threads of each
    resources: dict  # num_cpus / num_gpus of each


@dataclass(frozen=True)
class RayRun:
    plan: ActorPlan
    nodes: frozenset  # ids of the nodes whose actors encoded


def plan_actors(nodes: list[dict], workers: Optional[int]) -> ActorPlan:
    """Actors that fit the cluster's nodes (`ray.nodes()` resources of the alive ones), each on one node.

    GPUs: an actor a GPU (1 GPU, 1 CPU). CPUs only: by default one actor a node, with the CPUs of the smallest node
    but RESERVED_CPUS; `workers` actors as wide as that many fit. Either way `workers` caps the count.

    Raises:
        ValueError: `workers` actors cannot fit the nodes (the message says how many can).
    """
    cpus = [int(node.get("CPU", 0)) for node in nodes]
    gpus = [int(node.get("GPU", 0)) for node in nodes]
    shape = ", ".join(f"{c} CPUs" + (f" + {g} GPUs" if g else "") for c, g in zip(cpus, gpus)) or "no nodes"
    if sum(gpus):
        fit = sum(min(g, c) for c, g in zip(cpus, gpus))
        if fit == 0 or (workers or 0) > fit:
            raise ValueError(f"{workers or 1} GPU actors (1 GPU and 1 CPU each) do not fit the cluster's nodes "
                             f"({shape}): at most {fit}.")
        return ActorPlan(workers or fit, 1, {"num_gpus": 1, "num_cpus": 1})
    spare = [c - RESERVED_CPUS for c in cpus]
    if workers is None:
        usable = [s for s in spare if s >= 1]
        if not usable:
            raise ValueError(f"No node of the cluster ({shape}) has a CPU for an encoder beside the one left for "
                             "reading.")
        threads = min(usable)
        return ActorPlan(sum(s // threads for s in usable), threads, {"num_cpus": threads})
    for threads in range(max(spare + [0]), 0, -1):  # the widest actors of which `workers` fit
        if sum(max(0, s) // threads for s in spare) >= workers:
            return ActorPlan(workers, threads, {"num_cpus": threads})
    most = sum(max(0, s) for s in spare)
    raise ValueError(f"{workers} CPU actors do not fit the cluster's nodes ({shape}; {RESERVED_CPUS} CPU of each left "
                     f"for reading): at most {most}; give fewer --workers.")


def _read(row: dict, corpus: Corpus, sample_rate: int) -> dict:
    """A Ray Data task: one input read as `encode` reads it, or the error that says why not."""
    read = InputReader(corpus, sample_rate).read(row["reference"])
    return {"shard": row["shard"], "position": row["position"], "id": row["id"],
            "audio": np.zeros(0, np.float32) if read.samples is None else read.samples,
            "source_sample_rate": read.source_rate or 0, "source_samples": read.source_samples or 0,
            "source_size": -1 if read.size is None else read.size,
            "source_mtime_ns": -1 if read.mtime_ns is None else read.mtime_ns, "error": read.error or ""}


class _Encoder:
    """A Ray actor holding the model on its device (a GPU it was given, or the CPU with `threads` threads)."""

    def __init__(self, model_name: str, dtype: str, n_quantizers: int, threads: int):
        import ray

        torch.set_num_threads(threads)
        self.node = ray.get_runtime_context().get_node_id()
        device, torch_dtype = resolve_device(None, dtype)
        self.tokenizer = Tokenizer(load_model(model_name).to(device, torch_dtype), n_quantizers)

    def __call__(self, batch: dict) -> pa.Table:
        rows, n = [], len(batch["id"])
        read = [i for i in range(n) if not batch["error"][i]]
        codes = dict(zip(read, self.tokenizer([np.array(batch["audio"][i], np.float32) for i in read])))  # writable
        for i in range(n):
            row = Row(str(batch["id"][i]), error=batch["error"][i] or None)
            row.source_size, row.source_mtime_ns = (None if batch[k][i] < 0 else int(batch[k][i])
                                                    for k in ("source_size", "source_mtime_ns"))
            if i in codes:
                row.source_sample_rate = int(batch["source_sample_rate"][i])
                row.duration_s = int(batch["source_samples"][i]) / row.source_sample_rate
                if isinstance(codes[i], str):
                    row.error = codes[i]
                else:
                    row.codes, row.n_samples = codes[i], len(batch["audio"][i])
            rows.append(row)
        table = rows_table(rows)
        for name, values, kind in (("shard", batch["shard"], pa.int64()), ("position", batch["position"], pa.int64()),
                                   ("node", [self.node] * n, pa.string())):
            table = table.append_column(name, pa.array(values, kind))
        return table


def tokenize_ray(model_name: str, sample_rate: int, corpus: Corpus, pending: list[Shard], output: Path,
                 n_quantizers: int, dtype: str, workers: Optional[int], report: Report,
                 address: Optional[str] = None) -> Optional[RayRun]:
    """Tokenizes the `pending` shards on the Ray cluster at `address` (already connected to, or a local one if
    None) with actors planned by `plan_actors`; returns the plan and the nodes used (None when nothing is
    pending)."""
    import ray
    from ray.data import ActorPoolStrategy

    if not pending:
        return None
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # the command shows its own progress bar
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.wait_for_min_actors_s = ACTORS_START_TIMEOUT_S
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    try:
        plan = plan_actors([node["Resources"] for node in ray.nodes() if node["Alive"]], workers)
        items = [{"shard": s.index, "position": j, "id": id, "reference": reference}
                 for s in pending for j, (id, reference) in enumerate(s.items)]
        rows = ray.data.from_items(items, override_num_blocks=min(len(items), 200))
        # Half a CPU a read task: other resources than the actors' keep Ray from fusing reading into the actors,
        # so that reading runs beside encoding.
        rows = rows.map(_read, fn_kwargs={"corpus": corpus, "sample_rate": sample_rate}, num_cpus=0.5)
        tables = rows.map_batches(
            _Encoder, fn_constructor_kwargs={"model_name": model_name, "dtype": dtype, "n_quantizers": n_quantizers,
                                             "threads": plan.threads},
            batch_size=16 if "num_gpus" in plan.resources else 1, batch_format="numpy",
            compute=ActorPoolStrategy(size=plan.actors), **plan.resources)
        shards = {s.index: s for s in pending}
        parts: dict[int, list[pa.Table]] = {index: [] for index in shards}
        nodes: set[str] = set()
        for batch in tables.iter_batches(batch_format="pyarrow", batch_size=None):
            nodes.update(pc.unique(batch.column("node")).to_pylist())
            seconds = pc.sum(batch.column("n_samples")).as_py() or 0
            report(batch.num_rows, seconds / sample_rate)
            for index in pc.unique(batch.column("shard")).to_pylist():
                parts[index].append(batch.filter(pc.equal(batch.column("shard"), index)))
                if sum(part.num_rows for part in parts[index]) == len(shards[index].items):
                    table = pa.concat_tables(parts.pop(index)).sort_by("position")
                    write_shard(shards[index].path(output), table.select(SCHEMA.names).cast(SCHEMA))
        if parts:
            raise RuntimeError(f"Ray returned no rows for shards {sorted(parts)[:5]}; rerun to resume.")
        return RayRun(plan, frozenset(nodes))
    finally:
        if started:
            ray.shutdown()
