"""RegistryClient parsing and error mapping, over httpx.MockTransport.

The same behaviours run against the real registry in tests/integration.
"""

from __future__ import annotations

import json

import httpx
import pytest

from gc_daemon.errors import (
    DeleteDisabled,
    RegistryAuthError,
    RegistryError,
    RegistryNotFound,
    RegistryProtocolError,
    RegistryServerError,
    RegistryUnreachable,
)
from gc_daemon.registry.client import MANIFEST_ACCEPT, RegistryClient, sha256_digest


def client(handler: httpx.MockTransport | object, **kw: object) -> RegistryClient:
    transport = handler if isinstance(handler, httpx.MockTransport) else httpx.MockTransport(handler)  # type: ignore[arg-type]
    return RegistryClient("http://reg.test", transport=transport, sleep=lambda s: None, **kw)  # type: ignore[arg-type]


def test_catalog_follows_relative_link_pages() -> None:
    pages = {
        "/v2/_catalog?n=1000": (["a", "b"], '</v2/_catalog?last=b&n=1000>; rel="next"'),
        "/v2/_catalog?last=b&n=1000": (["team/c"], '</v2/_catalog?last=team%2Fc&n=1000>; rel="next"'),
        "/v2/_catalog?last=team%2Fc&n=1000": ([], None),
    }

    def handler(request: httpx.Request) -> httpx.Response:
        repos, link = pages[request.url.raw_path.decode()]
        headers = {"Link": link} if link else {}
        return httpx.Response(200, json={"repositories": repos}, headers=headers)

    assert client(handler).catalog() == ["a", "b", "team/c"]


def test_tags_null_and_never_tagged_mean_no_tags() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if "gone" in request.url.path:
            return httpx.Response(200, json={"name": "gone", "tags": None})
        return httpx.Response(404, json={"errors": [{"code": "NAME_UNKNOWN", "message": "repository name not known"}]})

    c = client(handler)
    assert c.tags("gone") == [] and c.tags("never") == []


def test_manifest_sends_full_accept_and_checks_digest() -> None:
    body = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json"}).encode()
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["Accept"])
        digest = sha256_digest(body) if "good" in request.url.path else "sha256:" + "f" * 64
        return httpx.Response(200, content=body, headers={"Docker-Content-Digest": digest})

    c = client(handler)
    m = c.manifest("r", "good")
    assert m.digest == sha256_digest(body) and m.media_type == "application/vnd.oci.image.manifest.v1+json"
    assert seen[0] == MANIFEST_ACCEPT and seen[0].count(",") == 3
    with pytest.raises(RegistryProtocolError, match="Docker-Content-Digest"):
        c.manifest("r", "bad")


@pytest.mark.parametrize(
    ("status", "body", "error", "text"),
    [
        (401, {"errors": [{"code": "UNAUTHORIZED"}]}, RegistryAuthError, "authentication required"),
        (404, {"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]}, RegistryNotFound, "MANIFEST"),
        (405, {"errors": [{"code": "UNSUPPORTED", "message": "The operation is unsupported."}]}, DeleteDisabled,
         "REGISTRY_STORAGE_DELETE_ENABLED=true"),
        (503, {"errors": []}, RegistryServerError, "HTTP 503 after 3 retries"),
        (400, {"errors": [{"code": "DIGEST_INVALID"}]}, RegistryProtocolError, "DIGEST_INVALID"),
    ],
)  # fmt: skip
def test_delete_error_mapping(status: int, body: object, error: type[RegistryError], text: str) -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(status, json=body)

    with pytest.raises(error, match=text):
        client(handler).delete_manifest("r", "sha256:" + "a" * 64)
    assert len(calls) == (4 if status >= 500 else 1)  # 5xx retried, the rest not


def test_read_only_405_is_not_reported_as_deletes_disabled() -> None:
    c = client(lambda r: httpx.Response(405, text="registry is in read-only mode"))
    with pytest.raises(RegistryError, match="read-only") as info:
        c.delete_manifest("r", "sha256:" + "a" * 64)
    assert not isinstance(info.value, DeleteDisabled)


def test_wrong_credentials_say_authentication_failed() -> None:
    c = client(lambda r: httpx.Response(401, json={}), username="u", password="p")
    with pytest.raises(RegistryAuthError, match="authentication failed"):
        c.probe()


def test_connection_errors_are_retried_then_reported_unreachable() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(RegistryUnreachable, match=r"cannot reach the registry at http://reg\.test"):
        client(handler).probe()
    assert len(calls) == 4


def test_transient_5xx_recovers() -> None:
    answers = iter([503, 502, 200])
    c = client(lambda r: httpx.Response(next(answers), json={}))
    c.probe()
    assert c.requests == 3


def test_delete_refuses_a_tag() -> None:
    with pytest.raises(ValueError, match="not a digest"):
        client(lambda r: httpx.Response(202)).delete_manifest("r", "latest")


def test_blob_content_checked_against_digest() -> None:
    c = client(lambda r: httpx.Response(200, content=b"tampered"))
    with pytest.raises(RegistryProtocolError, match="does not match"):
        c.blob("r", sha256_digest(b"original"))


def test_tag_delete_support_is_detected_without_deleting_anything() -> None:
    """2.8 answers DELETE by tag with 400 DIGEST_INVALID (seen on the real 2.8.2); 3.x untags, so a tag
    that does not exist answers 404 (3.x is not runnable here: this mapping is tested over MockTransport)."""
    seen: list[str] = []

    def v28(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return httpx.Response(
            400, json={"errors": [{"code": "DIGEST_INVALID", "message": "provided digest did not match"}]}
        )

    def v3(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"errors": [{"code": "MANIFEST_UNKNOWN"}]})

    assert client(v28).tag_delete_supported("team/app") is False
    assert seen[0].startswith("/v2/team/app/manifests/gc-daemon-probe-")
    assert client(v3).tag_delete_supported("team/app") is True
    with pytest.raises(DeleteDisabled):
        client(lambda r: httpx.Response(405, json={"errors": [{"code": "UNSUPPORTED"}]})).tag_delete_supported("r")


def test_untag_with_placeholder_puts_a_unique_manifest_then_deletes_it() -> None:
    calls: list[tuple[str, str]] = []
    stored: dict[str, bytes] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append((request.method, request.url.path))
        if request.method == "POST":
            return httpx.Response(202, headers={"Location": "/v2/team/app/blobs/uploads/u1?_state=x"})
        if request.method == "PUT" and "/blobs/uploads/" in request.url.path:
            assert request.url.params["_state"] == "x"
            return httpx.Response(201)
        if request.method == "PUT":
            stored["manifest"] = request.content
            return httpx.Response(201, headers={"Docker-Content-Digest": sha256_digest(request.content)})
        assert request.method == "DELETE"
        return httpx.Response(202)

    placeholder, config = client(handler).untag_with_placeholder("team/app", "develop-1")
    assert [m for m, _ in calls] == ["POST", "PUT", "PUT", "DELETE"]
    assert calls[2][1] == "/v2/team/app/manifests/develop-1"
    assert calls[3][1] == f"/v2/team/app/manifests/{placeholder}"
    body = json.loads(stored["manifest"])
    assert body["layers"] == [] and placeholder == sha256_digest(stored["manifest"])
    assert body["config"]["digest"] == config
