"""Config loading: sources, env overrides, rejected keys, and the CLI's exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gc_daemon.cli import main
from gc_daemon.config import load_settings
from gc_daemon.errors import ConfigError

GOOD = """
[registry]
url = "http://127.0.0.1:5000"
password = "s3cret-pw"
username = "ci"
[gc]
container = "registry"
[[retention.rules]]
repositories = ["caliopen/*"]
stable = ['v?\\d+\\.\\d+\\.\\d+', "latest"]
keep_unstable = 3
"""


@pytest.fixture
def cfg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for key in list(__import__("os").environ):
        if key.startswith("GC_DAEMON_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "retention.toml"
    path.write_text(GOOD)
    return path


def test_defaults_and_file(cfg: Path) -> None:
    s = load_settings(str(cfg))
    assert s.gc.enabled and s.gc.executor == "docker" and s.gc.delete_untagged
    assert s.gc.config_path == "/etc/docker/registry/config.yml" and s.gc.command == ["registry"]
    assert s.schedule.weekday == "sunday" and s.schedule.time == "03:00" and s.schedule.timezone == "UTC"
    assert s.metrics.port == 9100 and s.metrics.address == "0.0.0.0"
    assert s.registry.verify_tls and not s.retention.dry_run
    assert s.retention.rules[0].keep_unstable == 3


def test_file_from_env_and_default_location(cfg: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings(None).gc.container == "registry"  # ./retention.toml
    other = cfg.parent / "other.toml"
    other.write_text(GOOD.replace('container = "registry"', 'container = "reg2"'))
    monkeypatch.setenv("GC_DAEMON_CONFIG", str(other))
    assert load_settings(None).gc.container == "reg2"
    assert load_settings(str(cfg)).gc.container == "registry"  # --config wins


def test_env_overrides_file(cfg: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GC_DAEMON_REGISTRY__URL", "https://registry.example:5443")
    monkeypatch.setenv("GC_DAEMON_GC__DELETE_UNTAGGED", "false")
    monkeypatch.setenv("GC_DAEMON_SCHEDULE__WEEKDAY", "Monday")
    s = load_settings(str(cfg))
    assert s.registry.url == "https://registry.example:5443"
    assert s.gc.delete_untagged is False and s.schedule.weekday == "monday"


def test_password_file(cfg: Path) -> None:
    secret = cfg.parent / "pw"
    secret.write_text("from-file\n")
    cfg.write_text(GOOD.replace('password = "s3cret-pw"', f'password_file = "{secret}"'))
    assert load_settings(str(cfg)).registry.resolved_password() == "from-file"


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (("stable = ['v?", "stable = ['(v?"), "retention.rules[0].stable"),
        (("keep_unstable = 3", "keep_unstable = -1"), "retention.rules[0].keep_unstable"),
        (("[gc]", '[schedule]\nweekday = "funday"\n[gc]'), "schedule.weekday"),
        (("[gc]", '[schedule]\ntime = "25:00"\n[gc]'), "schedule.time"),
        (("[gc]", '[schedule]\ntimezone = "Mars/Olympus"\n[gc]'), "schedule.timezone"),
        (('url = "http://127.0.0.1:5000"', 'url = "registry:5000"'), "registry.url"),
        (('url = "http://127.0.0.1:5000"', 'url = "http://"'), "registry.url"),
        (("[gc]", "[gc]\nbogus = 1"), "gc.bogus"),
        (("[gc]", "[nope]\nx = 1\n[gc]"), "nope"),
        (('container = "registry"', 'container = "registry"\nexecutor = "ssh"'), "gc.executor"),
        (('container = "registry"', ""), "gc"),
        (("[gc]", "[metrics]\nport = 70000\n[gc]"), "metrics.port"),
    ],
)
def test_invalid_value_exits_2_naming_the_key(
    cfg: Path, edit: tuple[str, str], key: str, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg.write_text(GOOD.replace(*edit))
    with pytest.raises(ConfigError, match=rf"{cfg}: {__import__('re').escape(key)}[:.\[]"):
        load_settings(str(cfg))
    assert main(["--config", str(cfg), "validate"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and key in err and err.startswith("gc-daemon: config error:")


def test_invalid_env_value_names_the_key(cfg: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GC_DAEMON_REGISTRY__TIMEOUT_S", "-3")
    with pytest.raises(ConfigError, match=r"registry.timeout_s"):
        load_settings(str(cfg))
    monkeypatch.delenv("GC_DAEMON_REGISTRY__TIMEOUT_S")
    monkeypatch.setenv("GC_DAEMON_REGISTRY__NOPE", "1")
    with pytest.raises(ConfigError, match=r"registry.nope: unknown key"):
        load_settings(str(cfg))


def test_missing_explicit_file_and_bad_toml(cfg: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(str(cfg.parent / "absent.toml"))
    cfg.write_text("[registry\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(str(cfg))


def test_validate_prints_effective_settings_with_secrets_redacted(
    cfg: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--config", str(cfg), "validate"]) == 0
    out = capsys.readouterr().out
    assert "s3cret-pw" not in out
    data = json.loads(out)
    assert data["registry"]["password"] == "***" and data["registry"]["username"] == "ci"
    assert data["retention"]["rules"][0]["repositories"] == ["caliopen/*"]
