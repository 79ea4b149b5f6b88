"""Configuration: one YAML file overridden by ``WATCHDOG_*`` environment variables
(nested with ``__``), validated into typed Settings. Every problem becomes one
ConfigError line naming the file, the policy and the field."""

from __future__ import annotations

import ipaddress
import re
import typing
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from watchdog.durations import Duration
from watchdog.policies import Policy
from watchdog.pricing import Price

DEFAULT_CONFIG = Path("config/watchdog.yaml")
NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"


class ConfigError(Exception):
    """A configuration problem; the CLI prints it as one line and exits 78."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProviderSettings(_Strict):
    """One OpenAI-compatible Batch API. The key lives in the environment or a file."""

    base_url: str = Field(
        pattern=r"^https?://[^\s/]+", description="e.g. https://api.openai.com/v1"
    )
    api_key_env: str | None = Field(default=None, description="environment variable with the key")
    api_key_file: Path | None = Field(default=None, description="file with the key (k8s secret)")
    timeout: Duration = Field(default=timedelta(seconds=30), description="per HTTP request")
    max_retries: int = Field(default=2, ge=0, le=10, description="retries of a transient failure")
    concurrency: int = Field(default=16, ge=1, le=512, description="requests in flight at once")
    allow_insecure_http: bool = Field(
        default=False, description="allow http:// to a host that is not loopback (keys in clear)"
    )

    @model_validator(mode="after")
    def _tls_unless_loopback(self) -> ProviderSettings:
        url = urlsplit(self.base_url)
        if url.scheme == "http" and not self.allow_insecure_http and not _loopback(url.hostname):
            raise ValueError(
                "base_url: http:// would send the key in clear; use https://, a loopback "
                "host, or set allow_insecure_http: true"
            )
        return self

    def read_key(self, name: str, environ: Mapping[str, str]) -> SecretStr | None:
        """The API key, or None when the provider needs none; ConfigError when it is missing."""
        if self.api_key_env:
            value = environ.get(self.api_key_env, "").strip()
            if not value:
                raise ConfigError(
                    f"provider {name!r}: environment variable {self.api_key_env} is not set"
                )
            return SecretStr(value)
        if self.api_key_file:
            try:
                return SecretStr(self.api_key_file.read_text().strip())
            except OSError as exc:
                raise ConfigError(
                    f"provider {name!r}: cannot read api_key_file {self.api_key_file}: "
                    f"{exc.strerror}"
                ) from None
        return None


class HttpSettings(_Strict):
    """The /healthz, /readyz and /metrics server."""

    enabled: bool = True
    host: str = Field(default="127.0.0.1", description="loopback unless you mean otherwise")
    port: int = Field(default=9464, ge=0, le=65535, description="0: any free port (tests)")


class SafetySettings(_Strict):
    """Limits that hold whatever the policies say."""

    max_cancels_per_tick: int = Field(default=20, ge=0, description="cancels in one tick")
    max_cancels_per_hour: int = Field(default=100, ge=0, description="cancels in any hour")
    cool_down: Duration | None = Field(
        default=timedelta(hours=1),
        description="after a trip, alert-only this long (null: until `resume`)",
    )
    exempt_metadata: dict[str, str] = Field(
        default_factory=lambda: {"watchdog": "off"},
        description="batches whose metadata has all these pairs are never cancelled",
    )
    cancel_poll_interval: Duration = Field(
        default=timedelta(seconds=15), description="poll a cancelled batch this often until done"
    )
    cancel_stuck_after: Duration = Field(
        default=timedelta(minutes=15), description="cancelling longer than this: cancel_stuck"
    )


NotifyEvent = Literal[
    "policy_matched", "cancel_succeeded", "cancel_failed", "cancel_stuck", "safety_tripped"
]
NOTIFY_EVENTS: tuple[NotifyEvent, ...] = typing.get_args(NotifyEvent)


class Webhook(_Strict):
    """A receiver of JSON messages (Slack-compatible ``text`` plus the event)."""

    url: str = Field(pattern=r"^https?://[^\s/]+", description="receives a JSON POST")
    events: list[NotifyEvent] = Field(default_factory=lambda: list(NOTIFY_EVENTS))
    timeout: Duration = timedelta(seconds=10)


class NotifySettings(_Strict):
    webhooks: list[Webhook] = Field(default_factory=list)


class Settings(BaseSettings):
    """Everything the daemon is told, after the YAML file and the environment."""

    model_config = SettingsConfigDict(
        env_prefix="WATCHDOG_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    database_url: str = "sqlite+aiosqlite:///watchdog.db"
    poll_interval: Duration = timedelta(seconds=60)
    dry_run: bool = False
    safety: SafetySettings = Field(default_factory=SafetySettings)
    notify: NotifySettings = Field(default_factory=NotifySettings)
    lease_duration: Duration = Field(
        default=timedelta(minutes=5),
        description="how long a claimed batch stays a replica's; a dead one's come back after it",
    )
    adaptive_polling: bool = Field(
        default=True,
        description="poll a batch again just as its spend passes a cost cap, not an interval later",
    )
    bulk_refresh_at: int = Field(
        default=200,
        ge=0,
        description="page the list endpoint once this many batches of a provider are due "
        "(0: always single GETs)",
    )
    shutdown_timeout: Duration = Field(
        default=timedelta(seconds=30), description="how long SIGTERM waits for a tick in flight"
    )
    http: HttpSettings = Field(default_factory=HttpSettings)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"
    providers: dict[str, ProviderSettings] = Field(default_factory=dict)
    pricing: list[Price] = Field(default_factory=list)
    policies: list[Policy] = Field(default_factory=list)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The YAML document arrives as init kwargs; the environment overrides it.
        return (env_settings, init_settings)

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.poll_interval < timedelta(seconds=1):
            raise ValueError("poll_interval: must be at least 1s")
        if self.lease_duration < timedelta(seconds=1):
            raise ValueError("lease_duration: must be at least 1s")
        for name in self.providers:
            if not _valid_name(name):
                raise ValueError(f"providers: bad provider name {name!r}")
        seen: set[str] = set()
        for policy in self.policies:
            if policy.name in seen:
                raise ValueError(f"policies: duplicate policy name {policy.name!r}")
            seen.add(policy.name)
            self._known_provider(policy.match.provider, f"policy {policy.name!r}: match.provider")
        for index, price in enumerate(self.pricing):
            self._known_provider(price.provider, f"pricing[{index}].provider")
        return self

    def _known_provider(self, name: str | None, where: str) -> None:
        if name is not None and name not in self.providers:
            raise ValueError(f"{where}: unknown provider {name!r}; known: {self.provider_list()}")

    def provider_list(self) -> str:
        return ", ".join(sorted(self.providers)) or "(none configured)"


def _loopback(host: str | None) -> bool:
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _valid_name(name: str) -> bool:
    return re.fullmatch(NAME_PATTERN, name) is not None


def config_path(cli_value: str | None, environ: Mapping[str, str]) -> Path:
    """``--config``, else ``$WATCHDOG_CONFIG``, else ``config/watchdog.yaml``."""
    return Path(cli_value or environ.get("WATCHDOG_CONFIG") or DEFAULT_CONFIG)


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: config file not found (use --config or WATCHDOG_CONFIG)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of settings")
    return data


def load_settings(path: Path) -> Settings:
    """Read the file, apply ``WATCHDOG_*`` overrides, validate; ConfigError on any problem."""
    data = read_yaml(path)
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {explain(exc, data)}") from None


def explain(exc: ValidationError, data: Mapping[str, Any]) -> str:
    """The first validation error as 'policy NAME: field: problem', plus how many more."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    loc = tuple(first["loc"])
    message = _message(first, loc)
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{_where(loc, data)}{message}{more}"


def _where(loc: tuple[Any, ...], data: Mapping[str, Any]) -> str:
    if len(loc) >= 2 and loc[0] == "policies" and isinstance(loc[1], int):
        policies = data.get("policies")
        name = None
        if isinstance(policies, list) and loc[1] < len(policies):
            entry = policies[loc[1]]
            name = entry.get("name") if isinstance(entry, dict) else None
        label = f"policy {name!r}" if name else f"policies[{loc[1]}]"
        field = ".".join(str(p) for p in loc[2:]) or "(policy)"
        return f"{label}: {field}: "
    field = ".".join(str(p) for p in loc)
    return f"{field}: " if field else ""


def _message(error: Any, loc: tuple[Any, ...]) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        valid = _valid_keys(loc[:-1])
        return "unknown key" + (f"; valid keys: {', '.join(valid)}" if valid else "")
    if kind == "literal_error":
        return str(error["msg"]).replace("Input should be", "must be")
    message = str(error["msg"])
    return message.removeprefix("Value error, ")


def _valid_keys(loc: tuple[Any, ...]) -> list[str]:
    model: Any = Settings
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return []
        field = model.model_fields.get(part)
        if field is not None:  # else a dict key, such as a provider's name
            model = _model_in(field.annotation)
    if isinstance(model, type) and issubclass(model, BaseModel):
        return sorted(model.model_fields)
    return []


def _model_in(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None
