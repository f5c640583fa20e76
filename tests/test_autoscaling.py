"""cluster.yaml's node types autoscale: on this machine with Ray's fake multi-node provider.

A head with cluster.yaml's worker types (gpu_1x, gpu_4x; min_workers 0; fake GPUs, see
tests/fake_cluster.py) and no CPUs of its own (as in cluster.yaml) starts with no workers. The real
commands then run against it as drivers, as a user runs them on the head (`RAY_ADDRESS` set):

- `e2i cache --use-gpu --num-actors 2 ...` on the toy corpus with the light encoders: the embedding
  actor pool asks for 2 actors x 1 GPU although no GPU is up yet -> the autoscaler adds gpu_1x nodes
  (and no gpu_4x), each embedding actor holds the GPU of a gpu_1x node;
- `e2i finetune --num-workers 4 --use-gpu ...` with tiny random-weight PaSST + RoBERTa (one epoch of
  two steps): Ray Train's STRICT_PACK placement group of 4 x {CPU 1, GPU 1} -> exactly one gpu_4x node,
  all four workers on it. The caching nodes are still up (30 s idle timeout) when the gang is asked
  for: with Ray Train's default PACK the 4 bundles land on them instead (measured: this test then
  fails), only STRICT_PACK makes the gang one 4-GPU machine.

Torch has no CUDA here, so both commands must fall back to CPU while Ray still schedules (fake) GPUs:
the cache actors embed every row on CPU, the fine-tune workers train on CPU with gloo. When the
commands are done the idle workers are terminated after the idle timeout (lowered to 3 s then). The checks read the
autoscaler's own decisions ("Adding 2 node(s) of type gpu_1x", "Removing ... (idle)") from its log and
where every actor and bundle ran from Ray's state API (`ray list actors/nodes/placement-groups`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fake_cluster import (
    fake_autoscaling_config,
    node_type_names,
    node_types,
    ray_head,
    state_list,
    wait_for,
)
from finetune.test_finetune import cli_args as finetune_args
from tiny_models import tiny_roberta

ROOT = Path(__file__).resolve().parents[1]
HEAD = "ray.head.default"
E2I = str(Path(sys.executable).with_name("e2i"))  # the console script a user runs


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


def _actors(head, class_name: str) -> list[dict]:
    return [a for a in state_list(head, "actors") if a["class_name"] == class_name]


@pytest.mark.slow
def test_cache_and_finetune_commands_get_the_right_node_types(tmp_path):
    checkout = {"PYTHONPATH": str(ROOT)}  # the commands and every Ray worker import this checkout's e2i
    corpus = tmp_path / "toy"
    for split, n in (("development", 20), ("validation", 4), ("evaluation", 4)):
        subprocess.run([E2I, "toy", "--root", str(corpus), "--n-items", str(n), "--split", split],
                       check=True, capture_output=True, env={**os.environ, **checkout})
    text_dir = tiny_roberta(tmp_path / "roberta")
    # 30 s idle: the caching nodes are still up when the fine-tune asks for its gang (see above)
    cfg = fake_autoscaling_config(ROOT / "cluster.yaml", idle_timeout_minutes=0.5)
    with ray_head(num_cpus=0, autoscaling_config=cfg, env=checkout) as head:
        # min_workers is 0 for every worker type: only the head is up before any work arrives.
        assert wait_for(lambda: node_types(head), timeout=240, what="the first autoscaler report") == {HEAD: 1}

        # 1) e2i cache --use-gpu: one pool of 2 embedding actors x 1 GPU for items and captions, on gpu_1x nodes
        cache = head.run([E2I, "cache", "--metadata", str(corpus), "--split", "development",
                          "--cache-dir", str(tmp_path / "stores"), "--audio-encoder", "logmel-stats",
                          "--text-encoder", "ngram-hash", "--use-gpu", "--num-actors", "2", "--batch-size", "4"],
                         timeout=400)
        assert cache.returncode == 0, f"e2i cache failed:\n{cache.stdout[-3000:]}\n{cache.stderr[-5000:]}"
        summary = " ".join(cache.stdout.split())  # rich wraps the summary line at the terminal width
        assert "pool 2 actor(s) x 1 GPU / 1.0 CPU" in summary, cache.stdout[-3000:]
        assert "run capped at 8 CPUs, 2 GPUs" in summary, cache.stdout[-3000:]
        manifest = json.loads((tmp_path / "stores" / "toy" / "development" / "manifest.json").read_text())
        assert (manifest["counts"]["items"], manifest["counts"]["captions"]) == (20, 100), manifest["counts"]
        kinds = node_type_names(head, cfg)
        embedders = _actors(head, "MapWorker(MapBatches(EmbedBatch))")
        assert len(embedders) == 2, embedders  # one pool for both kinds (not one per phase)
        assert all(a["required_resources"].get("GPU") == 1 for a in embedders), embedders
        # An actor the pool asked for while its GPU node was still launching may end (DEAD, never
        # placed: node_id None) when a phase with a single input block is done by the other actor.
        placed = [a for a in embedders if a["node_id"] is not None]
        assert len(placed) >= 2 and {a["state"] for a in embedders} <= {"ALIVE", "DEAD"}, embedders
        assert {kinds[a["node_id"]] for a in placed} == {"gpu_1x"}, (embedders, kinds)
        assert len({a["node_id"] for a in placed}) >= 2, embedders  # one GPU per gpu_1x node
        assert "gpu_4x" not in kinds.values(), kinds
        # Exactly the pool's two gpu_1x nodes: one pool for both kinds (a second pool asking for GPUs while
        # the first still held them got nodes of its own), decode tasks within 2 x 4 CPUs
        # (e2i.cache.embed.CPUS_PER_GPU), and no 1-CPU metadata task per input block (ray.data.from_arrow's:
        # 30 pending tasks got two gpu_4x nodes). CI once saw 6 gpu_1x and a gpu_4x for this run.
        # Counted, not listed: the autoscaler may launch the two nodes in two rounds (1 + 1), and a fresh-clone
        # CI run on a quiet machine once saw one extra gpu_1x (2 + 1; the issue-17 helper saw it under load with
        # the code from before too): cause not found yet (Ray Data's resource request within the 8-CPU cap is
        # the suspect), so at most one extra node is tolerated; the runaway this test exists for was 6 + a gpu_4x.
        cache_adds = [e for e in head.autoscaler_events() if e[0] == "add"]
        assert {kind for _, kind, _ in cache_adds} == {"gpu_1x"}, head.autoscaler_events()
        assert 2 <= sum(n for _, _, n in cache_adds) <= 3, head.autoscaler_events()

        # 2) e2i finetune --num-workers 4 --use-gpu: one STRICT_PACK gang of 4 x 1 GPU -> one gpu_4x
        out = tmp_path / "runs"
        ft = head.run([E2I, *finetune_args(str(corpus), text_dir, out, "--num-workers", "4", "--use-gpu",
                                           "--epochs", "1", "--subset", "4", "--limit-train-batches", "2")],
                      timeout=600)
        log = ft.stdout + ft.stderr
        assert ft.returncode == 0, f"e2i finetune failed:\n{ft.stdout[-3000:]}\n{ft.stderr[-5000:]}"
        assert "e2i finetune: 4 worker(s) on cpu (Ray GPU ids of rank 0: " in log, log[-5000:]
        assert "; process group: gloo)" in log, log[-5000:]
        report = json.loads((out / "tiny" / "evaluation_metrics.json").read_text())
        assert report["trained"] == {"epoch": 1, "step": 2} and report["num_items"] == 4, report
        kinds = node_type_names(head, cfg)
        gangs = [g for g in state_list(head, "placement_groups") if len(g["bundles"]) == 4]
        assert len(gangs) == 1, gangs  # the state API does not show the strategy; where it landed tells
        bundles = gangs[0]["bundles"]
        assert [b["unit_resources"] for b in bundles] == [{"CPU": 1.0, "GPU": 1.0}] * 4, bundles
        assert [kinds[b["node_id"]] for b in bundles] == ["gpu_4x"] * 4, (bundles, kinds)
        assert len({b["node_id"] for b in bundles}) == 1, bundles
        workers = _actors(head, "RayTrainWorker")  # one per bundle, on the bundle's node
        assert sorted((w["placement_group_id"], w["node_id"]) for w in workers) == \
            [(gangs[0]["placement_group_id"], bundles[0]["node_id"])] * 4, workers

        # The commands are done: every worker is idle and is terminated after the idle timeout. The 30 s
        # were for the gap between the two commands; from here 3 s will do (the running autoscaler re-reads
        # its config file), so the test does not sit out half a minute of idleness.
        head.set_idle_timeout(0.05)
        wait_for(lambda: node_types(head) == {HEAD: 1}, timeout=180, interval=2,
                 what="idle worker nodes to be terminated")
        events = head.autoscaler_events()
        monitor_tail = head.monitor_log()[-4000:]  # for the message below (seen once, under load 5-13:
        # the gang ran on a gpu_4x node but no "Adding ... gpu_4x" line was found)

    # What the autoscaler did, in order. Caching added only gpu_1x nodes, one per GPU actor (the
    # preprocess tasks' CPUs fit on them: the run is capped at 4 CPUs per GPU actor, and cluster.yaml has
    # no CPU-only worker type); fine-tuning added exactly one gpu_4x. Ray Train V2's controller also asks
    # the autoscaler, through Ray Data's AutoscalingCoordinator, for 4 x {CPU 1, GPU 1} *without* the
    # placement strategy (ray/train/v2/_internal/execution/scaling_policy/scaling_policy.py): with the
    # caching nodes' 2 GPUs still up the autoscaler tops that request up with 2 more gpu_1x (measured here,
    # 10:38:46 "Adding 2 node(s) of type gpu_1x" then "Adding 1 node(s) of type gpu_4x"); the gang itself
    # only fits the gpu_4x, and the extra gpu_1x idle out. That is Ray's, so only the gang's node is counted.
    # Every node ended idle-terminated: the wait above saw only the head (counting "Removing" lines is no
    # proof: CI once logged 5 gpu_1x removals for 4 additions).
    added = [(kind, n) for verb, kind, n in events if verb == "add"]
    first_4x = next((i for i, (kind, _) in enumerate(added) if kind == "gpu_4x"), None)
    assert first_4x is not None, (events, monitor_tail)
    assert added[0][0] == "gpu_1x", events  # the cache run's (counted exactly above)
    assert {kind for kind, _ in added[:first_4x]} == {"gpu_1x"}, events
    assert sum(n for kind, n in added if kind == "gpu_4x") == 1, events
    assert any(verb == "remove" and kind == "gpu_4x" for verb, kind, _ in events), events
