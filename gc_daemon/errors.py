"""The error tree of gc-daemon, one branch per boundary.

Callers never see httpx or docker exceptions: the boundary modules translate them
into these, with the original chained as ``__cause__``. The CLI maps the tree to
messages and exit codes (``ConfigError`` -> 2, every other ``GcDaemonError`` -> 1)::

    GcDaemonError
    ├── ConfigError                  invalid or unreadable configuration
    ├── RegistryError                the V2 HTTP API
    │   ├── RegistryUnreachable      connection refused, DNS, TLS handshake, timeout
    │   ├── RegistryAuthError        401/403: credentials missing or rejected
    │   ├── RegistryNotFound         404: repository, tag or manifest unknown
    │   ├── DeleteDisabled           405 UNSUPPORTED on DELETE: deletes are off
    │   ├── RegistryServerError      5xx after retries
    │   └── RegistryProtocolError    an answer that breaks the API contract
    ├── CollectError                 garbage-collect could not run or failed
    └── RunAborted                   a run stopped before deleting (signal, guard)
"""

from __future__ import annotations


class GcDaemonError(Exception):
    """Base of every error gc-daemon raises on purpose."""


class ConfigError(GcDaemonError):
    """The configuration is invalid; the message names the key."""


class RegistryError(GcDaemonError):
    """The registry's V2 API could not be used as needed."""


class RegistryUnreachable(RegistryError):
    """No HTTP answer from the registry (connection, TLS, timeout)."""


class RegistryAuthError(RegistryError):
    """The registry refused our credentials (401/403)."""


class RegistryNotFound(RegistryError):
    """The repository, tag or manifest does not exist (404)."""


class DeleteDisabled(RegistryError):
    """The registry answers 405 to DELETE: deletes are not enabled."""

    def __init__(self, detail: str = "") -> None:
        message = (
            "the registry refuses deletes (HTTP 405 UNSUPPORTED): enable them with "
            "REGISTRY_STORAGE_DELETE_ENABLED=true (or storage.delete.enabled: true in its config.yml)"
            " and restart it"
        )
        if detail:
            message += f"; registry said: {detail}"
        super().__init__(message)


class RegistryServerError(RegistryError):
    """The registry kept answering 5xx after retries."""


class RegistryProtocolError(RegistryError):
    """The registry's answer does not follow the V2 API (bad JSON, digest mismatch...)."""


class CollectError(GcDaemonError):
    """garbage-collect could not be started, failed, or the registry did not come back."""


class RunAborted(GcDaemonError):
    """A run stopped before removing anything (shutdown requested, guard tripped)."""
