"""deploy/: the alert rules under promtool, the compose file, and the whole stack end to end.

The end-to-end test builds the gc-daemon image when it is older than its sources (scripts/build-base-image.sh,
scripts/build-image.sh; a few minutes from nothing), brings up deploy/docker-compose.yml's registry and
gc-daemon through a generated override (host networking, 127.0.0.1 only, the test registry image), runs
`gc-daemon run-now` in the container, lets the daemon's own scheduled run fire, and has a real Prometheus
(Debian's binary, on the host) scrape the daemon and load deploy/prometheus/rules.yml. Then every panel
query of the Grafana dashboard must return data and every alert rule must evaluate cleanly.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest

from tests.support.images import Pusher, pull_whole
from tests.support.registry import REGISTRY_IMAGE, free_port
from tests.unit.test_deploy_files import alert_names, dashboard_exprs, load_yaml, runnable

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
DOCKER = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker"
IMAGE = os.environ.get("GC_DAEMON_IMAGE", "gc-daemon:dev")
BUILD_TIMEOUT_S = 900
# What the image is built from: when any is newer than the image, it is rebuilt.
IMAGE_SOURCES = [
    ROOT / "pyproject.toml",
    ROOT / "Dockerfile",
    ROOT / ".dockerignore",
    ROOT / "retention.example.toml",
    ROOT / "scripts" / "build-image.sh",
    *sorted((ROOT / "gc_daemon").rglob("*.py")),
    *sorted((DEPLOY / "image").iterdir()),
]
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
SCHEDULED_SUCCESS = 'gc_daemon_runs_total{result="success",trigger="schedule"}'


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed; run scripts/setup-env.sh", pytrace=False)
    return path


def run(argv: list[str], *, timeout: float = 120, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)


def test_promtool_checks_and_tests_the_rules() -> None:
    promtool = tool("promtool")
    done = run([promtool, "check", "rules", str(DEPLOY / "prometheus" / "rules.yml")])
    assert done.returncode == 0, done.stdout + done.stderr
    done = run([promtool, "test", "rules", str(DEPLOY / "prometheus" / "rules_test.yml")])
    assert done.returncode == 0 and "SUCCESS" in done.stdout, done.stdout + done.stderr
    done = run([promtool, "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")])
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_file_validates() -> None:
    compose = tool("docker-compose")
    env = {**os.environ, "DOCKER_GID": "999"}
    done = run([compose, "-f", str(COMPOSE), "config", "-q"], env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    done = run([compose, "-f", str(COMPOSE), "config", "--services"], env=env)
    assert done.stdout.split() == ["registry", "gc-daemon", "prometheus", "grafana"], done.stdout
    # Without the socket's group the non-root daemon could not reach the engine: refused, with the hint.
    env.pop("DOCKER_GID")
    done = run([compose, "-f", str(COMPOSE), "config", "-q"], env=env)
    assert done.returncode != 0 and "stat -c %g /var/run/docker.sock" in done.stderr, done.stderr


# ---------------------------------------------------------------- end to end


def ensure_image(client: docker.DockerClient) -> None:
    """Build IMAGE unless it is newer than every source it is built from."""
    newest = max(path.stat().st_mtime for path in IMAGE_SOURCES if path.is_file())
    with contextlib.suppress(docker.errors.ImageNotFound):
        created = client.images.get(IMAGE).attrs["Created"]
        built = datetime.fromisoformat(created[:26].rstrip("Z")).replace(tzinfo=UTC).timestamp()
        if built > newest:
            return
    env = {**os.environ, "IMAGE": IMAGE, "DOCKER": DOCKER}
    for script in ("build-base-image.sh", "build-image.sh"):
        done = run(["sh", str(ROOT / "scripts" / script)], timeout=BUILD_TIMEOUT_S, env=env, cwd=ROOT)
        assert done.returncode == 0, f"scripts/{script} failed:\n{done.stdout}\n{done.stderr}"


class Stack:
    """One compose project: deploy/docker-compose.yml with a generated host-network override.

    Compose v1 refuses published ports with host networking and an override cannot remove them, so the
    file run is `docker-compose config` of the two merged (paths made absolute), without `ports`.
    """

    def __init__(self, tmp_path: Path, docker_gid: int) -> None:
        self.project = f"gcd-deploy-{secrets.token_hex(4)}"
        ports: set[int] = set()
        while len(ports) < 3:
            ports.add(free_port())
        self.registry_port, self.metrics_port, self.prometheus_port = sorted(ports)
        self.registry_url = f"http://127.0.0.1:{self.registry_port}"
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        self.registry_container = f"{self.project}-registry"
        self.override = tmp_path / "override.yml"
        self.effective = tmp_path / "compose.effective.yml"
        labels = {"gc-daemon-test": "1"}
        override = {  # JSON is YAML
            "services": {
                "registry": {
                    "image": REGISTRY_IMAGE,
                    "container_name": self.registry_container,
                    "network_mode": "host",
                    "environment": {"REGISTRY_HTTP_ADDR": f"127.0.0.1:{self.registry_port}"},
                    "labels": labels,
                },
                "gc-daemon": {
                    "image": IMAGE,
                    "network_mode": "host",
                    "environment": {
                        "GC_DAEMON_REGISTRY__URL": self.registry_url,
                        "GC_DAEMON_GC__CONTAINER": self.registry_container,
                        "GC_DAEMON_METRICS__ADDRESS": "127.0.0.1",
                        "GC_DAEMON_METRICS__PORT": str(self.metrics_port),
                        "GC_DAEMON_SCHEDULE__WEEKDAY": "${GCD_TEST_WEEKDAY}",
                        "GC_DAEMON_SCHEDULE__TIME": "${GCD_TEST_TIME}",
                    },
                    "labels": labels,
                },
                # Not started here (no images for them); host networking all the same.
                "prometheus": {"network_mode": "host"},
                "grafana": {"network_mode": "host"},
            }
        }
        self.override.write_text(json.dumps(override, indent=2))
        self.env = {
            **os.environ,
            "DOCKER_GID": str(docker_gid),
            "GC_DAEMON_IMAGE": IMAGE,
            "COMPOSE_INTERACTIVE_NO_CLI": "1",  # exec through the API, not whichever docker CLI is on PATH
        }
        self.schedule(datetime.now(UTC) + timedelta(days=3), "03:00")

    def schedule(self, day: datetime, at: str) -> None:
        """Set the daemon's weekly schedule (takes effect at the next `up`) and render the effective file."""
        self.env["GCD_TEST_WEEKDAY"] = WEEKDAYS[day.weekday()]
        self.env["GCD_TEST_TIME"] = at
        argv = [tool("docker-compose"), "-f", str(COMPOSE), "-f", str(self.override), "config"]
        done = run(argv, env=self.env, cwd=ROOT)
        assert done.returncode == 0, done.stderr
        config = load_yaml(done.stdout)
        for name, service in config["services"].items():
            assert service.get("network_mode") == "host", f"{name} is not on host networking"
            service.pop("ports", None)
        self.effective.write_text(json.dumps(config, indent=2))

    def compose(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        argv = [tool("docker-compose"), "-p", self.project, "-f", str(self.effective), *args]
        return run(argv, timeout=timeout, env=self.env, cwd=ROOT)

    def check(self, *args: str, timeout: float = 180) -> str:
        done = self.compose(*args, timeout=timeout)
        assert done.returncode == 0, (
            f"docker-compose {' '.join(args)} -> {done.returncode}\n{done.stdout}\n{done.stderr}"
        )
        return done.stdout

    def logs(self) -> str:
        return self.compose("logs", "--no-color", "--tail", "200").stdout


def wait_for(what: str, check: Any, timeout: float, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (httpx.HTTPError, OSError) as exc:
            last = repr(exc)
        else:
            if last and not isinstance(last, str):
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last}")


def metric_value(body: str, series: str) -> float | None:
    for line in body.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return None


@contextlib.contextmanager
def prometheus(tmp_path: Path, port: int, target: str) -> Iterator[str]:
    """Debian's prometheus on 127.0.0.1:port, scraping `target` every second, with deploy's rules."""
    config = tmp_path / "prometheus.yml"
    config.write_text(
        json.dumps(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(DEPLOY / "prometheus" / "rules.yml")],
                "scrape_configs": [{"job_name": "gc-daemon", "static_configs": [{"targets": [target]}]}],
            }
        )
    )
    log = (tmp_path / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [
            tool("prometheus"),
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()
            return httpx.get(f"{url}/-/ready", timeout=2).status_code == 200

        wait_for("prometheus to be ready", ready, 30)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def query(prom: str, expr: str) -> list[dict[str, Any]]:
    resp = httpx.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=10)
    body = resp.json()
    assert resp.status_code == 200 and body["status"] == "success", f"{expr}: {resp.status_code} {resp.text}"
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def json_document(out: str) -> dict[str, Any]:
    """The JSON document in `docker-compose exec -T` output (compose v1 mixes the command's stderr in)."""
    start = 0 if out.startswith("{") else out.find("\n{") + 1
    assert start > 0 or out.startswith("{"), f"no JSON document in:\n{out}"
    document, _end = json.JSONDecoder().raw_decode(out[start:])
    assert isinstance(document, dict), out
    return document


def push_builds(pusher: Pusher, first: int, last: int) -> None:
    for n in range(first, last + 1):
        pusher.push_image("team/app", f"develop-{n}", created=f"2026-01-01T00:{n:02d}:00Z")


def test_compose_stack_end_to_end(docker_client: docker.DockerClient, tmp_path: Path) -> None:
    tool("docker-compose")
    tool("prometheus")
    ensure_image(docker_client)
    stack = Stack(tmp_path, os.stat("/var/run/docker.sock").st_gid)
    try:
        stack.check("up", "-d", "registry", "gc-daemon")
        wait_for("the registry", lambda: httpx.get(f"{stack.registry_url}/v2/", timeout=2).status_code == 200, 30)
        wait_for("the daemon's metrics", lambda: httpx.get(stack.metrics_url, timeout=2).status_code == 200, 60)

        with prometheus(tmp_path, stack.prometheus_port, f"127.0.0.1:{stack.metrics_port}") as prom:
            # Two releases and 13 CI builds; deploy/retention.toml keeps releases and the 10 newest builds.
            with Pusher(stack.registry_url) as pusher:
                pusher.push_image("team/app", "v1.0.0", created="2025-12-01T00:00:00Z")
                pusher.push_image("team/app", "latest", created="2025-12-02T00:00:00Z")
                push_builds(pusher, 1, 13)

            # By hand, inside the container: as the image's non-root user, through the socket's group.
            out = stack.check("exec", "-T", "gc-daemon", "gc-daemon", "run-now", "--json", timeout=300)
            report = json_document(out)
            assert report["result"] == "success", out
            assert report["tags_deleted"] == 3 and report["bytes_reclaimed"] > 0, out

            # Three more builds, then the daemon's own weekly run, scheduled a minute ahead (recreates it).
            with Pusher(stack.registry_url) as pusher:
                push_builds(pusher, 14, 16)
            at = datetime.now(UTC) + timedelta(seconds=30)
            at = at.replace(second=0, microsecond=0) + timedelta(minutes=1)
            stack.schedule(at, at.strftime("%H:%M"))
            stack.check("up", "-d", "--no-deps", "gc-daemon")

            def scheduled_run_done() -> bool:
                body = httpx.get(stack.metrics_url, timeout=2).text
                failed = metric_value(body, 'gc_daemon_runs_total{result="failure",trigger="schedule"}')
                assert not failed, f"the scheduled run failed:\n{stack.logs()}"
                return (metric_value(body, SCHEDULED_SUCCESS) or 0) >= 1

            wait_for("the scheduled run", scheduled_run_done, (at - datetime.now(UTC)).total_seconds() + 90, 1)
            body = httpx.get(stack.metrics_url, timeout=2).text
            assert metric_value(body, "gc_daemon_tags_deleted_total") == 3, body
            assert (metric_value(body, "gc_daemon_bytes_reclaimed_total") or 0) > 0, body
            assert metric_value(body, "gc_daemon_registry_up") == 1, body

            with Pusher(stack.registry_url) as pusher:
                kept = pusher.tags("team/app")
            assert kept == sorted(["v1.0.0", "latest", *(f"develop-{n}" for n in range(7, 17))])
            for tag in kept:
                pull_whole(stack.registry_url, "team/app", tag)

            # Prometheus has scraped the run: every dashboard query returns data.
            wait_for("prometheus to scrape the run", lambda: query(prom, f"{SCHEDULED_SUCCESS} >= 1"), 30)
            time.sleep(3)
            empty = [(title, runnable(expr)) for title, expr in dashboard_exprs() if not query(prom, runnable(expr))]
            assert not empty, f"dashboard queries without data: {empty}"

            # Every alert rule is loaded and evaluates cleanly; none fires on a healthy stack.
            def rules_evaluated() -> dict[str, dict[str, Any]] | str:
                groups = httpx.get(f"{prom}/api/v1/rules", timeout=5).json()["data"]["groups"]
                loaded = {
                    rule["name"]: rule for group in groups for rule in group["rules"] if rule["type"] == "alerting"
                }
                if any(rule["health"] == "unknown" for rule in loaded.values()):
                    return f"not evaluated yet: {loaded}"
                return loaded

            loaded = wait_for("the rules to be evaluated", rules_evaluated, 30)
            assert sorted(loaded) == sorted(alert_names())
            for name, rule in loaded.items():
                assert rule["health"] == "ok", f"{name}: {rule.get('lastError')}"
            firing = [a for a in httpx.get(f"{prom}/api/v1/alerts", timeout=5).json()["data"]["alerts"]]
            assert not [a for a in firing if a["state"] == "firing"], firing

        # The image's HEALTHCHECK probes the endpoint on the configured address and port.
        container_id = stack.check("ps", "-q", "gc-daemon").strip()

        def healthy() -> bool | str:
            status: str = docker_client.api.inspect_container(container_id)["State"]["Health"]["Status"]
            return status == "healthy" or status

        wait_for("the container to be healthy", healthy, 60, 1)
        # gc.container is the compose registry container: it was restarted by both collects.
        registry = docker_client.containers.get(stack.registry_container)
        assert registry.labels.get("com.docker.compose.project") == stack.project
    except BaseException:
        print(stack.logs())
        raise
    finally:
        down = stack.compose("down", "-v", "--remove-orphans", "--timeout", "5")
        assert down.returncode == 0, down.stdout + down.stderr
        left = docker_client.containers.list(all=True, filters={"label": f"com.docker.compose.project={stack.project}"})
        assert not left, f"containers left behind: {[c.name for c in left]}"
