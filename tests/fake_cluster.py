"""Real Ray heads for tests, started as subprocesses: a plain local head (job submission) and a head
with Ray's fake multi-node autoscaler (autoscaling checks on one machine).

Usage::

    from fake_cluster import fake_autoscaling_config, ray_head   # tests/ is on sys.path under pytest

    cfg = fake_autoscaling_config(ROOT / "cluster.yaml", idle_timeout_minutes=0.1)
    with ray_head(num_cpus=0, autoscaling_config=cfg) as head:
        head.address        # "127.0.0.1:PORT" (GCS: RAY_ADDRESS for drivers, `ray status --address`)
        head.dashboard_url  # "http://127.0.0.1:PORT" (`ray job submit --address`, state API)
        head.env            # environment for CLI clients / drivers (token auth, RAY_ADDRESS)

How the fake multi-node provider works in Ray 2.60 (`ray/autoscaler/_private/fake_multi_node/`):
`RAY_FAKE_CLUSTER=1 ray start --head --autoscaling-config=X.yaml` with `provider.type:
fake_multinode` runs the real autoscaler (monitor process); when it "launches" a node it starts a
real raylet on this machine with the node type's `resources` (fake GPUs included) and terminates it
when the node has been idle for `idle_timeout_minutes`. The head must be the node type
`ray.head.default` (the provider tags the head with that name). `ray up` with the fake provider and
`ray.cluster_utils.AutoscalingCluster` are broken in 2.60 (both need `fake_multi_node/example.yaml`,
which the wheel does not ship), and `AutoscalingCluster` would also run `ray stop --force`, killing
every Ray instance of this user on the machine.

Each head gets its own short `--temp-dir` (unix socket paths must stay under ~107 chars), free
ports, the dashboard/job API on 127.0.0.1 only, and runs in its own process group with `--block`;
teardown terminates that group, then kills any process still naming the head's temp dir (fake worker
raylets included). We never call `ray stop` (it would stop other Ray instances on the machine).
`--node-ip-address 127.0.0.1` is not used: Ray 2.60 replaces a loopback address by the machine's
address (`services.resolve_ip_for_localhost`), and the GCS, raylets and workers listen on all
interfaces anyway; only the dashboard honours `--dashboard-host`.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

FAKE_HEAD_TYPE = "ray.head.default"  # the fake provider always tags the head with this type name

# Fake (logical) resources per node type of cluster.yaml, shaped like the real machines: gpu_1x is a
# g5.xlarge (4 vCPU, 1 GPU), gpu_4x a g5.12xlarge (48 vCPU, 4 GPUs) scaled down to 16 CPUs so fake
# raylets stay light. The CPU:GPU ratio matters: the autoscaler picks the node type whose resources
# a demand uses best, so with e.g. {CPU: 1, GPU: 1} vs {CPU: 2, GPU: 4} a Ray Data job (1-CPU read
# tasks + 1-GPU actors) would get one gpu_4x instead of two gpu_1x.
FAKE_RESOURCES: dict[str, dict[str, float]] = {
    "gpu_1x": {"CPU": 4, "GPU": 1},
    "gpu_4x": {"CPU": 16, "GPU": 4},
}
FAKE_OBJECT_STORE_BYTES = 100 * 1024**2  # per fake node (Ray's minimum is 75 MiB)
RAY_BIN = str(Path(sys.executable).with_name("ray"))

# monitor.log: ":event_summary:Adding 2 node(s) of type gpu_1x." / "...Removing 2 nodes of type gpu_1x (idle)."
_EVENT = re.compile(r":event_summary:(Adding|Removing) (\d+) nodes?(?:\(s\))? of type (\S+?)\.?\s")
_STATUS_NODE = re.compile(r"^\s+(\d+)\s+(\S+)\s*$")  # " 2 gpu_1x" under "Active:"
_STATUS_PENDING = re.compile(r"^\s+\S+:\s+(\S+),\s+\S+")  # " <node id>: gpu_1x, uninitialized"
_STATUS_LAUNCHING = re.compile(r"^\s+(\S+),\s+(\d+)\s+launching")  # " gpu_1x, 2 launching"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def fake_autoscaling_config(
    cluster_yaml: str | Path,
    *,
    idle_timeout_minutes: float = 0.1,
    fake_resources: dict[str, dict[str, float]] | None = None,
    head_resources: dict[str, float] | None = None,
) -> dict[str, Any]:
    """A `fake_multinode` autoscaling config with cluster.yaml's worker node types.

    Keeps the worker type names, `min_workers`/`max_workers`, the cluster's `max_workers` and
    `upscaling_speed`; replaces cloud `node_config`s by fake resources (`fake_resources[type]`,
    default FAKE_RESOURCES) and the idle timeout by a short one. The head becomes
    `ray.head.default` with `head_resources` (default: cluster.yaml's head resources, CPU 0).
    `provider.gcs_address` is filled in by `ray_head` once the port is known.
    """
    src = yaml.safe_load(Path(cluster_yaml).read_text())
    fake_resources = FAKE_RESOURCES if fake_resources is None else fake_resources
    head_type = src["head_node_type"]
    head_res = dict(src["available_node_types"][head_type].get("resources") or {}) if head_resources is None \
        else dict(head_resources)
    node_types: dict[str, Any] = {
        FAKE_HEAD_TYPE: {"resources": head_res, "node_config": {}, "max_workers": 0},
    }
    for name, spec in src["available_node_types"].items():
        if name == head_type:
            continue
        if name not in fake_resources:
            raise KeyError(f"no fake resources for node type {name!r}; known: {sorted(fake_resources)}")
        node_types[name] = {
            "resources": {**fake_resources[name], "object_store_memory": FAKE_OBJECT_STORE_BYTES},
            "node_config": {},
            "min_workers": int(spec.get("min_workers", 0)),
            "max_workers": int(spec["max_workers"]),
        }
    return {
        "cluster_name": f"{src.get('cluster_name', 'e2i')}-fake",
        "max_workers": int(src.get("max_workers", 10)),
        "upscaling_speed": float(src.get("upscaling_speed", 1.0)),
        "idle_timeout_minutes": idle_timeout_minutes,
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            # Create `count` nodes when the autoscaler asks for `count` (as cloud providers do); the
            # provider's default (False) creates ONE node per request whatever the count, so the
            # autoscaler sees launches go missing and asks again, over-provisioning under load.
            "launch_multiple": True,
        },
        "auth": {},
        "available_node_types": node_types,
        "head_node_type": FAKE_HEAD_TYPE,
        "docker": {},
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


@dataclass
class RayHead:
    proc: subprocess.Popen
    temp_dir: str
    port: int
    dashboard_port: int
    env: dict[str, str]
    log_path: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def monitor_log(self) -> str:
        """The autoscaler's log (monitor.log of the head's session)."""
        logs = sorted(Path(self.temp_dir).glob("session_*/logs/monitor.log"))
        return logs[-1].read_text(errors="replace") if logs else ""

    def autoscaler_events(self) -> list[tuple[str, str, int]]:
        """The autoscaler's decisions in order, from its log: ("add", "gpu_1x", 2) for "Adding 2 node(s)
        of type gpu_1x", ("remove", "gpu_1x", 2) for "Removing 2 nodes of type gpu_1x (idle)"."""
        return [("add" if verb == "Adding" else "remove", kind, int(n))
                for verb, n, kind in _EVENT.findall(self.monitor_log())]

    def set_idle_timeout(self, minutes: float) -> None:
        """Change the running autoscaler's `idle_timeout_minutes`: the monitor re-reads its config file at
        every update (StandardAutoscaler.update -> reset), so the new value applies within a tick. Written
        to a temp file and renamed over the config, so the monitor never reads half a file."""
        path = Path(self.temp_dir) / "autoscaling.yaml"
        cfg = yaml.safe_load(path.read_text())
        cfg["idle_timeout_minutes"] = minutes
        tmp = path.with_suffix(".yaml.tmp")
        tmp.write_text(yaml.safe_dump(cfg))
        tmp.replace(path)

    def run(self, args: list[str], timeout: float = 120, **kwargs: Any) -> subprocess.CompletedProcess:
        """A CLI command (e.g. `[RAY_BIN, "status", ...]`) with this head's environment."""
        return subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=timeout, check=False,
                              **kwargs)


def wait_for(predicate: Callable[[], Any], *, timeout: float, what: str, interval: float = 1.0) -> Any:
    """Poll `predicate` until it returns a truthy value; raise TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def _dashboard_up(url: str) -> bool:
    try:
        urllib.request.urlopen(f"{url}/api/version", timeout=2).close()
        return True
    except urllib.error.HTTPError:  # any HTTP answer (401 without a token) means it is serving
        return True
    except (urllib.error.URLError, OSError):
        return False


def _names(arg: str, marker: str) -> bool:
    """`arg` is the path `marker`, `--flag=marker`, or a path under it (not a sibling with a longer name)."""
    return arg == marker or arg.endswith("=" + marker) or marker + "/" in arg


def _pids_naming(marker: str) -> list[int]:
    """Processes with an argument naming `marker` (our unique temp dir) or a path under it."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            args = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if any(_names(arg, marker) for arg in args):
            pids.append(int(entry.name))
    return pids


def _kill_group(proc: subprocess.Popen, marker: str, grace: float = 5.0) -> None:
    """SIGTERM the head's process group, give it `grace` seconds, then SIGKILL the group and any
    process still naming our temp dir (fake worker raylets included). Measured in Ray 2.60: after
    SIGTERM, `ray start --block` and the autoscaler's monitor never exit on their own (they wait on
    the GCS that is gone), so the SIGKILL is the normal end, not an accident."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while _pids_naming(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    for pid in _pids_naming(marker):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def run_command(args: list[str], *, env: dict[str, str], timeout: float, marker: str, cwd: str | Path | None = None
                ) -> subprocess.CompletedProcess:
    """Run a command (e.g. `e2i train ...` starting its own Ray under the temp dir `marker`) in its own
    process group and leave nothing behind: on timeout the group and every process naming `marker` are
    killed (then TimeoutExpired is raised), and so are stragglers after a normal exit."""
    proc = subprocess.Popen(args, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc, marker)
        raise
    finally:
        for pid in _pids_naming(marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


@contextlib.contextmanager
def ray_head(
    *,
    num_cpus: float = 2,
    num_gpus: float = 0,
    autoscaling_config: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 120,
) -> Iterator[RayHead]:
    """Start `ray start --head --block` with the dashboard (job API) on 127.0.0.1 and a free port.

    With `autoscaling_config` (see `fake_autoscaling_config`) the head runs the fake multi-node
    autoscaler (`RAY_FAKE_CLUSTER=1`). Token auth comes from the environment (`RAY_AUTH_MODE=token`,
    `RAY_AUTH_TOKEN`; tests/conftest.py sets both), never from a token file.
    """
    temp_dir = tempfile.mkdtemp(prefix="e2i-rayhead-", dir="/tmp")  # short: socket paths live under it
    port, dash_port = free_port(), free_port()
    head_env = {**os.environ, **(env or {})}
    head_env.pop("RAY_ADDRESS", None)
    head_env["RAY_USAGE_STATS_ENABLED"] = "0"
    # Job entrypoints (`python jobs/demo.py`) run through a shell on the head and resolve `python` on
    # the PATH Ray was started with (not Ray's own interpreter): put this venv first, as a cluster node
    # must when it starts Ray from the project's venv.
    head_env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{head_env.get('PATH', '')}"
    cmd = [
        RAY_BIN, "start", "--head", "--block", "--disable-usage-stats",
        "--port", str(port),
        "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash_port), "--include-dashboard", "true",
        "--num-cpus", str(num_cpus), "--num-gpus", str(num_gpus),
        "--object-store-memory", str(FAKE_OBJECT_STORE_BYTES * 2),
        "--temp-dir", temp_dir,
        # every other port Ray opens: free ones, so parallel heads on this machine do not collide
        "--ray-client-server-port", str(free_port()),
        "--dashboard-agent-listen-port", str(free_port()),
        "--dashboard-agent-grpc-port", str(free_port()),
        "--runtime-env-agent-port", str(free_port()),
        "--metrics-export-port", str(free_port()),
        "--min-worker-port", "0", "--max-worker-port", "0",
    ]
    if autoscaling_config is not None:
        cfg = copy.deepcopy(autoscaling_config)
        cfg["provider"]["gcs_address"] = f"127.0.0.1:{port}"  # the provider assumes :6379 otherwise
        cfg_path = Path(temp_dir) / "autoscaling.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg))
        cmd.append(f"--autoscaling-config={cfg_path}")
        head_env["RAY_FAKE_CLUSTER"] = "1"
        head_env["AUTOSCALER_UPDATE_INTERVAL_S"] = "1"  # react within seconds, not 5 s ticks
    log_path = Path(temp_dir) / "head.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=head_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    client_env = {**head_env, "RAY_ADDRESS": f"127.0.0.1:{port}"}
    client_env.pop("RAY_FAKE_CLUSTER", None)
    head = RayHead(proc, temp_dir, port, dash_port, client_env, log_path)
    try:
        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"ray start exited with {proc.returncode}:\n{head.log()[-4000:]}")
            return _dashboard_up(head.dashboard_url)

        wait_for(ready, timeout=timeout, what=f"the Ray head's dashboard on {head.dashboard_url}")
        yield head
    finally:
        _kill_group(proc, temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def node_types(head: RayHead) -> dict[str, int] | None:
    """Nodes the autoscaler knows (`ray status`) by node type name, e.g. {"ray.head.default": 1,
    "gpu_1x": 2, "pending:gpu_4x": 1}: up (Active, Idle) or being launched ("pending:<type>");
    None while it has not reported yet."""
    res = head.run([RAY_BIN, "status", "--address", head.address], timeout=60)
    if res.returncode != 0 or "Node status" not in res.stdout:
        return None
    counts: dict[str, int] = {}
    section = None
    for line in res.stdout.splitlines():
        if line and not line[0].isspace() and line.rstrip().endswith(":"):
            section = line.rstrip()[:-1]  # "Active", "Idle", "Pending", "Recent failures", ...
        elif section in ("Active", "Idle") and (m := _STATUS_NODE.match(line)):
            counts[m.group(2)] = counts.get(m.group(2), 0) + int(m.group(1))
        elif section == "Pending" and (m := _STATUS_LAUNCHING.match(line) or _STATUS_PENDING.match(line)):
            n = int(m.group(2)) if m.re is _STATUS_LAUNCHING else 1
            counts[f"pending:{m.group(1)}"] = counts.get(f"pending:{m.group(1)}", 0) + n
    return counts


def dashboard_json(head: RayHead, path: str) -> Any:
    """GET a dashboard endpoint with the token (`Authorization: Bearer <RAY_AUTH_TOKEN>`)."""
    req = urllib.request.Request(f"{head.dashboard_url}{path}")
    token = head.env.get("RAY_AUTH_TOKEN")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def state_list(head: RayHead, kind: str) -> list[dict[str, Any]]:
    """Ray's state API (what `ray list actors|nodes|placement-groups --detail` shows), dead entries
    included: `kind` is "actors", "nodes", "placement_groups", ..."""
    return dashboard_json(head, f"/api/v0/{kind}?detail=1&limit=10000")["data"]["result"]["result"]


def node_type_names(head: RayHead, config: dict[str, Any]) -> dict[str, str]:
    """{node id: node type} for every node the head has seen (alive or terminated), the workers told
    apart by their (CPU, GPU) totals, which are distinct per type in `config` (`fake_autoscaling_config`)."""
    shapes = {(spec["resources"].get("CPU", 0), spec["resources"].get("GPU", 0)): name
              for name, spec in config["available_node_types"].items() if name != FAKE_HEAD_TYPE}
    if len(shapes) != len(config["available_node_types"]) - 1:
        raise ValueError(f"node types share a (CPU, GPU) shape: {sorted(config['available_node_types'])}")
    out = {}
    for node in state_list(head, "nodes"):
        total = node.get("resources_total") or {}
        out[node["node_id"]] = FAKE_HEAD_TYPE if node.get("is_head_node") else \
            shapes.get((total.get("CPU", 0), total.get("GPU", 0)), f"unknown{total}")
    return out
