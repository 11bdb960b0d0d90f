"""The registry's V2 HTTP API: a client over an injected httpx client, and the scan built on it."""

from gc_daemon.registry.client import ManifestResponse, RegistryClient

__all__ = ["ManifestResponse", "RegistryClient"]
