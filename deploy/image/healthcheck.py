"""HEALTHCHECK of the gc-daemon image: exit 0 when the daemon's /healthz answers.

It reads the metrics address and port the daemon itself uses (the config file and the
GC_DAEMON_METRICS__* environment, through gc-daemon's own loader), so a changed port or address
is followed. /healthz says the process is alive; /readyz (registry reachable) is for orchestrators
that route traffic, which nothing does to gc-daemon, so the container's health does not follow it.
"""

from __future__ import annotations

import sys
import urllib.request

PATH = "/healthz"


def main() -> int:
    from gc_daemon.config import load_settings

    try:
        metrics = load_settings().metrics
    except Exception as exc:  # a broken config is an unhealthy daemon
        print(f"healthcheck: config: {exc}", file=sys.stderr)
        return 1
    if metrics.port == 0:
        print("healthcheck: metrics.port = 0, no endpoint to probe", file=sys.stderr)
        return 0
    host = metrics.address
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    url = f"http://{host}:{metrics.port}{PATH}"
    try:
        with urllib.request.urlopen(url, timeout=4) as resp:
            return 0 if resp.status == 200 else 1
    except OSError as exc:
        print(f"healthcheck: {url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
