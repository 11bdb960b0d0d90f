"""`make bench`: how fast gc-daemon reads a busy registry, against the floor of the V2 API.

Seeds a real registry 2.8 (the test image, host networking, 127.0.0.1 on a free port) with
50 repositories x 40 tags (``--large``: 200 x 100) through the V2 API, concurrently, every image
with its own config and two small layers shared within its repository. Then, in one run, each phase
in its own process (so each peak RSS is its own):

- raw baseline: an httpx.AsyncClient doing only the unavoidable requests (catalog, tags/list,
  GET manifest and GET config per tag), ``--concurrency`` in flight;
- cold `plan` (empty state dir), warm `plan` (same state dir again), `plan` with the storage
  inventory (``storage_path`` = the registry's storage, fresh state dir, then again warm);
- the removal phase of `run-now` (gc_daemon.apply.apply) for the plan of ``keep_unstable = 5``, vs
  deleting the same digests one by one (DELETE by digest, one request at a time) on an identical copy
  of the registry (same storage copied before any removal, second container), and, for scale, the same
  DELETEs ``--concurrency`` at a time with nothing else (no re-check, no audit) on a third copy: the
  ceiling any client reaches on this machine;
- peak RSS of a plan over a synthetic inventory of 100,000 tags (1,000 x 100).

Prints every time, the requests issued (counted on the wire by a counting transport), the CPU seconds
the registry process and the client process spent, ratios to the baseline and the targets. Every
container and directory it made is removed at the end. Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

MANIFEST_ACCEPT = ", ".join(
    (
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
    )
)
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
KEEP = 5
SEED_CONCURRENCY = 32


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def peak_rss_mb() -> float:
    """This process's own peak RSS. Linux's ru_maxrss carries the parent's high-water mark over fork and exec
    (every phase would report at least the seeding parent's RSS), so VmHWM of this process's memory is read."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# -- seeding ---------------------------------------------------------------------------------------


async def seed(url: str, repos: int, tags: int) -> int:
    """Push repos x tags images; returns the requests issued."""
    limits = httpx.Limits(max_connections=SEED_CONCURRENCY, max_keepalive_connections=SEED_CONCURRENCY)
    sem = asyncio.Semaphore(SEED_CONCURRENCY)
    issued = 0
    base_time = datetime(2026, 1, 1, tzinfo=UTC)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as http:

        async def call(method: str, path: str, **kw: Any) -> httpx.Response:
            nonlocal issued
            async with sem:
                for attempt in range(5):
                    issued += 1
                    try:
                        resp = await http.request(method, path, **kw)
                    except httpx.TransportError:
                        if attempt == 4:
                            raise
                        await asyncio.sleep(0.2 * (attempt + 1))
                        continue
                    if resp.status_code < 500:
                        return resp
                    await asyncio.sleep(0.2 * (attempt + 1))
                return resp

        async def blob(repo: str, data: bytes) -> str:
            digest = digest_of(data)
            started = await call("POST", f"/v2/{repo}/blobs/uploads/")
            if started.status_code != 202:
                raise RuntimeError(f"POST upload {repo}: {started.status_code} {started.text[:200]}")
            location = httpx.URL(url + "/").join(started.headers["Location"]).copy_merge_params({"digest": digest})
            done = await call("PUT", str(location), content=data, headers={"Content-Type": "application/octet-stream"})
            if done.status_code != 201:
                raise RuntimeError(f"PUT blob {repo}: {done.status_code} {done.text[:200]}")
            return digest

        async def image(repo: str, n: int, layers: list[tuple[str, int]]) -> None:
            created = (base_time + timedelta(hours=n)).isoformat().replace("+00:00", "Z")
            config = json.dumps(
                {
                    "architecture": "amd64",
                    "os": "linux",
                    "created": created,
                    "config": {"Labels": {"bench": f"{repo}:{n}"}},
                    "rootfs": {"type": "layers", "diff_ids": [d for d, _ in layers]},
                },
                sort_keys=True,
            ).encode()
            config_digest = await blob(repo, config)
            manifest = json.dumps(
                {
                    "schemaVersion": 2,
                    "mediaType": DOCKER_MANIFEST,
                    "config": {"mediaType": DOCKER_CONFIG, "size": len(config), "digest": config_digest},
                    "layers": [{"mediaType": DOCKER_LAYER, "size": s, "digest": d} for d, s in layers],
                },
                indent=3,
            ).encode()
            headers = {"Content-Type": DOCKER_MANIFEST}
            resp = await call("PUT", f"/v2/{repo}/manifests/build-{n:04d}", content=manifest, headers=headers)
            if resp.status_code != 201:
                raise RuntimeError(f"PUT manifest {repo}: {resp.status_code} {resp.text[:200]}")

        async def repository(r: int) -> None:
            repo = f"team/app-{r:03d}"
            shared = [os.urandom(512), os.urandom(1024)]
            layers = [(await blob(repo, data), len(data)) for data in shared]
            await asyncio.gather(*(image(repo, n, layers) for n in range(tags)))

        await asyncio.gather(*(repository(r) for r in range(repos)))
    return issued


# -- phases (each in its own process) --------------------------------------------------------------


def process_cpu_s(pid: int | None) -> float:
    """CPU seconds (user + system) process ``pid`` has used, read from /proc on this host (0 for None)."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Stopwatch:
    """Wall time, this process's CPU and the registry's CPU over the timed section of a phase only."""

    def __init__(self, p: dict[str, Any]) -> None:
        self.pid: int | None = p.get("registry_pid")
        self.seconds = self.client_cpu_s = self.registry_cpu_s = 0.0

    def __enter__(self) -> Stopwatch:
        self._wall, self._cpu, self._reg = time.perf_counter(), os.times(), process_cpu_s(self.pid)
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._wall
        now = os.times()
        self.client_cpu_s = now.user - self._cpu.user + now.system - self._cpu.system
        self.registry_cpu_s = process_cpu_s(self.pid) - self._reg

    def figures(self) -> dict[str, float]:
        return {"seconds": self.seconds, "client_cpu_s": self.client_cpu_s, "registry_cpu_s": self.registry_cpu_s}


class CountingTransport(httpx.BaseTransport):
    """Counts every request on the wire, by method and kind (manifest, blob, tags, catalog, base)."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        kind = next((k for k in ("manifests", "blobs", "tags", "_catalog") if f"/{k}/" in path or path.endswith(k)), "")
        with self._lock:
            self.counts[f"{request.method} {kind or 'base'}"] += 1
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


def _client(url: str, concurrency: int) -> tuple[Any, CountingTransport]:
    from gc_daemon.registry.client import RegistryClient

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    transport = CountingTransport(httpx.HTTPTransport(limits=limits))
    return RegistryClient(url, concurrency=concurrency, transport=transport), transport


def _settings(p: dict[str, Any]) -> Any:
    from gc_daemon.config import Settings

    registry: dict[str, Any] = {"url": p["url"], "concurrency": p["concurrency"]}
    if p.get("storage"):
        registry["storage_path"] = p["storage"]
    return Settings(
        registry=registry,
        gc={"enabled": False},
        metrics={"port": 0},
        state={"dir": p["state"]},
        retention={
            "rules": [{"repositories": ["**"], "keep_unstable": KEEP}],
            "max_delete_ratio": 1.0,
        },
    )


def phase_baseline(p: dict[str, Any]) -> dict[str, Any]:
    counts: Counter[str] = Counter()

    async def run() -> None:
        limits = httpx.Limits(max_connections=p["concurrency"], max_keepalive_connections=p["concurrency"])
        sem = asyncio.Semaphore(p["concurrency"])
        async with httpx.AsyncClient(base_url=p["url"], limits=limits, timeout=60) as http:

            async def get(path: str, kind: str, headers: dict[str, str] | None = None) -> httpx.Response:
                async with sem:
                    counts[f"GET {kind}"] += 1
                    resp = await http.get(path, headers=headers)
                    resp.raise_for_status()
                    return resp

            async def tag(repo: str, name: str) -> None:
                manifest = (await get(f"/v2/{repo}/manifests/{name}", "manifests", {"Accept": MANIFEST_ACCEPT})).json()
                await get(f"/v2/{repo}/blobs/{manifest['config']['digest']}", "blobs")

            async def repository(repo: str) -> None:
                tags = (await get(f"/v2/{repo}/tags/list", "tags")).json()["tags"] or []
                await asyncio.gather(*(tag(repo, t) for t in tags))

            repos = (await get("/v2/_catalog?n=1000", "_catalog")).json()["repositories"]
            await asyncio.gather(*(repository(r) for r in repos))

    with Stopwatch(p) as watch:
        asyncio.run(run())
    return {**watch.figures(), "requests": dict(counts)}


def phase_plan(p: dict[str, Any]) -> dict[str, Any]:
    from gc_daemon.cycle import compute_plan
    from gc_daemon.state import State

    settings = _settings(p)
    client, transport = _client(p["url"], p["concurrency"])
    with Stopwatch(p) as watch:
        inventory, plan = compute_plan(settings, client, datetime.now(UTC), state=State(Path(p["state"])))
    client.close()
    tags = sum(len(r.tags) for r in inventory.repositories)
    return {
        **watch.figures(),
        "requests": dict(transport.counts),
        "tags": tags,
        "deletions": len(plan.deletions),
        "errors": sum(1 for r in inventory.repositories if r.error),
    }


def phase_removal(p: dict[str, Any]) -> dict[str, Any]:
    from gc_daemon.accounting import Accounting
    from gc_daemon.apply import apply
    from gc_daemon.cycle import compute_plan
    from gc_daemon.model import RunReport
    from gc_daemon.state import State

    settings = _settings(p)
    client, transport = _client(p["url"], p["concurrency"])
    state = State(Path(p["state"]))
    inventory, plan = compute_plan(settings, client, datetime.now(UTC), state=state)
    Path(p["out"]).write_text(json.dumps([[d.repository, d.digest] for d in plan.deletions]))
    transport.counts.clear()
    report = RunReport(run_id="bench", trigger="bench", dry_run=False, started_at=datetime.now(UTC))
    accounting = Accounting.from_inventory(inventory)
    with Stopwatch(p) as watch:
        apply(plan, client, report, state, accounting, p["concurrency"])
    client.close()
    return {
        **watch.figures(),
        "requests": dict(transport.counts),
        "deletions": len(plan.deletions),
        "removed": report.manifests_deleted,
        "skipped": len(report.skipped_deletions),
    }


def phase_one_by_one(p: dict[str, Any]) -> dict[str, Any]:
    deletions = json.loads(Path(p["deletions"]).read_text())
    counts: Counter[str] = Counter()
    with httpx.Client(base_url=p["url"], timeout=60) as http, Stopwatch(p) as watch:
        for repo, digest in deletions:
            counts["DELETE manifests"] += 1
            resp = http.delete(f"/v2/{repo}/manifests/{digest}")
            if resp.status_code != 202:
                raise RuntimeError(f"DELETE {repo}@{digest}: {resp.status_code}")
    return {**watch.figures(), "requests": dict(counts), "removed": len(deletions)}


def phase_concurrent_deletes(p: dict[str, Any]) -> dict[str, Any]:
    """The ceiling: the same DELETEs, ``concurrency`` at a time, with nothing else (no re-check, no audit)."""
    from concurrent.futures import ThreadPoolExecutor

    deletions = json.loads(Path(p["deletions"]).read_text())
    limits = httpx.Limits(max_connections=p["concurrency"], max_keepalive_connections=p["concurrency"])
    with httpx.Client(base_url=p["url"], timeout=60, limits=limits) as http:

        def delete(item: list[str]) -> None:
            resp = http.delete(f"/v2/{item[0]}/manifests/{item[1]}")
            if resp.status_code != 202:
                raise RuntimeError(f"DELETE {item[0]}@{item[1]}: {resp.status_code}")

        with Stopwatch(p) as watch, ThreadPoolExecutor(max_workers=p["concurrency"]) as pool:
            list(pool.map(delete, deletions))
    return {**watch.figures(), "requests": {"DELETE manifests": len(deletions)}, "removed": len(deletions)}


def phase_memory(p: dict[str, Any]) -> dict[str, Any]:
    """A plan over a synthetic inventory shaped like the scanner's: 1,000 repositories x 100 tags."""
    from gc_daemon.model import Blob, BlobKind, Image, Inventory, Repository
    from gc_daemon.retention import RuleSpec, plan

    before = peak_rss_mb()
    now = datetime.now(UTC)
    with Stopwatch(p) as watch:
        repositories = []
        for r in range(p["repos"]):
            shared = tuple(
                Blob(sys.intern(digest_of(f"{r}-layer-{i}".encode())), 30_000_000, BlobKind.LAYER) for i in range(3)
            )
            tags: dict[str, str] = {}
            images: dict[str, Image] = {}
            for n in range(p["tags"]):
                digest = digest_of(f"{r}-manifest-{n}".encode())
                config = Blob(digest_of(f"{r}-config-{n}".encode()), 1500, BlobKind.CONFIG)
                own = Blob(digest_of(f"{r}-own-{n}".encode()), 5_000_000, BlobKind.LAYER)
                images[digest] = Image(
                    digest, DOCKER_MANIFEST, 900, now - timedelta(hours=n), "config created", (config, *shared, own)
                )
                tags[f"build-{n:04d}"] = digest
            repositories.append(Repository(f"team/app-{r:04d}", tags, images))
        inventory = Inventory(tuple(repositories), now)
        result = plan(inventory, [RuleSpec(("**",), (), KEEP)], now)
    return {
        **watch.figures(),
        "tags": sum(len(r.tags) for r in repositories),
        "decisions": len(result.decisions),
        "rss_before_mb": before,
    }


PHASES = {
    "baseline": phase_baseline,
    "plan": phase_plan,
    "removal": phase_removal,
    "one-by-one": phase_one_by_one,
    "concurrent-deletes": phase_concurrent_deletes,
    "memory": phase_memory,
}


def run_phase(name: str, params: dict[str, Any]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, "--phase", name, json.dumps(params)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"phase {name} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# -- the run ---------------------------------------------------------------------------------------


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        mem_kb = 0
    return (
        f"{cpu}, {os.cpu_count()} cores, {mem_kb / 1024 / 1024:.1f} GiB RAM, Linux {platform.release()}, "
        f"Python {platform.python_version()}, registry 2.8.2 (distribution) in Docker, filesystem storage"
    )


def total(requests: dict[str, int]) -> int:
    return sum(requests.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--large", action="store_true", help="200 repositories x 100 tags instead of 50 x 40")
    parser.add_argument("--repos", type=int, help="repositories to seed (overrides --large)")
    parser.add_argument("--tags", type=int, help="tags per repository (overrides --large)")
    parser.add_argument("--concurrency", type=int, default=None, help="requests in flight (default: the config's)")
    parser.add_argument("--keep", action="store_true", help="leave the containers and directories behind")
    parser.add_argument("--phase", nargs=2, metavar=("NAME", "PARAMS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.phase:
        name, params = args.phase
        result = PHASES[name](json.loads(params))
        result["peak_rss_mb"] = peak_rss_mb()
        print(json.dumps(result))
        return 0

    import docker

    from gc_daemon.config import RegistrySettings
    from tests.support.registry import start_registry

    repos = args.repos or (200 if args.large else 50)
    tags = args.tags or (100 if args.large else 40)
    concurrency = args.concurrency or RegistrySettings().concurrency
    work = Path(tempfile.mkdtemp(prefix="gc-daemon-bench-"))
    engine = docker.DockerClient.from_env(version="auto")
    started: list[Any] = []
    try:
        print(f"machine: {machine()}")
        reg = start_registry(engine, work / "storage-a", delete_enabled=True)
        started.append(reg)
        t0 = time.perf_counter()
        issued = asyncio.run(seed(reg.url, repos, tags))
        print(f"seeded {repos} repositories x {tags} tags = {repos * tags} tags at {reg.url} in "
              f"{time.perf_counter() - t0:.1f} s ({issued} requests)", flush=True)  # fmt: skip
        shutil.copytree(reg.storage_dir, work / "storage-b", symlinks=True)
        shutil.copytree(reg.storage_dir, work / "storage-c", symlinks=True)
        twin = start_registry(engine, work / "storage-b", delete_enabled=True)
        started.append(twin)
        triplet = start_registry(engine, work / "storage-c", delete_enabled=True)
        started.append(triplet)

        base = {"url": reg.url, "concurrency": concurrency}
        rows: list[tuple[str, dict[str, Any]]] = []

        def phase(label: str, name: str, params: dict[str, Any], on: Any = reg) -> dict[str, Any]:
            if "url" in params:
                params = {**params, "registry_pid": engine.api.inspect_container(on.container_id)["State"]["Pid"]}
            result = run_phase(name, params)
            rows.append((label, result))
            print(f"  {label}: {result['seconds']:.2f} s, {total(result.get('requests', {}))} requests", flush=True)
            return result

        run_phase("baseline", base)  # warm the registry's page cache: every timed phase starts alike
        baseline = phase("raw baseline (async httpx, unavoidable requests)", "baseline", base)
        cold = phase("plan, cold (empty state dir)", "plan", {**base, "state": str(work / "state")})
        warm = phase("plan, warm (digest cache)", "plan", {**base, "state": str(work / "state")})
        storage_params = {**base, "state": str(work / "state-storage"), "storage": str(reg.storage_dir)}
        storage = phase("plan, storage inventory (empty state dir)", "plan", storage_params)
        phase("plan, storage inventory + digest cache", "plan", storage_params)
        deletions = work / "deletions.json"
        removal = phase(
            f"run-now removal phase (keep_unstable = {KEEP})",
            "removal",
            {**base, "state": str(work / "state"), "out": str(deletions)},
        )
        one_by_one = phase(
            "DELETE by digest one by one (same digests, twin registry)",
            "one-by-one",
            {"url": twin.url, "deletions": str(deletions)},
            twin,
        )
        ceiling = phase(
            f"DELETE by digest, {concurrency} at a time, nothing else (same digests, third twin)",
            "concurrent-deletes",
            {"url": triplet.url, "deletions": str(deletions), "concurrency": concurrency},
            triplet,
        )
        memory = phase("plan over a synthetic inventory of 100,000 tags", "memory", {"repos": 1000, "tags": 100})

        print()
        print(f"{repos} repositories x {tags} tags ({repos * tags} tags), concurrency {concurrency}")
        print()
        print("| phase | time (s) | requests | x baseline | registry CPU (s) | client CPU (s) | peak RSS (MB) |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for label, result in rows:
            reqs = total(result.get("requests", {}))
            timed_scan = label.startswith(("plan,", "raw baseline"))
            ratio = f"{result['seconds'] / baseline['seconds']:.2f}" if timed_scan else ""
            reg_cpu = f"{result['registry_cpu_s']:.2f}" if result["registry_cpu_s"] else ""
            print(f"| {label} | {result['seconds']:.2f} | {reqs or ''} | {ratio} | {reg_cpu} | "
                  f"{result['client_cpu_s']:.2f} | {result['peak_rss_mb']:.0f} |")  # fmt: skip
        print()
        for label, result in rows:
            if result.get("requests"):
                detail = ", ".join(f"{k}: {v}" for k, v in sorted(result["requests"].items()))
                print(f"- {label}: {detail}")
        print()
        checks = [
            ("cold plan <= 1.3 x baseline", cold["seconds"] / baseline["seconds"], 1.3),
            ("warm plan <= 0.5 x cold", warm["seconds"] / cold["seconds"], 0.5),
            ("storage plan <= 0.1 x cold", storage["seconds"] / cold["seconds"], 0.1),
            ("one by one / removal >= 2", one_by_one["seconds"] / removal["seconds"], 2.0),
            ("(for scale) one by one / bare concurrent DELETEs", one_by_one["seconds"] / ceiling["seconds"], 0.0),
            ("peak RSS for 100k tags <= 150 MB", memory["peak_rss_mb"], 150.0),
        ]
        for what, value, target in checks:
            if not target:
                print(f"         {what}: {value:.2f}")
                continue
            ok = value >= target if ">=" in what else value <= target
            print(f"{'met    ' if ok else 'NOT met'}  {what}: {value:.2f}")
        print(f"\nremoval: {removal['removed']} manifests removed of {removal['deletions']} planned "
              f"({removal['skipped']} skipped); one by one: {one_by_one['removed']}")  # fmt: skip
        if cold["errors"] or warm["errors"] or storage["errors"]:
            print("WARNING: some repositories could not be read whole")
            return 1
        return 0
    finally:
        for reg in started:
            reg.stop()
        engine.close()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
