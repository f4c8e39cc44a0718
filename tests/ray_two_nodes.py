"""Tokenizes with the Ray engine on a cluster of two equal nodes (2 CPUs each), head and worker node both at
127.0.0.1, which this process starts and stops; the actors, sized by default, run on both nodes; a request that no
node can hold is refused at once:

    python ray_two_nodes.py INPUT MODEL OUTPUT SHARD_SIZE

Ray 2.60 binds its servers to loopback only for the node address 127.0.0.1 exactly (any other, 127.0.0.2
included, listens on all interfaces); the script checks that no server of its cluster listens elsewhere.
"""

import os
import sys

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # let cluster_utils start several nodes on one machine

from ray_local import listening, loopback  # noqa: E402


def main() -> None:
    import ray
    from ray.cluster_utils import Cluster

    from dac_codec.tools import corpus

    source, model, output, shard_size = sys.argv[1:5]
    before = listening()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "node_ip_address": "127.0.0.1"})
    try:
        cluster.add_node(num_cpus=2, node_ip_address="127.0.0.1")
        ray.init(address=cluster.address)
        nodes = sorted(node["NodeManagerAddress"] for node in ray.nodes() if node["Alive"])
        assert len(nodes) == 2 and set(nodes) == {"127.0.0.1"}, nodes
        summary = corpus.tokenize(corpus.Corpus.open(source), output, model, shard_size=int(shard_size),
                                  engine="ray", progress=False)
        print(f"shards done {summary.shards_done} skipped {summary.shards_skipped}")
        plan = summary.ray.plan
        print(f"actors {plan.actors} of {plan.resources} on {len(summary.ray.nodes)} nodes")
        try:
            corpus.tokenize(corpus.Corpus.open(source), output + "-too-wide", model, engine="ray", workers=3,
                            progress=False)
        except ValueError as error:
            print(f"refused: {error}")
        opened = [address for address in listening() - before if not loopback(address)]
        assert not opened, f"the cluster listens beyond loopback: {opened}"
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main()
