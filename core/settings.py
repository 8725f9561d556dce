"""One settings object, read from the environment once per process and passed down.

Every variable the product reads is declared here (and listed in docs/configuration.md).
``Settings`` is a pydantic-settings model: each field names its variable (its alias) and
validates it. A bad value raises :class:`SettingsError` whose message is one line naming the
variable and what is wrong; entrypoints print that line and exit 2. So does a variable that
looks like ours but is not one (``JIRA_PROJECT`` for ``JIRA_PROJECTS``: the closest name is
suggested) and a source configured by half (``JIRA_URL`` and ``JIRA_EMAIL`` without
``JIRA_API_TOKEN``): either would otherwise be ignored and sync something else than meant.

Secrets are :class:`Secret` values: plain strings to the code that uses them, masked in every
repr (of the field, of ``Settings``, of ``SourceSettings``).
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import AfterValidator, BeforeValidator, Field, SkipValidation, ValidationError, model_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict

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
        "SLACK_THREAD_SWEEP": "prune",
    },
    "github": {
        "GITHUB_API_URL": "https://api.github.com",
        "GITHUB_WEBHOOK_SECRET": "",
        "GITHUB_REPOS": "",
        "GITHUB_HOOK": "",
        "GITHUB_REDELIVERY_INTERVAL": "60s",
    },
    "notion": {
        "NOTION_API_URL": "https://api.notion.com",
        "NOTION_WEBHOOK_TOKEN": "",
        "NOTION_VERSION": "2022-06-28",
        "NOTION_BLOCK_COMMENTS": "200",
    },
    "tempo": {"TEMPO_API_URL": "https://api.tempo.io"},
    "fireflies": {
        "FIREFLIES_API_URL": "https://api.fireflies.ai/graphql",
        "FIREFLIES_WEBHOOK_SECRET": "",
        "FIREFLIES_RECHECK_WINDOW": "14d",
    },
}

#: Per source: the variables that say someone means to use it. Any of them set while a
#: credential is missing is a start-up error (half a source), and any of them set keeps ``up``
#: out of the sandbox. Tuning knobs (API URLs, intervals, budgets) do not count: GitHub
#: Actions, for one, sets ``GITHUB_API_URL`` in every job.
SOURCE_INTENT: dict[str, tuple[str, ...]] = {
    "jira": ("JIRA_URL", "JIRA_EMAIL", "JIRA_API_TOKEN", "JIRA_WEBHOOK_SECRET", "JIRA_PROJECTS"),
    "slack": ("SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET", "SLACK_CHANNELS"),
    "github": ("GITHUB_TOKEN", "GITHUB_WEBHOOK_SECRET", "GITHUB_REPOS", "GITHUB_HOOK"),
    "notion": ("NOTION_TOKEN", "NOTION_WEBHOOK_TOKEN"),
    "tempo": ("TEMPO_API_TOKEN",),
    "fireflies": ("FIREFLIES_API_KEY", "FIREFLIES_WEBHOOK_SECRET"),
}

#: Source variables that are http(s) URLs, checked at start-up (not at the first request).
SOURCE_URLS = ("JIRA_URL", "SLACK_API_URL", "GITHUB_API_URL", "NOTION_API_URL", "TEMPO_API_URL",
               "FIREFLIES_API_URL")

#: Variables in the prefixes we own that other software sets: never mistaken for a typo.
#: GitHub Actions sets these ``GITHUB_*`` in every job (``GITHUB_TOKEN`` and ``GITHUB_API_URL``
#: are ours as well).
FOREIGN_VARIABLES = frozenset({
    "GITHUB_ACTION", "GITHUB_ACTION_PATH", "GITHUB_ACTION_REPOSITORY", "GITHUB_ACTIONS",
    "GITHUB_ACTOR", "GITHUB_ACTOR_ID", "GITHUB_BASE_REF", "GITHUB_ENV", "GITHUB_EVENT_NAME",
    "GITHUB_EVENT_PATH", "GITHUB_GRAPHQL_URL", "GITHUB_HEAD_REF", "GITHUB_JOB", "GITHUB_OUTPUT",
    "GITHUB_PATH", "GITHUB_REF", "GITHUB_REF_NAME", "GITHUB_REF_PROTECTED", "GITHUB_REF_TYPE",
    "GITHUB_REPOSITORY", "GITHUB_REPOSITORY_ID", "GITHUB_REPOSITORY_OWNER",
    "GITHUB_REPOSITORY_OWNER_ID", "GITHUB_RETENTION_DAYS", "GITHUB_RUN_ATTEMPT", "GITHUB_RUN_ID",
    "GITHUB_RUN_NUMBER", "GITHUB_SERVER_URL", "GITHUB_SHA", "GITHUB_STATE", "GITHUB_STEP_SUMMARY",
    "GITHUB_TRIGGERING_ACTOR", "GITHUB_WORKFLOW", "GITHUB_WORKFLOW_REF", "GITHUB_WORKFLOW_SHA",
    "GITHUB_WORKSPACE",
})

#: Variables read by one command rather than by Settings (``vector-sync mcp``'s key).
COMMAND_VARIABLES = ("VECTOR_SYNC_API_KEY",)

#: A variable starting with one of these is ours: an unknown one is a typo, not someone else's.
OWN_PREFIXES = tuple(f"{name.upper()}_" for name in SOURCE_NAMES) + ("VECTOR_SYNC_",)

#: Secrets: readable from ``NAME_FILE``, masked in reprs.
SECRET_NAME = re.compile(r"[A-Z0-9_]+_(TOKEN|KEY|SECRET|PASSWORD)|DATABASE_URL|REDIS_URL|ALERT_SLACK_WEBHOOK_URL")

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
    """What one source is configured with. ``env`` holds its raw variables (secrets as
    :class:`Secret`)."""

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


# --- field types: each validates the raw string of its variable -------------------------------
# A validator's message is what follows the variable's name ("must be a whole number, ...");
# ``Settings.from_environ`` puts the name in front (the field's alias).


class _Invalid(ValueError):
    """A variable's value is wrong; the message is what follows its name."""


def _invalid(message: str) -> _Invalid:
    return _Invalid(message)


def _stripped(raw: Any) -> Any:
    return raw.strip() if isinstance(raw, str) else raw


def _whole(low: int, high: int) -> BeforeValidator:
    def check(raw: Any) -> int:
        if isinstance(raw, int):
            value = raw
        else:
            try:
                value = int(raw)
            except ValueError:
                raise _invalid(f"must be a whole number, not {raw!r}") from None
        if not low <= value <= high:
            raise _invalid(f"must be between {low} and {high}, not {value}")
        return value

    return BeforeValidator(check)


def duration_text(seconds: float | None) -> str:
    """A duration in the units settings take: ``42s``, ``6.0m``, ``1.1h``, ``3.0d``."""
    if seconds is None:
        return "?"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def _duration(raw: Any) -> float:
    if isinstance(raw, (int, float)):
        return float(raw)
    try:
        return parse_duration(raw)
    except ValueError:
        raise _invalid(f"must be a duration such as 30, 90s, 15m, 2h or 1d, not {raw!r}") from None


def _time_scale(raw: Any) -> float:
    """A factor in (0, 1] that shortens every request budget's period (tests and demos compress
    a day's quota into seconds)."""
    try:
        value = float(raw.strip() if isinstance(raw, str) else raw)
    except ValueError:
        raise _invalid(f"must be a number above 0 and at most 1, such as 0.001, not {raw!r}") from None
    if not 0 < value <= 1:
        raise _invalid(f"must be a number above 0 and at most 1, such as 0.001, not {raw!r}")
    return value


def _at_least(low: float) -> Any:
    def check(value: float) -> float:
        if value < low:
            raise _invalid(f"must be at least {low:g} seconds, not {value:g}")
        return value

    return check


def _choice(*choices: str, upper: bool = True, listed: str = "") -> BeforeValidator:
    def check(raw: Any) -> str:
        value = raw.strip().upper() if upper else raw.strip().lower()
        if value not in choices:
            raise _invalid(f"must be {listed or 'one of ' + ', '.join(choices)}, not {value!r}")
        return value

    return BeforeValidator(check)


def _scheme(*schemes: str) -> AfterValidator:
    """A URL that may carry a password (a database's, Redis's): its scheme is checked, and
    the value is never echoed."""

    def check(value: str) -> Secret:
        if value and value.split("://", 1)[0] not in schemes:
            raise _invalid(f"must start with one of {', '.join(f'{s}://' for s in schemes)}")
        return Secret(value)

    return AfterValidator(check)


def check_http_url(value: str, *, example: str = "https://host", echo: bool = True) -> str:
    """``value`` is empty or an ``http(s)://host...`` URL; the message (without the variable's
    name) otherwise. A URL without a scheme would fail every request at run time, as an error
    retried for minutes, instead of stopping start-up."""
    if not value:
        return ""
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        parts = None
    if (parts is None or parts.scheme not in ("http", "https") or not parts.hostname
            or any(c.isspace() for c in value)):
        shown = f", not {value!r}" if echo else ""
        raise _invalid(f"must be an http:// or https:// URL such as {example}{shown}")
    return value


def _http_url(example: str, *, secret: bool = False, bare_host: bool = False) -> AfterValidator:
    """``bare_host``: a host name without scheme is fine too (Pinecone's console shows the
    index host that way, and its SDK puts ``https://`` in front)."""

    def check(value: str) -> str:
        if bare_host and value and "://" not in value:
            try:
                check_http_url(f"https://{value}", example=example)
            except _Invalid:
                raise _invalid(f"must be a host name or an http:// or https:// URL such as {example}"
                               + ("" if secret else f", not {value!r}")) from None
        else:
            check_http_url(value, example=example, echo=not secret)
        return Secret(value) if secret else value

    return AfterValidator(check)


Text = Annotated[str, BeforeValidator(_stripped)]
SecretText = Annotated[str, BeforeValidator(_stripped), AfterValidator(Secret)]
Duration = Annotated[float, BeforeValidator(_duration)]


class Settings(BaseSettings):
    """Every setting of a process. Build it with :meth:`from_environ`; fields are named after
    their meaning, their aliases are the variables."""

    model_config = SettingsConfigDict(frozen=True, case_sensitive=True, env_ignore_empty=True,
                                      extra="forbid", validate_by_name=True, validate_by_alias=True)

    home: Annotated[Path, BeforeValidator(_stripped), AfterValidator(Path.absolute)] = Field(
        Path(".vector-sync"), alias="VECTOR_SYNC_HOME", validate_default=True)
    database_url: Annotated[str, BeforeValidator(_stripped), _scheme("postgres", "postgresql")] = Field(
        Secret(""), alias="DATABASE_URL")
    redis_url: Annotated[str, BeforeValidator(_stripped), _scheme("redis", "rediss", "unix")] = Field(
        Secret(""), alias="REDIS_URL")
    host: Text = Field("127.0.0.1", alias="HOST")
    port: Annotated[int, _whole(1, 65535)] = Field(8080, alias="PORT")
    admin_api_key: SecretText = Field(Secret(""), alias="ADMIN_API_KEY")
    log_level: Annotated[str, _choice("DEBUG", "INFO", "WARNING", "ERROR")] = Field("INFO", alias="LOG_LEVEL")
    http_timeout: Duration = Field(10.0, alias="HTTP_TIMEOUT")
    chunk_tokens: Annotated[int, _whole(32, 8000)] = Field(512, alias="CHUNK_TOKENS")
    chunk_overlap_tokens: Annotated[int, _whole(0, 1000)] = Field(48, alias="CHUNK_OVERLAP_TOKENS")
    embedding_model: Text = Field("text-embedding-3-small", alias="EMBEDDING_MODEL")
    embedding_dimensions: Annotated[int, _whole(8, 2000)] = Field(1536, alias="EMBEDDING_DIMENSIONS")
    embedding_batch_size: Annotated[int, _whole(1, 2048)] = Field(2048, alias="EMBEDDING_BATCH_SIZE")
    openai_api_key: SecretText = Field(Secret(""), alias="OPENAI_API_KEY")
    openai_base_url: Annotated[str, BeforeValidator(_stripped), _http_url("https://api.openai.com/v1")] = Field(
        "", alias="OPENAI_BASE_URL")
    pinecone_api_key: SecretText = Field(Secret(""), alias="PINECONE_API_KEY")
    pinecone_host: Annotated[str, BeforeValidator(_stripped), _http_url("https://my-index-abc123.svc.pinecone.io", bare_host=True)] = Field(
        "", alias="PINECONE_HOST")
    pinecone_namespace: Text = Field("vector-sync", alias="PINECONE_NAMESPACE")
    webhook_max_bytes: Annotated[int, _whole(1024, 64 * 1024 * 1024)] = Field(1024 * 1024, alias="WEBHOOK_MAX_BYTES")
    #: Seconds between two writes of the receiver's webhook counters to source_stats.
    webhook_counts_interval: Annotated[Duration, AfterValidator(_at_least(0.1))] = Field(
        1.0, alias="WEBHOOK_COUNTS_INTERVAL")
    worker_processes: Annotated[int, _whole(1, 64)] = Field(1, alias="WORKER_PROCESSES")
    worker_threads: Annotated[int, _whole(1, 256)] = Field(8, alias="WORKER_THREADS")
    max_retries: Annotated[int, _whole(0, 100)] = Field(8, alias="MAX_RETRIES")
    max_wait: Duration = Field(3 * 86400.0, alias="MAX_WAIT")
    reconcile_overlap: Duration = Field(600.0, alias="RECONCILE_OVERLAP")
    reconcile_tick: Duration = Field(5.0, alias="RECONCILE_TICK")
    budget_time_scale: Annotated[float, BeforeValidator(_time_scale)] = Field(1.0, alias="BUDGET_TIME_SCALE")
    prune_interval: Duration = Field(86400.0, alias="PRUNE_INTERVAL")
    #: The reconciler's drift audit per scope; 0 = never.
    verify_interval: Duration = Field(86400.0, alias="VERIFY_INTERVAL")
    heartbeat_interval: Duration = Field(10.0, alias="HEARTBEAT_INTERVAL")
    heartbeat_timeout: Duration = Field(60.0, alias="HEARTBEAT_TIMEOUT")
    worker_recovery_after: Duration = Field(30.0, alias="WORKER_RECOVERY_AFTER")
    stuck_after: Duration = Field(900.0, alias="STUCK_AFTER")
    document_failing_after: Duration = Field(60.0, alias="DOCUMENT_FAILING_AFTER")
    alert_slack_webhook_url: Annotated[
        str, BeforeValidator(_stripped), _http_url("https://hooks.slack.com/services/...", secret=True)
    ] = Field(Secret(""), alias="ALERT_SLACK_WEBHOOK_URL")
    sandbox: Annotated[str, _choice("auto", "on", "off", upper=False, listed="auto, on or off")] = Field("auto", alias="SANDBOX")
    #: Sandbox mode: simulator i listens on SANDBOX_PORT_BASE + i.
    sandbox_port_base: Annotated[int, _whole(1024, 65000)] = Field(8200, alias="SANDBOX_PORT_BASE")
    # Exposure and observability (docs/operations.md, "Exposing the receiver" and "Metrics").
    status_api_key: SecretText = Field(Secret(""), alias="STATUS_API_KEY")
    #: ``webhooks`` by default once a status key is set: setting one is asking for the gate.
    public_routes: Annotated[str, _choice("all", "webhooks", upper=False, listed="all or webhooks")] = Field(
        "all", alias="PUBLIC_ROUTES")
    status_cache_ttl: Duration = Field(5.0, alias="STATUS_CACHE_TTL")
    metrics_port: Annotated[int, _whole(0, 65535)] = Field(0, alias="METRICS_PORT")
    metrics_host: Text = Field("0.0.0.0", alias="METRICS_HOST")
    #: Per source, built by ``from_environ`` (not a variable of its own).
    sources: SkipValidation[Mapping[str, SourceSettings]] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _public_routes_follow_the_status_key(cls, data: Any) -> Any:
        if isinstance(data, dict) and not (data.get("PUBLIC_ROUTES") or data.get("public_routes")):
            key = data.get("STATUS_API_KEY") or data.get("status_api_key")
            data = {**data, "PUBLIC_ROUTES": "webhooks" if key else "all"}
        return data

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: Any,
                                   env_settings: Any, dotenv_settings: Any,
                                   file_secret_settings: Any) -> tuple[Any, ...]:
        # Only what from_environ passes in: one place reads the environment, with NAME_FILE
        # resolved and unknown names caught first.
        return (init_settings,)

    @classmethod
    def variables(cls) -> list[str]:
        """The variables the model's own fields read (sources' variables aside)."""
        return [f.alias for f in cls.model_fields.values() if f.alias]

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = read_secret_files(os.environ if environ is None else environ)
        check_names(env)
        values = _Environment(cls, env)()
        sources = {name: _source_settings(name, _Env(env)) for name in SOURCE_NAMES}
        present = tuple(var for name in SOURCE_NAMES for var in SOURCE_INTENT[name]
                        if env.get(var, "").strip())
        check_sources(sources, present)
        try:
            return cls(**values, sources=sources)
        except ValidationError as exc:
            raise SettingsError(_one_line(exc)) from None

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed (``Settings`` is frozen; it is no dataclass, so
        ``dataclasses.replace`` does not apply)."""
        unknown = set(changes) - set(type(self).model_fields)
        if unknown:
            raise TypeError(f"not a field of Settings: {', '.join(sorted(unknown))}")
        values = {name: getattr(self, name) for name in type(self).model_fields}
        return type(self)(**{**values, **changes})  # validated again: secrets stay Secret

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
        """Sandbox mode: asked for, or ``auto`` with no source configured. A source variable
        set without its credentials is a start-up error (``check_sources``), so ``auto`` never
        shows simulated data to someone who set one."""
        if self.sandbox == "auto":
            return not self.configured_sources()
        return self.sandbox == "on"


class _Environment(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping (``os.environ`` or a test's
    dict) rather than the process environment. Reads exactly the fields' variables."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls, case_sensitive=True, env_ignore_empty=True)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        names = self.settings_cls.variables()  # type: ignore[attr-defined]
        found = {name: self._environ.get(name) for name in names}
        return {name: value for name, value in found.items()
                if value is not None and value.strip() != ""}


def _one_line(exc: ValidationError) -> str:
    error = exc.errors(include_url=False)[0]
    name = str(error["loc"][0]) if error["loc"] else "settings"
    cause = (error.get("ctx") or {}).get("error")
    return f"{name} {cause if isinstance(cause, _Invalid) else error['msg']}"


def _source_settings(name: str, env: _Env) -> SourceSettings:
    raw: dict[str, str] = {var: env.str(var, "") for var in SOURCE_CREDENTIALS[name]}
    raw |= {var: env.str(var, default) for var, default in SOURCE_OPTIONS[name].items()}
    if name == "tempo":  # Tempo v4 gives issue ids; keys and summaries come from Jira.
        raw |= {var: env.str(var, "") for var in SOURCE_CREDENTIALS["jira"]}
    for var in raw:
        if var in SOURCE_URLS:
            try:
                check_http_url(raw[var], example=_URL_EXAMPLES.get(var, "https://host"))
            except _Invalid as exc:
                raise SettingsError(f"{var} {exc}") from None
    if name == "github":
        _check_github_hook(raw, env)
    if name == "notion" and not re.fullmatch(r"\d{1,5}", raw.get("NOTION_BLOCK_COMMENTS", "").strip() or "0"):
        raise SettingsError(f"NOTION_BLOCK_COMMENTS must be a whole number of blocks from 0 to 99999 "
                            f"(0 reads no inline comments), not {raw['NOTION_BLOCK_COMMENTS']!r}")
    raw = {var: Secret(value) if SECRET_NAME.fullmatch(var) else value for var, value in raw.items()}
    upper = name.upper()
    poll = env.duration(f"{upper}_POLL_INTERVAL", DEFAULT_POLL_INTERVAL[name])
    rate = env.rate(f"{upper}_RATE_LIMIT", DEFAULT_RATE_LIMIT[name])
    scale = env.environ.get("BUDGET_TIME_SCALE", "").strip()
    if scale:  # validated again (and named) by the Settings field
        try:
            rate = Rate(rate.limit, rate.period * _time_scale(scale))
        except _Invalid as exc:
            raise SettingsError(f"BUDGET_TIME_SCALE {exc}") from None
    return SourceSettings(
        name=name,
        env=raw,
        poll_interval=poll,
        # Stale when two polls in a row have been missed (plus slack for a slow pass).
        stale_after=env.duration(f"{upper}_STALE_AFTER", 2 * poll + 300),
        rate=rate,
    )


#: ``GITHUB_HOOK``: the webhook whose failed deliveries the reconciler redelivers.
GITHUB_HOOK_PATH = re.compile(r"^(orgs/[A-Za-z0-9._-]+|repos/[A-Za-z0-9._-]+/[A-Za-z0-9._-]+)/hooks/[0-9]{1,20}$")


def _check_github_hook(raw: dict[str, str], env: _Env) -> None:
    """``GITHUB_HOOK`` names an organisation or repository hook (its path, as in the REST API:
    a leading ``/`` or the API URL in front is accepted and dropped); the repair cadence is a
    positive duration."""
    hook = raw.get("GITHUB_HOOK", "").strip()
    for prefix in (raw.get("GITHUB_API_URL", "").rstrip("/"), "https://api.github.com"):
        if prefix and hook.startswith(prefix + "/"):
            hook = hook[len(prefix):]
    hook = hook.strip("/")
    if hook and not GITHUB_HOOK_PATH.fullmatch(hook):
        raise SettingsError(f"GITHUB_HOOK must be a hook path such as orgs/acme/hooks/12345678 or "
                            f"repos/acme/api/hooks/12345678, not {raw['GITHUB_HOOK']!r}")
    raw["GITHUB_HOOK"] = hook
    interval = env.duration("GITHUB_REDELIVERY_INTERVAL", 60.0)
    if interval <= 0:
        raise SettingsError("GITHUB_REDELIVERY_INTERVAL must be a positive duration such as 60s or 5m")
    raw["GITHUB_REDELIVERY_INTERVAL"] = str(interval)


_URL_EXAMPLES = {"JIRA_URL": "https://your-site.atlassian.net"}


def known_variables() -> set[str]:
    """Every variable vector-sync reads (``NAME_FILE`` forms of secrets included)."""
    names = set(Settings.variables()) | set(COMMAND_VARIABLES)
    for name in SOURCE_NAMES:
        upper = name.upper()
        names |= set(SOURCE_CREDENTIALS[name]) | set(SOURCE_OPTIONS[name])
        names |= {f"{upper}_POLL_INTERVAL", f"{upper}_STALE_AFTER", f"{upper}_RATE_LIMIT"}
    return names | {f"{n}_FILE" for n in names if SECRET_NAME.fullmatch(n)}


def check_names(environ: Mapping[str, str]) -> None:
    """A set variable in one of our prefixes (``JIRA_``, ..., ``VECTOR_SYNC_``) that is no
    setting is a typo: ``JIRA_PROJECT=ENG`` ignored would sync every project the token sees."""
    known = known_variables()
    for var in sorted(environ):
        if (var.startswith(OWN_PREFIXES) and var not in known and var not in FOREIGN_VARIABLES
                and str(environ[var]).strip()):
            close = difflib.get_close_matches(var, sorted(known), n=1, cutoff=0.6)
            hint = f"did you mean {close[0]}?" if close else "see docs/configuration.md"
            raise SettingsError(f"{var} is not a vector-sync setting; {hint} (unset {var} to go on)")


def check_sources(sources: Mapping[str, SourceSettings], present: tuple[str, ...]) -> None:
    """Half a source (some of its variables set, a credential missing) stops start-up naming
    what is missing: silently "not configured", it would look like a source that works."""
    for name in SOURCE_NAMES:
        given = [var for var in SOURCE_INTENT[name] if var in present]
        if not given:
            continue
        missing = [var for var in SOURCE_CREDENTIALS[name] if not sources[name].get(var)]
        if missing:
            verb = "is" if len(missing) == 1 else "are"
            raise SettingsError(
                f"{name} is configured by half: {_and(missing)} {verb} not set "
                f"({_and(given)} {'is' if len(given) == 1 else 'are'}); set {_and(missing)} "
                f"or unset {'it' if len(given) == 1 else 'them'}"
            )


def _and(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def read_secret_files(environ: Mapping[str, str]) -> Mapping[str, str]:
    """``NAME_FILE`` for every secret ``NAME``: the environment with ``NAME`` set to that file's
    contents, trailing newline stripped (container and Kubernetes secrets arrive as files).

    Secrets are the names ending in ``_TOKEN``, ``_KEY``, ``_SECRET`` or ``_PASSWORD``, and the
    URLs that may carry a password. Setting both ``NAME`` and ``NAME_FILE`` is an error, and so
    is a file that cannot be read; neither message shows a value.
    """
    secret = SECRET_NAME
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
