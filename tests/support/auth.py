"""Test-only auth parts for a real registry: an htpasswd file, a self-signed certificate, and a small
token server that signs registry tokens (RS256 JWT with an x5c header) the way a real one does."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import bcrypt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID


def write_htpasswd(path: Path, username: str, password: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()
    path.write_text(f"{username}:{hashed}\n")


def self_signed(directory: Path, name: str, *, ip: str | None = "127.0.0.1") -> tuple[Path, Path, rsa.RSAPrivateKey]:
    """A self-signed certificate (its own CA) for 127.0.0.1; returns (cert.pem, key.pem, key)."""
    directory.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    )
    if ip:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]), False)
    cert = builder.sign(key, hashes.SHA256())
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path, key


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    """GET /token?service=...&scope=... with basic credentials -> {"token": <JWT>, "expires_in": ttl}."""

    def __init__(self, directory: Path, *, username: str, password: str, ttl_s: int = 60) -> None:
        self.cert_path, _, self._key = self_signed(directory, "token-signer", ip=None)
        cert = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
        self._x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
        self.username, self.password, self.ttl_s = username, password, ttl_s
        self.issuer, self.service = "gc-daemon-test-issuer", "gc-daemon-test-registry"
        self.issued: Counter[str] = Counter()  # scope -> tokens issued
        self.refused = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.port = self._server.server_address[1]
        self.realm = f"http://127.0.0.1:{self.port}/token"

    def sign(self, scopes: list[str]) -> str:
        now = int(time.time())
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",") if actions else []})
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self._x5c]}
        claims = {"iss": self.issuer, "sub": self.username, "aud": self.service, "exp": now + self.ttl_s,
                  "nbf": now - 5, "iat": now, "jti": secrets.token_hex(8), "access": access}  # fmt: skip
        signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
        signature = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64(signature)}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self
        expected = "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                if self.headers.get("Authorization") != expected:
                    server.refused += 1
                    self.send_response(401)
                    self.end_headers()
                    return
                scopes = parse_qs(urlsplit(self.path).query).get("scope", [])
                for scope in scopes:
                    server.issued[scope] += 1
                body = json.dumps({"token": server.sign(scopes), "expires_in": server.ttl_s}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler

    @contextmanager
    def running(self) -> Iterator[TokenServer]:
        thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._server.shutdown()
            self._server.server_close()

    def registry_env(self, cert_in_container: str) -> dict[str, str]:
        return {
            "REGISTRY_AUTH": "token",
            "REGISTRY_AUTH_TOKEN_REALM": self.realm,
            "REGISTRY_AUTH_TOKEN_SERVICE": self.service,
            "REGISTRY_AUTH_TOKEN_ISSUER": self.issuer,
            "REGISTRY_AUTH_TOKEN_ROOTCERTBUNDLE": cert_in_container,
        }
