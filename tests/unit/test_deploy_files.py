"""deploy/ stays consistent with the code: metric names, the README's sidecar snippet, the image files.

No engine needed. YAML is read with PyYAML when the venv has it, else with Debian's python3-yaml
(installed with docker-compose by scripts/setup-env.sh).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
RULES = DEPLOY / "prometheus" / "rules.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "gc-daemon.json"
README = ROOT / "README.md"
# The README's sidecar snippet follows this marker line; it must equal the compose file's service.
SNIPPET_MARKER = "<!-- sidecar-snippet: deploy/docker-compose.yml services.gc-daemon -->"
# Series Prometheus makes itself, not exported by gc-daemon.
PROMETHEUS_SERIES = {"up"}
# Grafana's variables, replaced when a panel's query is run outside Grafana.
GRAFANA_VARIABLES = {
    "$__range": "5m",
    "$__rate_interval": "5m",
    "$__interval": "5m",
    "$instance": ".+",
}


def load_yaml(text: str) -> Any:
    try:
        import yaml  # type: ignore[import-untyped]
    except ImportError:
        pass
    else:
        return yaml.safe_load(text)
    try:
        done = subprocess.run(
            ["/usr/bin/python3", "-c", "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)"],
            input=text,
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
    except OSError as exc:
        pytest.fail(f"no YAML parser: install PyYAML or Debian's python3-yaml ({exc})", pytrace=False)
    if done.returncode != 0:
        pytest.fail(f"no YAML parser: install PyYAML or Debian's python3-yaml\n{done.stderr}", pytrace=False)
    return json.loads(done.stdout)


@cache
def compose() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(COMPOSE.read_text())
    return data


@cache
def rules() -> list[dict[str, Any]]:
    data = load_yaml(RULES.read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def alert_names() -> list[str]:
    return [rule["alert"] for rule in rules() if "alert" in rule]


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title, expr) of every query of every panel."""
    result = []
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            result.append((panel["title"], target["expr"]))
    return result


def runnable(expr: str) -> str:
    """A panel's expr with Grafana's variables replaced, for Prometheus' HTTP API."""
    for name in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
        expr = expr.replace(name, GRAFANA_VARIABLES[name])
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
    return expr


def exported_names() -> set[str]:
    """Names of the series gc-daemon's /metrics serves (sample names, *_created left out)."""
    from gc_daemon.metrics import Metrics

    names = {sample.name for family in Metrics().registry.collect() for sample in family.samples}
    return {name for name in names if not name.endswith("_created")}


def names_in(expr: str) -> set[str]:
    """Metric names in a PromQL expression: gc_daemon_* identifiers, and the known Prometheus series."""
    names = set(re.findall(r"\bgc_daemon_[a-z0-9_]+\b", expr))
    names |= {name for name in PROMETHEUS_SERIES if re.search(rf"\b{name}\{{", expr)}
    return names


def test_every_metric_in_rules_and_dashboard_is_exported() -> None:
    exported = exported_names() | PROMETHEUS_SERIES
    used: dict[str, set[str]] = {}
    for rule in rules():
        used.setdefault(f"rule {rule.get('alert') or rule.get('record')}", set()).update(names_in(rule["expr"]))
    for title, expr in dashboard_exprs():
        used.setdefault(f"panel {title!r}", set()).update(names_in(runnable(expr)))
    for where, names in used.items():
        assert names, f"{where} uses no gc-daemon metric"
        missing = names - exported
        assert not missing, f"{where} uses {sorted(missing)}, not exported by gc_daemon.metrics.Metrics"


def test_rules_are_the_documented_alerts() -> None:
    assert {
        "GcDaemonCollectFailed",
        "GcDaemonNoSuccess8d",
        "GcDaemonRegistryDown",
        "GcDaemonGuardTripped",
        "GcDaemonReclaimedNothing",
    } <= set(alert_names())
    for rule in rules():
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
    tested = (DEPLOY / "prometheus" / "rules_test.yml").read_text()
    for name in alert_names():
        assert f"alertname: {name}" in tested, f"{name} has no promtool test"


def test_dashboard_panels() -> None:
    board = dashboard()
    assert board["uid"] == "gc-daemon"
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    exprs = " ".join(expr for _title, expr in dashboard_exprs())
    for name in (
        "gc_daemon_runs_total",
        "gc_daemon_last_success_timestamp_seconds",
        "gc_daemon_last_run_bytes_reclaimed",
        "gc_daemon_bytes_reclaimed_total",
        "gc_daemon_layers_deleted_total",
        "gc_daemon_blobs_deleted_total",
        "gc_daemon_tags_deleted_total",
        "gc_daemon_run_duration_seconds",
        "gc_daemon_gc_duration_seconds",
        "gc_daemon_registry_downtime_seconds",
        "gc_daemon_registry_up",
        "gc_daemon_guard_tripped_total",
        "gc_daemon_next_run_timestamp_seconds",
    ):
        assert name in exprs, f"no panel shows {name}"
    tags_panels = [p for p in board["panels"] if "gc_daemon_tags_deleted_total" in json.dumps(p.get("targets", []))]
    assert all("repository" in p["description"] for p in tags_panels), "say that tags have no repository label"


def readme_snippet() -> dict[str, Any]:
    text = README.read_text()
    assert SNIPPET_MARKER in text, f"README.md lacks the marker {SNIPPET_MARKER}"
    after = text.split(SNIPPET_MARKER, 1)[1]
    match = re.match(r"\s*```ya?ml\n(.*?)```", after, re.S)
    assert match, "the marker must be followed by a ```yaml block"
    data: dict[str, Any] = load_yaml(match.group(1))
    return data


def test_readme_sidecar_snippet_is_the_compose_service() -> None:
    """The README's snippet: the compose file's gc-daemon service, verbatim, and its named volumes."""
    snippet = readme_snippet()
    assert set(snippet) == {"services", "volumes"} and list(snippet["services"]) == ["gc-daemon"]
    assert snippet["services"]["gc-daemon"] == compose()["services"]["gc-daemon"]
    named = {v.split(":")[0] for v in snippet["services"]["gc-daemon"]["volumes"] if not v.startswith((".", "/"))}
    assert set(snippet["volumes"]) == named and named <= set(compose()["volumes"])


def test_compose_wires_gc_daemon_to_the_registry() -> None:
    services = compose()["services"]
    registry, daemon = services["registry"], services["gc-daemon"]
    assert registry["image"] == "registry:2"
    assert registry["environment"]["REGISTRY_STORAGE_DELETE_ENABLED"] == "true"
    assert daemon["restart"] == "unless-stopped"
    assert "/var/run/docker.sock:/var/run/docker.sock" in daemon["volumes"]
    assert "./retention.toml:/etc/gc-daemon/retention.toml:ro" in daemon["volumes"]

    import tomllib

    config = tomllib.loads((DEPLOY / "retention.toml").read_text())
    assert config["gc"]["container"] == registry["container_name"]
    assert config["registry"]["url"] == "http://registry:5000"
    assert config["metrics"]["port"] == 9100
    scrape = load_yaml((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert scrape["scrape_configs"][0]["static_configs"][0]["targets"] == ["gc-daemon:9100"]


def test_deploy_config_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    from gc_daemon.config import load_settings

    for name in list(os.environ):
        if name.startswith("GC_DAEMON_"):
            monkeypatch.delenv(name)
    settings = load_settings(str(DEPLOY / "retention.toml"))
    assert settings.gc.container == "registry" and settings.retention.rules


def test_image_files() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=python:3.12-slim" in dockerfile
    assert "pip install --no-index --find-links /wheels gc-daemon" in dockerfile
    assert re.search(r"^USER gc-daemon$", dockerfile, re.M)
    assert re.search(r'^CMD \["gc-daemon", "run"\]$', dockerfile, re.M)
    assert 'VOLUME ["/var/lib/gc-daemon"]' in dockerfile
    assert "GC_DAEMON_CONFIG=/etc/gc-daemon/retention.toml" in dockerfile
    assert "HEALTHCHECK" in dockerfile
