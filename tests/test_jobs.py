"""`ray job submit` on a real local head: the demo pipeline as a job, the whole chain with relative paths as
a job, and the head's secure defaults.

One head for the module (`ray start --head --block`, dashboard/job API on 127.0.0.1, token auth from
the environment, its own temp dir and free ports; see tests/fake_cluster.py), stopped at the end by
terminating its process group. Jobs are submitted with the real CLI exactly as the README says:
`ray job submit --address http://127.0.0.1:PORT --working-dir . --runtime-env jobs/runtime_env.yaml
-- python jobs/demo.py ...`.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml
from fake_cluster import RAY_BIN, RayHead, dashboard_json, ray_head
from test_relative_paths import LIGHT, SPLIT_SPEC

ROOT = Path(__file__).resolve().parents[1]
# Fake secrets in the head's environment (a job inherits it): none may end up in outputs or job logs.
SECRETS = {
    "HF_TOKEN": "hf_fakeE2Itoken" + uuid.uuid4().hex,
    "WANDB_API_KEY": "fakewandb" + uuid.uuid4().hex,
    "AWS_SECRET_ACCESS_KEY": "fakeaws" + uuid.uuid4().hex,
}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def head():
    with ray_head(num_cpus=2, env=SECRETS) as h:
        yield h


def submit(head: RayHead, args: list[str], *, timeout: float = 900) -> tuple[str, subprocess.CompletedProcess]:
    """`ray job submit` (waits and tails the logs); returns (submission id, completed process)."""
    sid = f"e2i-test-{uuid.uuid4().hex[:8]}"
    cmd = [RAY_BIN, "job", "submit", "--address", head.dashboard_url, "--submission-id", sid,
           "--working-dir", ".", "--runtime-env", "jobs/runtime_env.yaml", "--", *args]
    return sid, head.run(cmd, timeout=timeout, cwd=ROOT)


def job_status(head: RayHead, sid: str) -> str:
    """The job's status from the job API (what `ray job status` prints), e.g. "SUCCEEDED"."""
    return dashboard_json(head, f"/api/jobs/{sid}")["status"]


def _listen_addresses(port: int) -> set[str]:
    """Local addresses with a TCP socket LISTENing on `port` (from /proc/net/tcp{,6})."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, p = local.split(":")
            if state == "0A" and int(p, 16) == port:  # 0A = LISTEN
                found.add(socket.inet_ntop(socket.AF_INET, bytes.fromhex(addr)[::-1]) if width == 8 else addr)
    return found


def _external_ip() -> str | None:
    """This machine's address towards the outside (no packet is sent), or None if it has none."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: only selects the outgoing interface
            ip = s.getsockname()[0]
        except OSError:
            return None
    return None if ip.startswith("127.") else ip


def test_dashboard_and_job_api_listen_on_loopback_only(head):
    # Whoever reaches the job API can run any code on the cluster: it must not listen on 0.0.0.0.
    assert _listen_addresses(head.dashboard_port) == {"127.0.0.1"}
    ip = _external_ip()
    if ip is not None:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((ip, head.dashboard_port), timeout=5).close()


def test_job_api_requires_the_token(head):
    # Without the token the job API refuses the request; with it, it answers.
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{head.dashboard_url}/api/jobs/", timeout=10)
    assert err.value.code in (401, 403)
    req = urllib.request.Request(f"{head.dashboard_url}/api/jobs/",
                                 headers={"Authorization": f"Bearer {head.env['RAY_AUTH_TOKEN']}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert isinstance(json.loads(resp.read()), list)
    # The CLI without the token fails too, for the job API and for the GCS port (which Ray binds on
    # every interface whatever --node-ip-address says: the token is what protects it).
    env = {k: v for k, v in head.env.items() if k != "RAY_AUTH_TOKEN"}
    for args in (["job", "list", "--address", head.dashboard_url], ["status", "--address", head.address]):
        res = subprocess.run([RAY_BIN, *args], env=env, capture_output=True, text=True, timeout=60, check=False)
        assert res.returncode != 0, (args, res.stdout[-2000:])


SUMMARY_KEYS = {  # demo_summary.json column -> the test metric it reports
    "t2i_R@1": "text_to_item/recall@1", "t2i_R@10": "text_to_item/recall@10", "t2i_mAP@10": "text_to_item/mAP@10",
    "i2t_R@1": "item_to_text/recall@1"}


def test_demo_pipeline_as_a_job(head, tmp_path):
    out = tmp_path / "demo"
    # 120 clips: 18 test items (chance R@1 1/18); 10 epochs of the shipped siglip config retrieve far above
    # chance (measured here: t2i R@1 0.39, the 2-epoch tuned clip head 0.31); 40 clips x 2 epochs did not
    sid, res = submit(head, ["python", "jobs/demo.py", "--output-dir", str(out), "--n-items", "120",
                             "--epochs", "10", "--tune-samples", "2", "--tune-epochs", "2"])
    logs = res.stdout + res.stderr
    assert res.returncode == 0, logs[-6000:]
    assert job_status(head, sid) == "SUCCEEDED", logs[-6000:]

    # The store (corpus split + item-level splits) and the results were written where the job was told.
    for split in ("development", "train", "val", "test"):
        manifest = json.loads((out / "stores" / "toy" / split / "manifest.json").read_text())
        assert manifest["counts"]["items"] > 0, manifest
    assert list((out / "stores" / "toy" / "development" / "items").glob("*.parquet"))
    results = out / "results"
    listing = sorted(str(p.relative_to(results)) for p in results.rglob("*") if "tune" not in p.parts)
    assert list(results.rglob("optuna.db")) and list(results.rglob("leaderboard*")), listing  # tune + report
    assert list(results.rglob("*.png")), listing  # plots

    # test-split retrieval per trained run: the shipped config, then the tuned best config retrained
    table = json.loads((out / "demo_summary.json").read_text())
    assert [row["run"] for row in table] == ["siglip (shipped config)", "default-best (tuned)"], table
    for row, epochs in zip(table, (10, 2), strict=True):
        run = results / row["run"].split(" (")[0]
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        metrics = json.loads((run / "metrics.json").read_text())
        evaluation = json.loads((run / "evaluation_results" / "test_metrics.json").read_text())
        assert (row["head"], row["loss"]) == (cfg["model"]["type"], cfg["loss"]["type"])
        history = metrics["history"]
        # epochs of 100 steps: the shipped config (patience 5) may stop early, 5 epochs after its best
        ran = metrics["epochs"]
        assert ran == epochs or (metrics["stopped_early"] and ran == metrics["best_epoch"] + 5 < epochs), metrics
        assert row["epochs"] == ran and [h["epoch"] for h in history] == [*range(1, ran + 1)]
        assert [h["step"] for h in history] == [100 * e for e in range(1, ran + 1)]  # 8 steps a pass -> 100
        assert metrics["best_metric"] == max(h["val/mAP@10"] for h in history)
        assert history[metrics["best_epoch"] - 1]["val/mAP@10"] == metrics["best_metric"]
        # the same numbers in the summary, metrics.json and the evaluation file of the run
        assert (evaluation["split"], evaluation["num_items"], evaluation["num_captions"]) == ("test", 18, 90)
        assert row["chance_R@1"] == evaluation["chance/recall@1"] == pytest.approx(1 / 18)
        for column, key in SUMMARY_KEYS.items():
            assert isinstance(row[column], float) and row[column] == metrics["test"][key] == evaluation["metrics"][key]
        assert row["t2i_R@1"] >= 3 * row["chance_R@1"], row  # far above chance
        assert row["t2i_R@1"] <= row["t2i_R@10"] and row["t2i_mAP@10"] > 0.4, row
        # and in the table the job printed
        line = next((line for line in logs.splitlines() if row["run"] in line), "")
        assert re.findall(r"\b\d\.\d{4}\b", line) == [f"{row[c]:.4f}" for c in (*SUMMARY_KEYS, "chance_R@1")], line

    # No secret from the head's environment in any output file or in the job's logs.
    job_logs = head.run([RAY_BIN, "job", "logs", "--address", head.dashboard_url, sid], timeout=60).stdout
    for name, value in SECRETS.items():
        assert value not in logs + job_logs, f"{name} leaked into the job logs"
        leaked = [p for p in out.rglob("*") if p.is_file() and value.encode() in p.read_bytes()]
        assert not leaked, f"{name} leaked into {leaked}"


JOB_CHAIN = " && ".join([
    "python jobs/toy.py --root data/toy --n-items 40",
    "python jobs/cache.py --metadata data/toy --cache-dir stores --dataset jobtoy " + " ".join(LIGHT),
    f"python jobs/split.py stores/jobtoy/development --out stores/jobtoy --spec {SPLIT_SPEC}",
    ("python jobs/train.py configs/clip.yaml --set data.store=stores/jobtoy --set name=jobclip "
    "--set optim.epochs=2 --no-evaluate"),
    "python jobs/evaluate.py results/jobclip --no-plots",
    ("python jobs/tune.py tune_spaces/clip.yaml --set base.data.store=stores/jobtoy --num-samples 2 "
    "--max-t 2 --max-concurrent-trials 1 --no-report"),
    "python jobs/report.py results/clip",
])


def test_relative_chain_as_a_ray_job_resolves_in_the_uploaded_working_dir(head):
    """Every stage of the chain as `python jobs/<stage>.py` with relative paths, in one job (see
    tests/test_relative_paths.py for the same chain as local commands): the job's driver runs in the
    uploaded copy of the repo, so its relative paths resolve there, also inside Ray Train and Tune."""
    sid, res = submit(head, ["bash", "-c", JOB_CHAIN], timeout=1200)
    logs = res.stdout + res.stderr
    assert res.returncode == 0, logs[-4000:]
    assert job_status(head, sid) == "SUCCEEDED"
    # The train stage names its run dir: it lies in the job's uploaded working dir, not in Ray
    # Train's artifacts dir and not in the repo the job was submitted from.
    match = re.search(r"\[jobclip\] done: 2 epochs.* -> (\S+/results/jobclip)", logs)
    assert match, logs[-4000:]
    run_dir = Path(match.group(1))
    assert not run_dir.is_relative_to(ROOT) and "artifacts" not in run_dir.parts
    workdir = run_dir.parents[1]
    assert (workdir / "jobs" / "train.py").is_file()  # the uploaded copy of the repo
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["data"]["store"] == str(workdir / "stores" / "jobtoy")
    assert (run_dir / "evaluation_results" / "test_metrics.json").is_file()
    assert (workdir / "results" / "clip" / "best_config.yaml").is_file()
    assert (workdir / "results" / "clip" / "report" / "leaderboard.csv").is_file()
