"""Tokenizes with the Ray engine on a two-node Ray cluster on loopback addresses (head 127.0.0.2, a worker node
127.0.0.3), which this process starts and stops:

    python ray_two_nodes.py INPUT MODEL OUTPUT SHARD_SIZE
"""

import os
import sys

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # let cluster_utils start several nodes on one machine


def main() -> None:
    import ray
    from ray.cluster_utils import Cluster

    from dac_codec import corpus

    source, model, output, shard_size = sys.argv[1:5]
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "node_ip_address": "127.0.0.2"})
    try:
        cluster.add_node(num_cpus=2, node_ip_address="127.0.0.3")
        ray.init(address=cluster.address)
        nodes = sorted(node["NodeManagerAddress"] for node in ray.nodes() if node["Alive"])
        assert nodes == ["127.0.0.2", "127.0.0.3"], nodes
        summary = corpus.tokenize(corpus.Corpus.open(source), output, model, shard_size=int(shard_size),
                                  engine="ray", workers=2, progress=False)
        print(f"shards done {summary.shards_done} skipped {summary.shards_skipped}")
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main()
