"""One settings object, read from the environment once per process and passed down.

Every variable the product reads is declared here (and listed in docs/configuration.md).
A bad value raises :class:`SettingsError` whose message is one line naming the variable
and what is wrong; entrypoints print that line and exit 2.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import SettingsError

#: The six SaaS sources, in the order status pages list them.
SOURCE_NAMES = ("jira", "slack", "github", "notion", "tempo", "fireflies")

#: Per source: the variables that must all be set for the source to be enabled.
SOURCE_CREDENTIALS: dict[str, tuple[str, ...]] = {
    "jira": ("JIRA_URL", "JIRA_EMAIL", "JIRA_API_TOKEN"),
    "slack": ("SLACK_BOT_TOKEN",),
    "github": ("GITHUB_TOKEN",),
    "notion": ("NOTION_TOKEN",),
    "tempo": ("TEMPO_API_TOKEN",),
    "fireflies": ("FIREFLIES_API_KEY",),
}

#: Per source: the other variables it reads, with their defaults ("" = unset).
SOURCE_OPTIONS: dict[str, dict[str, str]] = {
    "jira": {"JIRA_WEBHOOK_SECRET": "", "JIRA_PROJECTS": "*"},
    "slack": {
        "SLACK_API_URL": "https://slack.com/api",
        "SLACK_SIGNING_SECRET": "",
        "SLACK_CHANNELS": "*",
        "SLACK_THREAD_LOOKBACK": "7d",
    },
    "github": {
        "GITHUB_API_URL": "https://api.github.com",
        "GITHUB_WEBHOOK_SECRET": "",
        "GITHUB_REPOS": "",
    },
    "notion": {
        "NOTION_API_URL": "https://api.notion.com",
        "NOTION_WEBHOOK_TOKEN": "",
        "NOTION_VERSION": "2022-06-28",
    },
    "tempo": {"TEMPO_API_URL": "https://api.tempo.io"},
    "fireflies": {
        "FIREFLIES_API_URL": "https://api.fireflies.ai/graphql",
        "FIREFLIES_WEBHOOK_SECRET": "",
        "FIREFLIES_RECHECK_WINDOW": "14d",
    },
}

#: Reconciler cadence per source (DESIGN/issue 6 defaults), seconds.
DEFAULT_POLL_INTERVAL = {
    "slack": 15 * 60,
    "jira": 30 * 60,
    "github": 30 * 60,
    "notion": 60 * 60,
    "tempo": 60 * 60,
    "fireflies": 60 * 60,
}

#: Request budget per source shared by every process ("N/s", "N/min", "N/h", "N/day").
DEFAULT_RATE_LIMIT = {
    "jira": "10/s",
    "slack": "50/min",
    "github": "5000/h",
    "notion": "3/s",
    "tempo": "5/s",
    "fireflies": "60/min",
}

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|min|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, None: 1}
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|min|m|h|hour|d|day)\s*$")
_RATE_UNITS = {"s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600, "hour": 3600, "d": 86400, "day": 86400}


class Secret(str):
    """A string that never shows itself in a repr, a log line or status output."""

    def __repr__(self) -> str:
        return "Secret('**********')" if self else "Secret('')"


@dataclass(frozen=True)
class Rate:
    """A request budget: ``limit`` requests per ``period`` seconds."""

    limit: float
    period: float

    @property
    def per_second(self) -> float:
        return self.limit / self.period

    def __str__(self) -> str:
        return f"{self.limit:g}/{self.period:g}s"


@dataclass(frozen=True)
class SourceSettings:
    """What one source is configured with. ``env`` holds its raw variables."""

    name: str
    env: Mapping[str, str] = field(repr=False)  # holds credentials: never in a repr
    poll_interval: float
    stale_after: float
    rate: Rate

    @property
    def configured(self) -> bool:
        return all(self.env.get(var) for var in SOURCE_CREDENTIALS[self.name])

    def get(self, var: str) -> str:
        return self.env.get(var, "")

    def secret(self, var: str) -> Secret:
        return Secret(self.env.get(var, ""))

    def scope_filter(self) -> list[str] | None:
        """The configured scope keys (``*`` or empty means all that are discovered)."""
        var = {"jira": "JIRA_PROJECTS", "slack": "SLACK_CHANNELS", "github": "GITHUB_REPOS"}.get(
            self.name
        )
        raw = self.env.get(var, "*") if var else "*"
        keys = [k.strip() for k in raw.split(",") if k.strip()]
        return None if not keys or keys == ["*"] else keys


@dataclass(frozen=True)
class Settings:
    home: Path = Path(".vector-sync")
    database_url: str = ""
    redis_url: str = ""
    host: str = "127.0.0.1"
    port: int = 8080
    admin_api_key: Secret = Secret("")
    log_level: str = "INFO"
    http_timeout: float = 10.0
    chunk_tokens: int = 512
    chunk_overlap_tokens: int = 48
    embedding_model: str = "text-embedding-3-small"
    embedding_dimensions: int = 1536
    embedding_batch_size: int = 2048
    openai_api_key: Secret = Secret("")
    openai_base_url: str = ""
    pinecone_api_key: Secret = Secret("")
    pinecone_host: str = ""
    pinecone_namespace: str = "vector-sync"
    webhook_max_bytes: int = 1024 * 1024
    worker_processes: int = 1
    worker_threads: int = 8
    max_retries: int = 8
    max_wait: float = 3 * 86400.0
    reconcile_overlap: float = 600.0
    reconcile_tick: float = 5.0
    prune_interval: float = 86400.0
    verify_interval: float = 86400.0  # the reconciler's drift audit per scope; 0 = never
    heartbeat_interval: float = 10.0
    heartbeat_timeout: float = 60.0
    worker_recovery_after: float = 30.0
    stuck_after: float = 900.0
    document_failing_after: float = 60.0
    alert_slack_webhook_url: str = ""
    sandbox: str = "auto"
    sandbox_port_base: int = 8200  # sandbox mode: simulator i listens on SANDBOX_PORT_BASE + i
    sources: Mapping[str, SourceSettings] = field(default_factory=dict)
    # Exposure and observability (see exposure_settings below).
    status_api_key: Secret = Secret("")
    public_routes: str = "all"
    status_cache_ttl: float = 5.0
    metrics_port: int = 0
    metrics_host: str = "0.0.0.0"

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = _Env(read_secret_files(os.environ if environ is None else environ))
        sources = {}
        for name in SOURCE_NAMES:
            raw = {var: env.str(var, "") for var in SOURCE_CREDENTIALS[name]}
            raw |= {var: env.str(var, default) for var, default in SOURCE_OPTIONS[name].items()}
            if name == "tempo":  # Tempo v4 gives issue ids; keys and summaries come from Jira.
                raw |= {var: env.str(var, "") for var in SOURCE_CREDENTIALS["jira"]}
            upper = name.upper()
            poll = env.duration(f"{upper}_POLL_INTERVAL", DEFAULT_POLL_INTERVAL[name])
            sources[name] = SourceSettings(
                name=name,
                env=raw,
                poll_interval=poll,
                # Stale when two polls in a row have been missed (plus slack for a slow pass).
                stale_after=env.duration(f"{upper}_STALE_AFTER", 2 * poll + 300),
                rate=env.rate(f"{upper}_RATE_LIMIT", DEFAULT_RATE_LIMIT[name]),
            )
        sandbox = env.str("SANDBOX", "auto").lower()
        if sandbox not in ("auto", "on", "off"):
            raise SettingsError(f"SANDBOX must be auto, on or off, not {sandbox!r}")
        return cls(
            home=Path(env.str("VECTOR_SYNC_HOME", ".vector-sync")).absolute(),
            database_url=env.url("DATABASE_URL", ("postgres", "postgresql")),
            redis_url=env.url("REDIS_URL", ("redis", "rediss", "unix")),
            host=env.str("HOST", "127.0.0.1"),
            port=env.int("PORT", 8080, 1, 65535),
            admin_api_key=Secret(env.str("ADMIN_API_KEY", "")),
            log_level=env.choice("LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR")),
            http_timeout=env.duration("HTTP_TIMEOUT", 10.0),
            chunk_tokens=env.int("CHUNK_TOKENS", 512, 32, 8000),
            chunk_overlap_tokens=env.int("CHUNK_OVERLAP_TOKENS", 48, 0, 1000),
            embedding_model=env.str("EMBEDDING_MODEL", "text-embedding-3-small"),
            embedding_dimensions=env.int("EMBEDDING_DIMENSIONS", 1536, 8, 2000),
            embedding_batch_size=env.int("EMBEDDING_BATCH_SIZE", 2048, 1, 2048),
            openai_api_key=Secret(env.str("OPENAI_API_KEY", "")),
            openai_base_url=env.str("OPENAI_BASE_URL", ""),
            pinecone_api_key=Secret(env.str("PINECONE_API_KEY", "")),
            pinecone_host=env.str("PINECONE_HOST", ""),
            pinecone_namespace=env.str("PINECONE_NAMESPACE", "vector-sync"),
            webhook_max_bytes=env.int("WEBHOOK_MAX_BYTES", 1024 * 1024, 1024, 64 * 1024 * 1024),
            worker_processes=env.int("WORKER_PROCESSES", 1, 1, 64),
            worker_threads=env.int("WORKER_THREADS", 8, 1, 256),
            max_retries=env.int("MAX_RETRIES", 8, 0, 100),
            max_wait=env.duration("MAX_WAIT", 3 * 86400.0),
            reconcile_overlap=env.duration("RECONCILE_OVERLAP", 600.0),
            reconcile_tick=env.duration("RECONCILE_TICK", 5.0),
            prune_interval=env.duration("PRUNE_INTERVAL", 86400.0),
            verify_interval=env.duration("VERIFY_INTERVAL", 86400.0),
            heartbeat_interval=env.duration("HEARTBEAT_INTERVAL", 10.0),
            heartbeat_timeout=env.duration("HEARTBEAT_TIMEOUT", 60.0),
            worker_recovery_after=env.duration("WORKER_RECOVERY_AFTER", 30.0),
            stuck_after=env.duration("STUCK_AFTER", 900.0),
            document_failing_after=env.duration("DOCUMENT_FAILING_AFTER", 60.0),
            alert_slack_webhook_url=env.str("ALERT_SLACK_WEBHOOK_URL", ""),
            sandbox=sandbox,
            sandbox_port_base=env.int("SANDBOX_PORT_BASE", 8200, 1024, 65000),
            sources=sources,
            **exposure_settings(env),
        )

    @property
    def embedded_postgres(self) -> bool:
        return not self.database_url

    @property
    def embedded_redis(self) -> bool:
        return not self.redis_url

    def source(self, name: str) -> SourceSettings:
        return self.sources[name]

    def configured_sources(self) -> list[str]:
        return [name for name, s in self.sources.items() if s.configured]

    def wants_sandbox(self) -> bool:
        """Sandbox mode: asked for, or ``auto`` with no real source credential set."""
        if self.sandbox == "auto":
            return not self.configured_sources()
        return self.sandbox == "on"


def exposure_settings(env: _Env) -> dict[str, Any]:
    """Who may read what besides the webhooks, and how metrics leave each process
    (docs/operations.md, "Exposing the receiver" and "Metrics")."""
    status_key = env.str("STATUS_API_KEY", "")
    # Setting a status key is asking for the status to be protected: the default follows it.
    public = (env.str("PUBLIC_ROUTES", "") or ("webhooks" if status_key else "all")).lower()
    if public not in ("all", "webhooks"):
        raise SettingsError(f"PUBLIC_ROUTES must be all or webhooks, not {public!r}")
    return {
        "status_api_key": Secret(status_key),
        "public_routes": public,
        "status_cache_ttl": env.duration("STATUS_CACHE_TTL", 5.0),
        "metrics_port": env.int("METRICS_PORT", 0, 0, 65535),
        "metrics_host": env.str("METRICS_HOST", "0.0.0.0") or "0.0.0.0",
    }


def read_secret_files(environ: Mapping[str, str]) -> Mapping[str, str]:
    """``NAME_FILE`` for every secret ``NAME``: the environment with ``NAME`` set to that file's
    contents, trailing newline stripped (container and Kubernetes secrets arrive as files).

    Secrets are the names ending in ``_TOKEN``, ``_KEY``, ``_SECRET`` or ``_PASSWORD``, and the
    URLs that may carry a password. Setting both ``NAME`` and ``NAME_FILE`` is an error, and so
    is a file that cannot be read; neither message shows a value.
    """
    secret = re.compile(r"[A-Z0-9_]+_(TOKEN|KEY|SECRET|PASSWORD)|DATABASE_URL|REDIS_URL|ALERT_SLACK_WEBHOOK_URL")
    resolved: dict[str, str] = {}
    for var, path in environ.items():
        name = var.removesuffix("_FILE")
        if name == var or not secret.fullmatch(name) or not path.strip():
            continue
        if environ.get(name, "").strip():
            raise SettingsError(f"{name} and {var} are both set; set only one of them")
        try:
            resolved[name] = Path(path).read_text(encoding="utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            raise SettingsError(f"{var}: cannot read {path}: not UTF-8 text") from None
        except OSError as exc:
            raise SettingsError(f"{var}: cannot read {path}: {exc.strerror or type(exc).__name__}") from None
    return {**environ, **resolved} if resolved else environ


def parse_duration(raw: str) -> float:
    """``"90"`` → 90.0, ``"15m"`` → 900.0, ``"1d"`` → 86400.0; ValueError otherwise."""
    match = _DURATION.match(raw)
    if not match:
        raise ValueError(raw)
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def parse_rate(raw: str) -> Rate:
    """``"5/s"`` → Rate(5, 1); ``"50/day"`` → Rate(50, 86400); ValueError otherwise."""
    match = _RATE.match(raw)
    if not match or float(match.group(1)) <= 0:
        raise ValueError(raw)
    return Rate(float(match.group(1)), _RATE_UNITS[match.group(2)])


class _Env:
    """Typed reads of environment variables with one-line errors naming the variable."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ

    def str(self, name: str, default: str) -> str:
        return self.environ.get(name, default).strip()

    def int(self, name: str, default: int, low: int, high: int) -> int:
        raw = self.environ.get(name)
        if raw is None or raw.strip() == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            raise SettingsError(f"{name} must be a whole number, not {raw!r}") from None
        if not low <= value <= high:
            raise SettingsError(f"{name} must be between {low} and {high}, not {value}")
        return value

    def duration(self, name: str, default: float) -> float:
        raw = self.environ.get(name)
        if raw is None or raw.strip() == "":
            return default
        try:
            return parse_duration(raw)
        except ValueError:
            raise SettingsError(
                f"{name} must be a duration such as 30, 90s, 15m, 2h or 1d, not {raw!r}"
            ) from None

    def rate(self, name: str, default: str) -> Rate:
        raw = self.environ.get(name) or default
        try:
            return parse_rate(raw)
        except ValueError:
            raise SettingsError(
                f"{name} must be a rate such as 5/s, 60/min or 50/day, not {raw!r}"
            ) from None

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.environ.get(name, default).strip().upper() or default
        if value not in choices:
            raise SettingsError(f"{name} must be one of {', '.join(choices)}, not {value!r}")
        return value

    def url(self, name: str, schemes: tuple[str, ...]) -> str:
        raw = self.environ.get(name, "").strip()
        if raw and raw.split("://", 1)[0] not in schemes:
            allowed = ", ".join(f"{s}://" for s in schemes)
            # Never echo the value: URLs carry passwords.
            raise SettingsError(f"{name} must start with one of {allowed}")
        return raw
