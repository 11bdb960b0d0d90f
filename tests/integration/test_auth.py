"""Private registries: basic auth (htpasswd), bearer tokens from a token server, a self-signed CA.

Images are seeded through an open registry on the same storage, which is then replaced by the protected
one; afterwards a fresh open registry on that storage checks that every kept image pulls whole.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.integration.cli import run, run_json, write_config
from tests.integration.daemon_proc import running_daemon
from tests.support.auth import TokenServer, self_signed, write_htpasswd
from tests.support.images import Pusher, pull_whole
from tests.support.registry import RegistryContainer

USER, PASSWORD = "gc-bot", "s3cr3t-Pa55-xyzzy"
Factory = Callable[..., RegistryContainer]
MOUNT = "/var/lib/registry"
NO_RATIO = "[retention]\nmax_delete_ratio = 1.0"


def seeded(make_registry: Factory, storage: Path, repos: int = 1) -> None:
    open_registry = make_registry(storage_dir=storage)
    with Pusher(open_registry.url) as p:
        for r in range(repos):
            for n in range(4):
                p.push_image(f"team/app{r}", f"develop-{n}", created=f"2026-01-0{n + 1}T00:00:00Z")
    open_registry.stop()


def verify_kept(make_registry: Factory, protected: RegistryContainer, repos: int = 1) -> None:
    protected.stop()
    check = make_registry(storage_dir=protected.storage_dir)
    with Pusher(check.url) as p:
        for r in range(repos):
            assert p.tags(f"team/app{r}") == ["develop-3"]
            pull_whole(check.url, f"team/app{r}", "develop-3")


def registry_keys(config: Path, keys: str) -> None:
    config.write_text(config.read_text().replace("[registry]\n", f"[registry]\n{keys}\n"))


def with_credentials(config: Path, password_file: Path) -> None:
    password_file.write_text(PASSWORD + "\n")
    registry_keys(config, f'username = "{USER}"\npassword_file = "{password_file}"')


def htpasswd_registry(make_registry: Factory, storage: Path) -> RegistryContainer:
    """The registry on `storage`, behind HTTP basic auth (USER / PASSWORD in an htpasswd file)."""
    write_htpasswd(storage / "auth" / "htpasswd", USER, PASSWORD)
    env = {"REGISTRY_AUTH": "htpasswd", "REGISTRY_AUTH_HTPASSWD_REALM": "test",
           "REGISTRY_AUTH_HTPASSWD_PATH": f"{MOUNT}/auth/htpasswd"}  # fmt: skip
    return make_registry(storage_dir=storage, extra_env=env)


def test_basic_auth_full_run_and_wrong_credentials(make_registry: Factory, tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    seeded(make_registry, storage)
    registry = htpasswd_registry(make_registry, storage)
    assert httpx.get(f"{registry.url}/v2/").status_code == 401
    config = write_config(tmp_path, registry, keep=1, extra=NO_RATIO)

    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password\n")
    registry_keys(config, f'username = "{USER}"\npassword_file = "{wrong}"')
    snapshot = registry.snapshot()
    done = run(config, "run-now")
    assert done.returncode == 1 and "authentication failed" in done.stdout + done.stderr
    assert registry.snapshot() == snapshot

    config.write_text(config.read_text().replace(f'password_file = "{wrong}"', f'password_file = "{tmp_path / "pw"}"'))
    (tmp_path / "pw").write_text(PASSWORD + "\n")
    code, report, stderr = run_json(config, "run-now")
    assert code == 0, stderr
    assert report["tags_deleted"] == 3 and report["blobs_deleted"] > 0
    verify_kept(make_registry, registry)


def test_token_auth_with_tokens_expiring_mid_run(make_registry: Factory, tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    seeded(make_registry, storage, repos=3)
    tokens = TokenServer(tmp_path / "token", username=USER, password=PASSWORD, ttl_s=1)
    (storage / "certs").mkdir(parents=True)
    shutil.copy(tokens.cert_path, storage / "certs" / "token.crt")
    with tokens.running():
        registry = make_registry(storage_dir=storage, extra_env=tokens.registry_env(f"{MOUNT}/certs/token.crt"))
        config = write_config(tmp_path, registry, keep=1, extra=NO_RATIO)
        with_credentials(config, tmp_path / "pw")
        code, report, stderr = run_json(config, "run-now")
        assert code == 0, stderr
        assert report["tags_deleted"] == 9
        refreshed = {scope: n for scope, n in tokens.issued.items() if n > 1}
        assert refreshed, f"no token was refreshed: {dict(tokens.issued)}"
        print(f"\ntokens issued per scope: {dict(tokens.issued)}")

        config.write_text(config.read_text().replace(f'username = "{USER}"', 'username = "intruder"'))
        done = run(config, "run-now")
        assert done.returncode == 1 and "authentication failed" in done.stdout + done.stderr
        assert tokens.refused > 0
    verify_kept(make_registry, registry, repos=3)


def test_registry_with_a_self_signed_certificate(make_registry: Factory, tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    seeded(make_registry, storage)
    cert, _, _ = self_signed(storage / "tls", "registry")
    tls = {
        "REGISTRY_HTTP_TLS_CERTIFICATE": f"{MOUNT}/tls/registry.crt",
        "REGISTRY_HTTP_TLS_KEY": f"{MOUNT}/tls/registry.key",
    }
    registry = make_registry(storage_dir=storage, tls_ca=cert, extra_env=tls)
    assert registry.url.startswith("https://")
    config = write_config(tmp_path, registry, keep=1, extra=NO_RATIO)

    untrusted = run(config, "run-now")
    assert untrusted.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in untrusted.stdout + untrusted.stderr

    registry_keys(config, f'ca_file = "{cert}"')
    code, report, stderr = run_json(config, "run-now")
    assert code == 0, stderr
    assert report["tags_deleted"] == 3
    verify_kept(make_registry, registry)


def test_credentials_never_appear_in_output_metrics_reports_or_state(make_registry: Factory, tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    seeded(make_registry, storage)
    registry = htpasswd_registry(make_registry, storage)
    config = write_config(tmp_path, registry, keep=1, extra=NO_RATIO)
    registry_keys(config, f'username = "{USER}"\npassword = "{PASSWORD}"')
    outputs = []
    textfile = str(tmp_path / "m.prom")
    commands = [["validate"], ["plan"], ["plan", "--json"], ["run-now", "--json", "--textfile", textfile], ["ls"],
                ["check"], ["status"], ["--log-level", "DEBUG", "run-now"]]  # fmt: skip
    for args in commands:
        done = run(config, *args)
        outputs.append(done.stdout + done.stderr)
    assert json.loads(run(config, "validate").stdout)["registry"]["password"] == "***"
    with running_daemon(config, tmp_path) as daemon:
        outputs.append(httpx.get(f"{daemon.url}/metrics").text)
        outputs.append(run(config, "run-now").stdout)
        outputs.append(daemon.output())
    state_files = [p for p in (tmp_path / "state").rglob("*") if p.is_file()]
    outputs += [p.read_bytes().decode(errors="replace") for p in state_files] + [(tmp_path / "m.prom").read_text()]
    for text in outputs:
        assert PASSWORD not in text
    assert any("tags_deleted" in text for text in outputs)
