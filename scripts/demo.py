"""`make demo`: a real registry, real pushes, `gc-daemon plan`, `gc-daemon run-now`, the result.

Starts the distribution registry (the image scripts/setup-env.sh built) with host networking on
127.0.0.1:5055, storage in .demo/storage; pushes stable and unstable images through the V2 API;
shows the plan, runs one cycle, then prints what was kept, removed and reclaimed, and the metrics.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import docker  # noqa: E402

from tests.support.images import Pusher, pull_whole  # noqa: E402
from tests.support.registry import start_registry  # noqa: E402

DEMO = ROOT / ".demo"
NAME = "gc-daemon-demo-registry"
PORT = 5055
GC_DAEMON = str(ROOT / ".venv" / "bin" / "gc-daemon")

CONFIG = """\
[registry]
url = "http://127.0.0.1:{port}"

[gc]
executor = "docker"
container = "{name}"

[metrics]
port = 0

[state]
dir = "{state}"

[control]
socket = "{socket}"

[[retention.rules]]
repositories = ["demo/*"]
stable = ['v?\\d+\\.\\d+\\.\\d+', "latest"]
keep_unstable = 3
"""


def banner(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def clean(client: docker.DockerClient) -> None:
    for container in client.containers.list(all=True, filters={"name": NAME}):
        container.remove(force=True)
    if DEMO.exists():
        shutil.rmtree(DEMO)


def push_images(url: str) -> None:
    with Pusher(url) as p:
        base = Pusher.random_layer(256 * 1024)  # a base layer every image shares
        for i, version in enumerate(["1.0.0", "1.1.0", "1.2.0"]):
            image = p.push_image(
                "demo/api",
                version,
                layers=[base, Pusher.random_layer(512 * 1024)],
                created=f"2026-0{i + 1}-15T10:00:00Z",
            )
        p.tag("demo/api", "latest", image)
        # CI builds pushed in an order different from their build time.
        builds = {}
        for n, day in zip(range(101, 109), [3, 1, 8, 5, 2, 7, 4, 6], strict=True):
            builds[n] = p.push_image(
                "demo/api",
                f"develop-{n}",
                layers=[base, Pusher.random_layer(1024 * 1024)],
                created=f"2026-11-{day:02d}T12:00:00Z",
            )
        # An old CI build promoted to a release: develop-102 goes, 1.3.0 (same digest) stays whole.
        p.tag("demo/api", "1.3.0", builds[102])
        # cosign-style signatures: one of a kept release, one of a build that goes.
        for signed in (image, builds[104]):
            p.push_image("demo/api", f"sha256-{signed.digest[7:]}.sig", layers=[Pusher.random_layer(512)], created=None)
        amd = p.push_image("demo/web", None, layers=[Pusher.random_layer(300 * 1024)], platform=("linux", "amd64"))
        arm = p.push_image("demo/web", None, layers=[Pusher.random_layer(300 * 1024)], platform=("linux", "arm64"))
        p.push_index("demo/web", "2.0.0", [amd, arm])
        for n in range(1, 6):
            p.push_image(
                "demo/web",
                f"feature-x-{n}",
                layers=[Pusher.random_layer(400 * 1024)],
                created=f"2026-10-{n:02d}T09:00:00Z",
            )
        p.push_image("other/tool", "nightly", layers=[Pusher.random_layer(100 * 1024)])


def store_bytes(storage: Path) -> tuple[int, int]:
    blobs = list((storage / "docker/registry/v2/blobs").rglob("data"))
    return len(blobs), sum(b.stat().st_size for b in blobs)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clean", action="store_true", help="remove the demo registry and .demo/")
    args = parser.parse_args()
    client = docker.DockerClient.from_env(version="auto")
    clean(client)
    if args.clean:
        return 0
    DEMO.mkdir()
    banner(f"Starting a real distribution registry on 127.0.0.1:{PORT} (container {NAME})")
    registry = start_registry(client, DEMO / "storage", delete_enabled=True, name=NAME, port=PORT)
    banner("Pushing stable and unstable images through the V2 API")
    push_images(registry.url)
    config = DEMO / "retention.toml"
    config.write_text(CONFIG.format(port=PORT, name=NAME, state=DEMO / "state", socket=DEMO / "control.sock"))
    print(f"config: {config}\n{config.read_text()}")
    before = store_bytes(DEMO / "storage")

    banner("gc-daemon plan")
    subprocess.run([GC_DAEMON, "--config", str(config), "--log-level", "WARNING", "plan"], check=True)

    banner("gc-daemon run-now")
    textfile = DEMO / "metrics.prom"
    run = subprocess.run([GC_DAEMON, "--config", str(config), "run-now", "--textfile", str(textfile)], check=False)

    banner("What is left, pulled whole as a client would (manifest, config, every layer)")
    with Pusher(registry.url) as p:
        for repo in ("demo/api", "demo/web", "other/tool"):
            tags = p.tags(repo)
            for tag in tags:
                pull_whole(registry.url, repo, tag)
            print(f"{repo}: {', '.join(tags)}  (all pull whole)")
    after = store_bytes(DEMO / "storage")
    print(f"blob store: {before[0]} blobs, {before[1]} bytes -> {after[0]} blobs, {after[1]} bytes")
    print(f"measured shrink: {before[1] - after[1]} bytes")

    banner(f"Metrics of this run ({textfile})")
    print("\n".join(ln for ln in textfile.read_text().splitlines() if not ln.startswith("#")))
    print(f"\nThe demo registry keeps running: {registry.url} (stop it with `make demo-clean`).")
    return run.returncode


if __name__ == "__main__":
    sys.exit(main())
