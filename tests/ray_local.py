"""Tokenizes with the Ray engine and no address, so that `tokenize` starts (and stops) a Ray instance of its own,
and checks that none of its servers listens beyond loopback while it runs; the shards' rows are printed as JSON:

    python ray_local.py INPUT MODEL OUTPUT

Also the helpers that list this network namespace's listening sockets, for ray_two_nodes.py. Nothing here imports
ray at module level: whether a local instance listens on loopback alone is decided when ray is imported.
"""

import json
import sys
from pathlib import Path


def listening() -> set[str]:
    """Local addresses (hex, as the kernel writes them) of the TCP sockets listening in this network namespace."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                found.add(fields[1])
    return found


def loopback(address: str) -> bool:
    ip = address.split(":")[0]
    if len(ip) == 8:  # IPv4, little-endian: 127.x.y.z ends in 7F
        return ip.endswith("7F")
    return ip == "0" * 24 + "01000000" or (ip.startswith("0" * 16 + "FFFF0000") and ip.endswith("7F"))  # ::1, mapped


def main() -> None:
    import pyarrow.parquet as pq

    from dac_codec.tools import corpus
    from dac_codec.tools.corpus import ray_engine

    source, model, output = sys.argv[1:4]
    before, opened, nodes = listening(), [], []
    start = ray_engine.check_cluster

    def check_cluster(address):  # ray is imported here, by the engine itself
        start(address)
        import ray

        init = ray.init

        def watched_init(*args, **kwargs):  # the instance up: what it listens on, and its node's address
            context = init(*args, **kwargs)
            opened.extend(a for a in listening() - before if not loopback(a))
            nodes.extend(node["NodeManagerAddress"] for node in ray.nodes())
            return context

        ray.init = watched_init

    ray_engine.check_cluster = check_cluster
    summary = corpus.tokenize(corpus.Corpus.open(source), output, model, shard_size=4, engine="ray", progress=False)
    assert nodes == ["127.0.0.1"], nodes
    assert not opened, f"the local Ray instance listens beyond loopback: {opened}"
    print(f"shards done {summary.shards_done} on {len(summary.ray.nodes)} node at {nodes[0]}")
    rows = [row for path in sorted(Path(output).glob("part-*.parquet")) for row in pq.read_table(path).to_pylist()]
    print(json.dumps([(row["id"], row["codes"]) for row in rows]))


if __name__ == "__main__":
    main()
