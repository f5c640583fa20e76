"""`ray job submit` on a real local head: the demo pipeline as a job, and the head's secure defaults.

One head for the module (`ray start --head --block`, dashboard/job API on 127.0.0.1, token auth from
the environment, its own temp dir and free ports; see tests/fake_cluster.py), stopped at the end by
terminating its process group. Jobs are submitted with the real CLI exactly as the README says:
`ray job submit --address http://127.0.0.1:PORT --working-dir . --runtime-env jobs/runtime_env.yaml
-- python jobs/demo.py ...`.
"""

from __future__ import annotations

import json
import socket
import subprocess
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from fake_cluster import RAY_BIN, RayHead, dashboard_json, ray_head

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


def test_demo_pipeline_as_a_job(head, tmp_path):
    out = tmp_path / "demo"
    sid, res = submit(head, ["python", "jobs/demo.py", "--output-dir", str(out), "--n-items", "40",
                             "--epochs", "2", "--tune-samples", "2", "--tune-epochs", "2"])
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
    metrics = [json.loads(p.read_text()) for p in results.rglob("metrics.json")]
    assert metrics and all(metrics), listing  # the trained head's metrics
    assert list(results.rglob("optuna.db")) and list(results.rglob("leaderboard*")), listing  # tune + report
    assert list(results.rglob("*.png")), listing  # plots
    table = json.loads((out / "demo_summary.json").read_text())  # test-split retrieval per trained run
    assert table and all(0.0 <= row["t2i_R@1"] <= 1.0 for row in table), table

    # No secret from the head's environment in any output file or in the job's logs.
    job_logs = head.run([RAY_BIN, "job", "logs", "--address", head.dashboard_url, sid], timeout=60).stdout
    for name, value in SECRETS.items():
        assert value not in logs + job_logs, f"{name} leaked into the job logs"
        leaked = [p for p in out.rglob("*") if p.is_file() and value.encode() in p.read_bytes()]
        assert not leaked, f"{name} leaked into {leaked}"
