"""Run the installed `gc-daemon` console script against a real registry, as an operator does."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support.registry import RegistryContainer

GC_DAEMON = str(Path(sys.executable).parent / "gc-daemon")

RULES = """
[[retention.rules]]
repositories = ["team/*"]
stable = ['v?\\d+\\.\\d+\\.\\d+', "latest"]
keep_unstable = {keep}
"""


def write_config(
    tmp_path: Path,
    reg: RegistryContainer,
    *,
    url: str | None = None,
    keep: int = 3,
    gc: str = "",
    extra: str = "",
) -> Path:
    path = tmp_path / "retention.toml"
    path.write_text(
        f'[registry]\nurl = "{url or reg.url}"\ntimeout_s = 5\n\n'
        f'[gc]\ncontainer = "{reg.name}"\n{gc}\n\n'
        f"[metrics]\nport = 0\n\n"
        f'[state]\ndir = "{tmp_path / "state"}"\n\n'
        f'[control]\nsocket = "{tmp_path / "control.sock"}"\n'
        f"{extra}\n" + RULES.format(keep=keep)
    )
    return path


def run(config: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [GC_DAEMON, "--config", str(config), *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def run_json(config: Path, *args: str) -> tuple[int, dict[str, Any], str]:
    done = run(config, *args, "--json")
    try:
        data = json.loads(done.stdout)
    except ValueError as exc:
        raise AssertionError(f"stdout is not one JSON document:\n{done.stdout}\nstderr:\n{done.stderr}") from exc
    return done.returncode, data, done.stderr
