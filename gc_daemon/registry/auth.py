"""Registry authentication as an httpx.Auth flow: HTTP basic, and bearer tokens (the distribution token
protocol): follow the 401's `WWW-Authenticate: Bearer realm=...,service=...,scope=...`, get a token from
the realm (with the basic credentials, when configured), cache it per resource and method, and fetch a
fresh one when a cached token is refused (it expired during a long run).
"""

from __future__ import annotations

import base64
import re
import threading
from collections.abc import Generator

import httpx

_PARAM = re.compile(r'(\w+)="([^"]*)"')
_RESOURCE = re.compile(r"^/v2/(.+?)/(?:manifests|blobs|tags)/")


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), dict(_PARAM.findall(rest))


def _resource(request: httpx.Request) -> tuple[str, str]:
    path = request.url.path
    if path.startswith("/v2/_catalog"):
        repository = "registry:catalog"
    elif match := _RESOURCE.match(path):
        repository = match.group(1)
    else:
        repository = "/v2/"
    return repository, request.method


class RegistryAuth(httpx.Auth):
    requires_response_body = True  # the token endpoint's JSON body

    def __init__(self, username: str | None, password: str | None) -> None:
        self._basic: str | None = None
        if username is not None:
            raw = f"{username}:{password or ''}".encode()
            self._basic = "Basic " + base64.b64encode(raw).decode()
        self._scheme: str | None = None  # learned from the first challenge
        self._tokens: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()
        self.tokens_fetched = 0

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        key = _resource(request)
        with self._lock:
            token = self._tokens.get(key)
            scheme = self._scheme
        if token is not None:
            request.headers["Authorization"] = f"Bearer {token}"
        elif scheme == "basic" and self._basic:
            request.headers["Authorization"] = self._basic
        response = yield request
        if response.status_code != 401:
            return
        scheme, params = parse_challenge(response.headers.get("WWW-Authenticate", ""))
        with self._lock:
            self._scheme = scheme
        if scheme == "basic":
            if self._basic and request.headers.get("Authorization") != self._basic:
                request.headers["Authorization"] = self._basic
                yield request
            return
        if scheme != "bearer" or "realm" not in params:
            return
        query = {k: v for k, v in params.items() if k in ("service", "scope")}
        token_request = httpx.Request("GET", params["realm"], params=query)
        if self._basic:
            token_request.headers["Authorization"] = self._basic
        token_response = yield token_request
        if token_response.status_code != 200:
            return  # the registry's 401 stands: the caller reports "authentication failed"
        try:
            body = token_response.json()
            token = body.get("token") or body.get("access_token")
        except ValueError:
            return
        if not token:
            return
        with self._lock:
            self._tokens[key] = token
            self.tokens_fetched += 1
        request.headers["Authorization"] = f"Bearer {token}"
        yield request
