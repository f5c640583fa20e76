"""cluster.yaml's node types autoscale: on this machine with Ray's fake multi-node provider.

A head with cluster.yaml's worker types (gpu_1x, gpu_4x; min_workers 0; fake GPUs, see
tests/fake_cluster.py) and no CPUs of its own (as in cluster.yaml) starts with no workers. A driver
then runs the two workload shapes of e2i on it:

- caching: e2i cache's Ray Data pipeline whose embedding step is an actor pool of 2 actors x 1 GPU
  -> the autoscaler adds gpu_1x nodes, not a gpu_4x;
- fine-tuning: a 4 x 1-GPU STRICT_PACK placement group (a 4-worker TorchTrainer as for
  `e2i finetune --num-workers 4 --use-gpu`, with `placement_strategy="STRICT_PACK"`) -> the
  autoscaler adds a gpu_4x node. (Measured: with Ray Train's default PACK the same 4 bundles were
  spread over four gpu_1x nodes, reusing the idle caching nodes: PACK is best effort, and only
  STRICT_PACK makes the gang one 4-GPU machine.)

and when the driver is gone the idle workers are terminated after the (shortened) idle timeout. The
checks read the autoscaler's own decisions ("Adding 2 node(s) of type gpu_1x", "Removing ... (idle)")
from its log, and where the work ran from the driver.

The caching step runs e2i cache's own pipeline (`e2i.cache.embed_stream`: preprocess tasks + the
EmbedBatch actor pool, light encoder, tiny toy corpus) with the pool `e2i.cache.pool_resources` builds
for a 2-GPU cluster, not the `e2i cache` CLI: the CLI sizes its pool from the GPUs present when it
starts (`ray.cluster_resources()`), and a cluster scaled to zero shows none, so it would ask for CPU
actors and never make the autoscaler add a GPU node. The fine-tuning step is a plain placement group of the TorchTrainer's shape (a real 4-worker
Lightning run is minutes on 2 cores); the autoscaler sees only resource requests either way. Run this
file as a script to run the driver.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from fake_cluster import fake_autoscaling_config, node_types, ray_head, wait_for

ROOT = Path(__file__).resolve().parents[1]
HEAD = "ray.head.default"


def test_fake_config_keeps_cluster_yaml_node_types():
    """The fake config is cluster.yaml's worker types with fake resources; it passes Ray's schema.

    (Only `validate_config`: `prepare_config` would merge the provider's defaults from
    fake_multi_node/example.yaml, which Ray 2.60's wheel does not ship: FileNotFoundError.)
    """
    import yaml
    from ray.autoscaler._private.util import validate_config

    real = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    fake = fake_autoscaling_config(ROOT / "cluster.yaml", idle_timeout_minutes=0.1)
    validate_config(fake)
    workers = {k: v for k, v in real["available_node_types"].items() if k != real["head_node_type"]}
    assert set(fake["available_node_types"]) == {HEAD, *workers}
    for name, spec in workers.items():
        got = fake["available_node_types"][name]
        assert (got["min_workers"], got["max_workers"]) == (spec["min_workers"], spec["max_workers"])
    assert fake["available_node_types"][HEAD]["resources"] == real["available_node_types"]["head"]["resources"]
    assert fake["available_node_types"]["gpu_1x"]["resources"]["GPU"] == 1
    assert fake["available_node_types"]["gpu_4x"]["resources"]["GPU"] == 4


@pytest.mark.slow
def test_autoscaler_adds_the_right_node_types_and_removes_idle_ones(tmp_path):
    cfg = fake_autoscaling_config(ROOT / "cluster.yaml", idle_timeout_minutes=0.1)  # 6 s idle
    with ray_head(num_cpus=0, autoscaling_config=cfg) as head:
        # min_workers is 0 for every worker type: only the head is up before any work arrives.
        assert wait_for(lambda: node_types(head), timeout=60, what="the first autoscaler report") == {HEAD: 1}

        out = tmp_path / "placements.json"
        res = head.run([sys.executable, __file__, str(out)], timeout=600)
        assert res.returncode == 0, f"driver failed:\n{res.stdout[-3000:]}\n{res.stderr[-5000:]}"
        got = json.loads(out.read_text())

        # Caching: e2i cache's pool (2 actors x 1 GPU) ran, every clip embedded by an actor holding a
        # (fake) GPU.
        cache = got["cache"]
        assert cache["pool"] == {"actors": 2, "num_gpus": 1}, cache
        assert (cache["rows"], cache["errors"]) == (8, []), cache
        assert cache["actor_gpu_ids"] and "" not in cache["actor_gpu_ids"], cache
        # Fine-tuning: one 4-GPU gang (STRICT_PACK) -> one gpu_4x node holds all four bundles.
        assert got["finetune"]["bundle_node_types"] == ["gpu_4x"] * 4, got
        assert len(set(got["finetune"]["bundle_nodes"])) == 1, got

        # The driver is gone: every worker is idle and is terminated after the idle timeout.
        wait_for(lambda: node_types(head) == {HEAD: 1}, timeout=180, interval=2,
                 what="idle worker nodes to be terminated")
        events = head.autoscaler_events()

    # What the autoscaler did, in order. Caching added only gpu_1x nodes, at least one per GPU actor
    # (Ray Data may also request CPUs for its preprocess tasks: cluster.yaml has no CPU-only worker
    # type, so those are gpu_1x too, never the 4-GPU machine); fine-tuning added exactly one gpu_4x;
    # every node added was removed as idle.
    added = [(kind, n) for verb, kind, n in events if verb == "add"]
    first_4x = next(i for i, (kind, _) in enumerate(added) if kind == "gpu_4x")
    assert {kind for kind, _ in added[:first_4x]} == {"gpu_1x"}, events
    assert sum(n for _, n in added[:first_4x]) >= 2, events
    assert sum(n for kind, n in added if kind == "gpu_4x") == 1, events
    for kind in ("gpu_1x", "gpu_4x"):
        removed = sum(n for verb, k, n in events if verb == "remove" and k == kind)
        assert removed == sum(n for k, n in added if k == kind), events


# --------------------------------------------------------------------------------------------------
# The driver (run as `python tests/test_autoscaling.py OUT.json` with RAY_ADDRESS set).


def _node_type() -> tuple[str, str]:
    import ray

    return os.environ.get("RAY_NODE_TYPE_NAME", "unknown"), ray.get_runtime_context().get_node_id()


def _driver(out_path: str) -> None:
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from e2i.cache import embed_stream, pool_resources
    from e2i.encoders import get_encoder
    from e2i.sources import read_corpus
    from e2i.toy import make_toy_corpus

    ray.init(log_to_driver=False)
    # Caching: e2i cache's own Ray Data pipeline (preprocess CPU tasks -> EmbedBatch actor pool) on a
    # tiny toy corpus with the light audio encoder, with the pool e2i cache builds for 2 GPUs.
    corpus = read_corpus("clotho", make_toy_corpus(Path(out_path).parent / "toy", n_items=8))
    rows = [{"item_id": it.item_id, "path": it.path} for it in corpus.items]
    pool = pool_resources({"CPU": 8.0, "GPU": 2.0}, num_actors=2)  # 2 actors x {GPU: 1, CPU: 1}
    batches = list(embed_stream(rows, get_encoder("logmel-stats"), "items", batch_size=2, resources=pool))
    cache = {
        "pool": {"actors": pool["compute"].max_size, "num_gpus": pool["num_gpus"]},
        "rows": sum(len(b["item_id"]) for b in batches),
        "errors": sorted({str(e) for b in batches for e in b["error"] if e}),
        "actor_gpu_ids": sorted({str(g) for b in batches for g in b["_gpu_ids"]}),
    }
    print("cache:", cache, flush=True)

    # Fine-tuning shape: 4 workers x 1 GPU on one machine.
    pg = placement_group([{"CPU": 1, "GPU": 1}] * 4, strategy="STRICT_PACK")
    ray.get(pg.ready(), timeout=300)
    where = ray.remote(num_cpus=1, num_gpus=1)(_node_type)
    placed = ray.get([where.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg, i)).remote()
                      for i in range(4)])
    remove_placement_group(pg)
    finetune = {"bundle_node_types": [t for t, _ in placed], "bundle_nodes": [n for _, n in placed]}
    print("finetune:", finetune, flush=True)
    Path(out_path).write_text(json.dumps({"cache": cache, "finetune": finetune}))


if __name__ == "__main__":
    _driver(sys.argv[1])
