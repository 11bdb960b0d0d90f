"""Settings: one root object of documented groups, loaded once at the edge.

Sources, highest priority first: environment variables ``GC_DAEMON_<GROUP>__<KEY>``,
then the TOML file (``--config PATH``, else ``$GC_DAEMON_CONFIG``, else ``./retention.toml``),
then the defaults below. Unknown keys are rejected everywhere.
"""

from __future__ import annotations

import os
import re
import tomllib
from datetime import time as dtime
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from gc_daemon.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("retention.toml")
CONFIG_ENV = "GC_DAEMON_CONFIG"
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


class _Group(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RegistrySettings(_Group):
    url: str = "http://127.0.0.1:5000"
    """Base URL of the registry (scheme and host, no /v2/)."""
    username: str | None = None
    """User for HTTP basic auth; none means anonymous."""
    password: SecretStr | None = None
    """Password for basic auth. Prefer password_file or GC_DAEMON_REGISTRY__PASSWORD."""
    password_file: Path | None = None
    """File whose content (trailing newline stripped) is the password (Docker secrets)."""
    ca_file: Path | None = None
    """PEM bundle of a private CA that signed the registry's certificate."""
    verify_tls: bool = True
    """Verify the registry's TLS certificate. Turn off only for a test registry."""
    timeout_s: float = Field(default=30.0, gt=0)
    """Timeout of one HTTP request, in seconds."""
    concurrency: int = Field(default=8, ge=1, le=64)
    """Requests in flight at once, while scanning and while removing."""
    storage_path: Path | None = None
    """The registry's filesystem storage root (e.g. /var/lib/registry) mounted read-only here: tags, digests and
    push times are read from disk instead of one request per tag. The API still decides every removal."""

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{value!r} is not an http(s) URL with a host, e.g. http://registry:5000")
        try:
            _ = parts.port
        except ValueError as exc:
            raise ValueError(f"{value!r} has an invalid port") from exc
        if parts.query or parts.fragment:
            raise ValueError(f"{value!r} must not carry a query or fragment")
        return value.rstrip("/")

    @field_validator("password_file", "ca_file")
    @classmethod
    def _readable(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{str(value)!r} is not a readable file")
        return value

    @model_validator(mode="after")
    def _one_password(self) -> RegistrySettings:
        if self.password is not None and self.password_file is not None:
            raise ValueError("set either password or password_file, not both")
        return self

    def resolved_password(self) -> str | None:
        if self.password is not None:
            return self.password.get_secret_value()
        if self.password_file is not None:
            return self.password_file.read_text().rstrip("\r\n")
        return None


class GcSettings(_Group):
    enabled: bool = True
    """Run garbage-collect after removing tags."""
    executor: Literal["docker", "local"] = "docker"
    """docker: exec in the registry container via the engine API; local: run `command` here."""
    container: str | None = None
    """Name or id of the registry container (docker executor)."""
    command: list[str] = Field(default_factory=lambda: ["registry"])
    """argv prefix of the registry binary for the local executor."""
    config_path: str = "/etc/docker/registry/config.yml"
    """The registry's config file, as seen by garbage-collect."""
    delete_untagged: bool = True
    """Also collect manifests no tag points to (see the safety notes in the README)."""
    mode: Literal["offline", "online"] = "offline"
    """offline (safe): stop the registry, collect in a one-off container, start it again.
    online: collect in the running registry (unsafe against concurrent pushes), then restart it."""
    restart_command: list[str] | None = None
    """local executor: argv that restarts the registry after a collect, to flush its blob cache."""

    @field_validator("command")
    @classmethod
    def _argv(cls, value: list[str]) -> list[str]:
        if not value or not value[0]:
            raise ValueError('must name the registry binary, e.g. ["registry"]')
        return value

    @model_validator(mode="after")
    def _container(self) -> GcSettings:
        if self.enabled and self.executor == "local" and self.mode == "offline":
            raise ValueError(
                'mode = "offline" needs executor = "docker" (it stops the registry container); with the local '
                'executor set mode = "online" and restart_command'
            )
        if self.enabled and self.executor == "docker" and not self.container:
            raise ValueError(
                'container is required with executor = "docker" (name or id of the registry container;'
                " or set enabled = false)"
            )
        return self


class ScheduleSettings(_Group):
    every: Literal["week", "day"] = "week"
    """Run weekly (on `weekday`) or daily, at `time`."""
    weekday: str = "sunday"
    """Day of the weekly run."""
    time: str = "03:00"
    """Time of day of the run, HH:MM or HH:MM:SS (24 h)."""
    timezone: str = "UTC"
    """IANA time zone of `time`, e.g. Europe/Paris (daylight-saving changes follow the zone)."""
    catch_up: bool = False
    """At daemon start, run at once when the last success is older than one period (or unknown)."""
    collect_time: str | None = None
    """Split the run: removals at `time`, the collect at this time (HH:MM) — an undo window in between."""
    collect_weekday: str | None = None
    """Day of the collect when split (weekly runs); default: `weekday`."""

    @field_validator("weekday", "collect_weekday")
    @classmethod
    def _weekday(cls, value: str | None) -> str | None:
        if value is None:
            return None
        day = value.strip().lower()
        if day not in WEEKDAYS:
            raise ValueError(f"{value!r} is not a weekday (one of {', '.join(WEEKDAYS)})")
        return day

    @field_validator("time", "collect_time")
    @classmethod
    def _time(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not re.fullmatch(r"\d{2}:\d{2}(:\d{2})?", value):
            raise ValueError(f"{value!r} is not a time of day HH:MM")
        try:
            dtime.fromisoformat(value)
        except ValueError as exc:
            raise ValueError(f"{value!r} is not a time of day HH:MM") from exc
        return value

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"{value!r} is not an IANA time zone") from exc
        return value


class MetricsSettings(_Group):
    address: str = "0.0.0.0"
    """Address the Prometheus endpoint binds to."""
    port: int = Field(default=9100, ge=0, le=65535)
    """Port of the Prometheus endpoint; 0 turns it off."""


class ControlSettings(_Group):
    socket: Path = Path("/run/gc-daemon/control.sock")
    """Unix socket through which `run-now` reaches a running daemon."""


class EventsSettings(_Group):
    enabled: bool = False
    """Accept registry notifications on POST /events (metrics port): push and pull history."""
    secret: SecretStr | None = None
    """Shared secret the registry sends in `header` (as the value, or as "Bearer <secret>")."""
    secret_file: Path | None = None
    """File holding the secret (Docker secrets)."""
    header: str = "Authorization"
    """Request header carrying the secret."""
    queue_size: int = Field(default=10000, ge=1)
    """Events held in memory before they are written; beyond it they are dropped and counted."""

    @model_validator(mode="after")
    def _secret(self) -> EventsSettings:
        if self.enabled and self.secret is None and self.secret_file is None:
            raise ValueError("enabled events need a secret (or secret_file): unauthenticated posts are refused")
        if self.secret is not None and self.secret_file is not None:
            raise ValueError("set either secret or secret_file, not both")
        return self

    def resolved_secret(self) -> str | None:
        if self.secret is not None:
            return self.secret.get_secret_value()
        if self.secret_file is not None:
            return self.secret_file.read_text().strip()
        return None


class LogSettings(_Group):
    format: Literal["text", "json"] = "text"
    """One line per event: human text, or one JSON object per line for log shippers."""
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Least severe level written (--log-level overrides it)."""


class StateSettings(_Group):
    dir: Path = Path("/var/lib/gc-daemon")
    """Directory for state kept across runs."""


_DURATION = re.compile(r"(\d+)([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> timedelta:
    """`14d`, `36h`, `2w`, `1d12h` -> timedelta."""
    compact = text.replace(" ", "").lower()
    if not compact or _DURATION.sub("", compact):
        raise ValueError(f"{text!r} is not a duration such as 14d, 36h, 2w or 1d12h")
    return timedelta(seconds=sum(int(n) * _UNITS[u] for n, u in _DURATION.findall(compact)))


class Rule(_Group):
    repositories: list[str] = Field(min_length=1)
    """Repository globs: `*` stays within one path segment, `**` crosses `/`."""
    stable: list[str] = Field(default_factory=list)
    """Regexes; a tag is stable when one matches the whole tag. Stable tags are always kept."""
    keep_unstable: int = Field(ge=0)
    """How many unstable tags to keep per repository, newest build first."""
    keep_within: str | None = None
    """Also keep unstable tags younger than this (e.g. "14d"), by build time or first sighting."""
    keep_pulled_within: str | None = None
    """Also keep unstable tags whose image was pulled within this (needs [events])."""
    keep_pushed_within: str | None = None
    """Also keep unstable tags pushed within this (push time from [events] or the storage inventory)."""

    @field_validator("keep_within", "keep_pulled_within", "keep_pushed_within")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value

    def keep_within_delta(self) -> timedelta | None:
        return parse_duration(self.keep_within) if self.keep_within is not None else None

    def delta(self, key: str) -> timedelta | None:
        value = getattr(self, key)
        return parse_duration(value) if value is not None else None

    @field_validator("stable")
    @classmethod
    def _regexes(cls, value: list[str]) -> list[str]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{pattern!r} is not a valid regex: {exc}") from exc
        return value

    @field_validator("repositories")
    @classmethod
    def _globs(cls, value: list[str]) -> list[str]:
        for pattern in value:
            if not pattern.strip():
                raise ValueError("empty repository glob")
        return value


class RetentionSettings(_Group):
    dry_run: bool = False
    """Compute and print the plan, remove nothing, collect nothing."""
    rules: list[Rule] = Field(default_factory=list)
    """First matching rule wins; a repository no rule matches is left untouched."""
    max_delete_ratio: float = Field(default=0.5, ge=0, le=1)
    """Refuse a run that would remove more than this share of one repository's tags (1 = no limit)."""
    max_deletions: int | None = Field(default=None, ge=0)
    """Refuse a run that would remove more tags than this in all (unset = no limit)."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="GC_DAEMON_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    registry: RegistrySettings = Field(default_factory=RegistrySettings)
    gc: GcSettings = Field(default_factory=GcSettings, validate_default=True)
    schedule: ScheduleSettings = Field(default_factory=ScheduleSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    control: ControlSettings = Field(default_factory=ControlSettings)
    state: StateSettings = Field(default_factory=StateSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    events: EventsSettings = Field(default_factory=EventsSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment wins over the file, which arrives as init kwargs.
        return (env_settings, init_settings)


def config_path(cli_path: str | None, environ: dict[str, str] | None = None) -> tuple[Path, bool]:
    """Which TOML file to read, and whether the operator named it explicitly."""
    env = os.environ if environ is None else environ
    if cli_path:
        return Path(cli_path), True
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV]), True
    return DEFAULT_CONFIG_PATH, False


def _key(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out


def _describe(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    key = _key(loc) or "(root)"
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    elif msg.startswith("Value error, "):
        msg = msg.removeprefix("Value error, ")
    more = len(exc.errors()) - 1
    suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    return f"{key}: {msg}{suffix}"


def load_settings(cli_path: str | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Read, merge and validate the configuration; ConfigError names the offending key."""
    path, explicit = config_path(cli_path, environ)
    data: dict[str, Any] = {}
    if path.exists():
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    elif explicit:
        raise ConfigError(f"{path}: config file not found")
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_describe(exc)}") from exc


def redacted(settings: Settings) -> dict[str, Any]:
    """The effective settings as plain data, every secret replaced."""
    data = settings.model_dump(mode="json")
    if data["registry"].get("password") is not None:
        data["registry"]["password"] = "***"
    if data["events"].get("secret") is not None:
        data["events"]["secret"] = "***"
    return data
