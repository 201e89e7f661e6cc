"""Deployment files: what can be checked without a Docker engine or a cluster.

Dockerfile sources and health check, compose paths, Prometheus config and alert rules
(promtool check + unit tests), every PromQL expression of the dashboard and the rules
parsed by promtool and naming only metrics service/metrics.py defines, Kubernetes
manifests with probes on real routes.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.metrics import METRIC_NAMES, SPECS
from tests.conftest import REPO

DEPLOY = REPO / "deploy"
PROMETHEUS = DEPLOY / "prometheus"
DASHBOARDS = DEPLOY / "grafana" / "dashboards"
K8S = DEPLOY / "k8s"
# Labels every scraped series carries besides its own.
TARGET_LABELS = {"job", "instance", "le", "__name__"}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    assert exe, "promtool missing: apt-get install prometheus (Makefile TEST_APT)"
    return subprocess.run(
        [exe, *args], capture_output=True, text=True, timeout=60, check=False, cwd=REPO
    )


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


# ---------------------------------------------------------------------------- routes


@cache
def route_status(path: str) -> int:
    """Status of GET ``path`` on the real app, in-process and without loading a model."""
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    client = TestClient(create_app(Settings()))  # not entered: the lifespan never runs
    return client.get(path).status_code


def assert_route(path: str) -> None:
    assert route_status(path) not in (404, 405), f"{path} is not a GET route of service.app"


# ---------------------------------------------------------------------------- Dockerfile


@cache
def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for instr in dockerfile():
        if instr[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(instr)
    return result


def copy_sources() -> list[str]:
    """Build-context sources of every COPY (not ``--from`` a stage)."""
    sources = []
    for word, args in dockerfile():
        if word == "COPY" and "--from" not in args:
            parts = [p for p in shlex.split(args) if not p.startswith("--")]
            sources += parts[:-1]
    return sources


def dockerignored(path: str) -> bool:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    path = path.rstrip("/")
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatch.fnmatch(p, pat.rstrip("/")) for pat in patterns for p in prefixes)


def test_dockerfile_bases_are_python_311_slim() -> None:
    text = (REPO / "Dockerfile").read_text()
    default = re.search(r"ARG PYTHON_IMAGE=(\S+)", text)
    assert default and default.group(1).startswith("python:3.11-slim")
    assert all(args.startswith("${PYTHON_IMAGE}") for w, args in dockerfile() if w == "FROM")
    assert len(stages()) == 2  # builder (compilers) + runtime


def test_dockerfile_copies_only_what_exists_and_is_not_ignored() -> None:
    sources = [s for s in copy_sources() if s != "model/default_bundle/"]
    assert "pyproject.toml" in sources and "service/" in sources
    for source in sources:
        assert (REPO / source).exists(), f"COPY source {source} missing"
        assert not dockerignored(source), f"COPY source {source} excluded by .dockerignore"
    for heavy in (".venv", ".git", "tests", "runs"):
        assert dockerignored(heavy), f"{heavy} would be sent to the Docker daemon"


def test_dockerfile_ships_the_default_bundle() -> None:
    assert "model/default_bundle/" in copy_sources()
    assert not dockerignored("model/default_bundle/manifest.json")
    bundle = REPO / "model" / "default_bundle"
    if not (bundle / "manifest.json").exists():
        pytest.skip("model/default_bundle not exported yet (`lass train export`)")
    assert (bundle / "manifest.json").is_file()


def test_runtime_stage_runs_as_non_root_and_serves() -> None:
    runtime = dict(stages()[-1][::-1])  # last value of each instruction wins
    user = runtime["USER"].split(":")[0]
    assert user not in ("root", "0")
    assert user == "10001"
    cmd = json.loads(runtime["CMD"])
    assert cmd[:2] == ["lass", "serve"]
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0"
    port = cmd[cmd.index("--port") + 1]
    assert runtime["EXPOSE"] == port
    health = runtime["HEALTHCHECK"]
    url = re.search(r"http://127\.0\.0\.1:(\d+)(/[\w/]+)", health)
    assert url and url.group(1) == port
    assert url.group(2) == "/health/ready"
    assert_route(url.group(2))
    assert "LASS_BUNDLE=/opt/lass/bundle" in runtime["ENV"]


def test_runtime_stage_installs_the_makefile_run_packages() -> None:
    makefile = (REPO / "Makefile").read_text()
    run_apt = re.search(r"^RUN_APT\s*:=\s*(.*)$", makefile, re.MULTILINE)
    assert run_apt
    installs = " ".join(
        args for w, args in stages()[-1] if w == "RUN" and "apt-get install" in args
    )
    for package in run_apt.group(1).split():
        assert package in installs.split(), f"{package} (Makefile RUN_APT) not in the image"


# ---------------------------------------------------------------------------- compose


@cache
def compose() -> dict[str, Any]:
    data = load_yaml(REPO / "docker-compose.yml")
    assert isinstance(data, dict)
    return data


def test_compose_services_and_paths() -> None:
    services = compose()["services"]
    # Services under a profile (loadtest: tests/load/test_loadtest.py) start only when asked.
    assert {k for k, v in services.items() if not v.get("profiles")} == {
        "lass",
        "prometheus",
        "grafana",
    }
    assert services["lass"]["build"] == "."
    assert (REPO / "Dockerfile").is_file()
    assert "8000:8000" in services["lass"]["ports"]
    mounts = {}
    for service in services.values():
        for volume in service.get("volumes", []):
            host, container = volume.split(":")[:2]
            assert (REPO / host).exists(), f"compose mounts missing {host}"
            mounts[container] = REPO / host
    # Grafana: the provider's folder is where the dashboards are mounted, the home
    # dashboard is one of them, and the datasource uid is the one the panels use.
    provider = load_yaml(DEPLOY / "grafana/provisioning/dashboards/lass.yml")
    folder = provider["providers"][0]["options"]["path"]
    assert mounts[folder] == DASHBOARDS
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (DASHBOARDS / Path(home).relative_to(folder)).is_file()
    config = services["prometheus"]["command"][0].split("=", 1)[1]
    assert mounts[str(Path(config).parent)] == PROMETHEUS
    assert (PROMETHEUS / Path(config).name).is_file()


def test_prometheus_scrapes_the_compose_service() -> None:
    config = load_yaml(PROMETHEUS / "prometheus.yml")
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "lass"]
    (target,) = job["static_configs"][0]["targets"]
    host, port = target.split(":")
    assert host == "lass" and host in compose()["services"]
    assert f"{port}:{port}" in compose()["services"]["lass"]["ports"]
    assert_route(job["metrics_path"])


# ---------------------------------------------------------------------------- Prometheus


def test_promtool_check_config() -> None:
    result = promtool("check", "config", str(PROMETHEUS / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout


def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", str(PROMETHEUS / "alerts.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_unit_tests() -> None:
    result = promtool("test", "rules", str(PROMETHEUS / "alerts_test.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


# ---------------------------------------------------------------------------- PromQL names


def alert_exprs() -> list[str]:
    rules = load_yaml(PROMETHEUS / "alerts.yml")
    return [r["expr"] for group in rules["groups"] for r in group["rules"]]


def dashboard_panels() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted(DASHBOARDS.glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            yield path.name, panel


def dashboard_exprs() -> list[str]:
    return [t["expr"] for _, p in dashboard_panels() for t in p.get("targets", [])]


def concrete(expr: str) -> str:
    """Replace Grafana's variables with values PromQL accepts."""
    return expr.replace("$__rate_interval", "1m").replace("$instance", ".*")


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers before ``{``, ``[`` or a boundary,
    minus functions, keywords and label names inside ``{...}`` / ``by (...)``."""
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    without_labels = re.sub(r"\{[^}]*\}", "{}", without_strings)
    without_groupings = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", without_labels)
    names = set(re.findall(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b(?!\s*\()", without_groupings))
    keywords = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring"}
    return {n for n in names if n not in keywords and not re.fullmatch(r"\d+\w*", n)}


def label_names(expr: str) -> set[str]:
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    labels = set(re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", without_strings))
    for group in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", without_strings):
        labels |= {g.strip() for g in group.split(",") if g.strip()}
    return labels


def allowed_labels() -> set[str]:
    labels = set(TARGET_LABELS)
    for spec in SPECS.values():
        labels |= set(spec.labels)
    return labels | {"bundle", "languages", "device", "dtype", "version"}  # lass_model_info


def test_metric_name_parser() -> None:
    expr = 'sum by (language) (rate(lass_audio_seconds_total{instance=~"a|b"}[1m])) > 0'
    assert metric_names(expr) == {"lass_audio_seconds_total"}
    assert label_names(expr) == {"language", "instance"}
    assert metric_names('up{job="lass"} == 1 unless on (job) lass_model_info') == {
        "up",
        "lass_model_info",
    }


@pytest.mark.parametrize("source", ["alerts", "dashboard"])
def test_exprs_name_only_defined_metrics_and_labels(source: str) -> None:
    exprs = alert_exprs() if source == "alerts" else dashboard_exprs()
    assert exprs
    used: set[str] = set()
    for expr in exprs:
        names = metric_names(concrete(expr))
        assert names, f"no metric in {expr!r}"
        unknown = names - METRIC_NAMES - {"up"}
        assert not unknown, f"{expr!r} names metrics service/metrics.py does not define: {unknown}"
        bad_labels = label_names(concrete(expr)) - allowed_labels()
        assert not bad_labels, f"{expr!r} uses unknown labels {bad_labels}"
        used |= names
    if source == "dashboard":
        # The dashboard shows every lass_ metric family.
        for spec in SPECS.values():
            assert used & set(spec.sample_names()), f"no panel shows {spec.name}"


def test_every_expr_parses_as_promql(tmp_path: Path) -> None:
    # promtool has no "check expression": wrap each one in a recording rule.
    exprs = [concrete(e) for e in dashboard_exprs()]
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [{"record": f"dashboard:expr{i}", "expr": e} for i, e in enumerate(exprs)],
            }
        ]
    }
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(exprs)} rules found" in result.stdout


def test_dashboard_is_valid_and_uses_the_provisioned_datasource() -> None:
    datasources = load_yaml(DEPLOY / "grafana/provisioning/datasources/prometheus.yml")
    (ds,) = datasources["datasources"]
    assert ds["url"] == "http://prometheus:9090" and "prometheus" in compose()["services"]
    ids = set()
    for name, panel in dashboard_panels():
        assert panel["id"] not in ids, f"{name}: duplicate panel id {panel['id']}"
        ids.add(panel["id"])
        if panel["type"] == "row":
            continue
        assert panel["title"]
        assert panel["datasource"]["uid"] == ds["uid"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == ds["uid"]
            assert target["expr"].strip()


# ---------------------------------------------------------------------------- Kubernetes


@cache
def k8s() -> dict[str, dict[str, Any]]:
    docs = {}
    kustomization = load_yaml(K8S / "kustomization.yaml")
    for name in kustomization["resources"]:
        for doc in yaml.safe_load_all((K8S / name).read_text()):
            assert doc["apiVersion"] and doc["metadata"]["name"]
            docs[doc["kind"]] = doc
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk, "kustomization.yaml must list every manifest"
    return docs


def test_k8s_manifests_parse() -> None:
    assert set(k8s()) == {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    }


def test_k8s_probes_hit_real_routes_on_the_container_port() -> None:
    deployment = k8s()["Deployment"]
    pod = deployment["spec"]["template"]
    assert (
        deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    )
    (container,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    runtime = dict(stages()[-1][::-1])
    assert ports["http"] == int(runtime["EXPOSE"])
    probes = {k: container[k] for k in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert probes["livenessProbe"]["httpGet"]["path"] == "/health/live"
    for probe in probes.values():
        assert probe["httpGet"]["port"] in ports
        assert_route(probe["httpGet"]["path"])
    annotations = pod["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == ports["http"]
    assert_route(annotations["prometheus.io/path"])
    # Resources and identity agree with the image.
    assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"]
    assert pod["spec"]["securityContext"]["runAsUser"] == int(runtime["USER"].split(":")[0])
    # Graceful shutdown: the grace period covers preStop + uvicorn's 30 s drain.
    assert pod["spec"]["terminationGracePeriodSeconds"] >= 35


def test_k8s_service_and_hpa_point_at_the_deployment() -> None:
    deployment, service, hpa = (
        k8s()["Deployment"],
        k8s()["Service"],
        k8s()["HorizontalPodAutoscaler"],
    )
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert service["spec"]["ports"][0]["targetPort"] in {p["name"] for p in container["ports"]}
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    pdb = k8s()["PodDisruptionBudget"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
