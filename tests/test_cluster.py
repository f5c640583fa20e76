"""cluster.yaml is checked by the installed Ray's own cluster-config schema validator."""

import copy
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster_config() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def _prepare_and_validate(cfg: dict) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(cfg))
    validate_config(prepared)
    return prepared


def test_cluster_yaml_passes_rays_schema(cluster_config):
    prepared = _prepare_and_validate(cluster_config)
    types = prepared["available_node_types"]
    assert prepared["head_node_type"] == "head"
    assert types["head"]["resources"] == {"CPU": 0}
    # GPU workers autoscale from zero and go away when idle.
    for name in ("gpu_1x", "gpu_4x"):
        assert types[name]["min_workers"] == 0 and types[name]["max_workers"] > 0
    assert prepared["idle_timeout_minutes"] > 0


def test_cluster_yaml_installs_like_the_readme_and_keeps_dashboard_local(cluster_config):
    setup = " ".join(cluster_config["setup_commands"])
    assert "make venv" in setup  # the README's install path, not a hand-written pip line
    head = " ".join(cluster_config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "RAY_AUTH_MODE=token" in head


def test_validator_rejects_a_typo(cluster_config):
    from jsonschema.exceptions import ValidationError

    bad = copy.deepcopy(cluster_config)
    bad["available_node_types"]["gpu_1x"]["min_wrkers"] = 0
    with pytest.raises(ValidationError, match="min_wrkers"):
        _prepare_and_validate(bad)
