"""Configuration: one YAML file, where settings live, explicitly overridden by
``WATCHDOG_*`` environment variables (nested with ``__``; each override is reported, an
unknown one is an error), validated into typed Settings. Every problem becomes one
ConfigError line naming the file, the policy and the field."""

from __future__ import annotations

import ipaddress
import os
import re
import typing
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from pydantic_settings.sources.utils import parse_env_vars

from watchdog.core.budgets import Budget
from watchdog.core.cadence import Cadence
from watchdog.core.config import (
    NAME_PATTERN,
    ApiToken,
    NotifySettings,
    RetentionSettings,
    Role,
    SafetySettings,
    Timeout,
)
from watchdog.core.durations import Duration
from watchdog.core.estimates import EstimateSettings
from watchdog.core.observe import Rules
from watchdog.core.policies import Discovery, Policy, or_a_switch
from watchdog.core.pricing import Price
from watchdog.core.schema import Strict, error_text, model_in
from watchdog.providers.dialects import (
    ANTHROPIC_VERSION,
    AZURE_API_VERSION,
    AZURE_V1,
    DIALECTS,
    Api,
    Auth,
)

DEFAULT_CONFIG = Path("config/watchdog.yaml")
ENV_PREFIX = "WATCHDOG_"
# WATCHDOG_* variables that are not settings: the config path, and what systemd sets
# for its watchdog (WatchdogSec=).
NOT_SETTINGS = frozenset({"WATCHDOG_CONFIG", "WATCHDOG_USEC", "WATCHDOG_PID"})


class ConfigError(Exception):
    """A configuration problem; the CLI prints it as one line and exits 78."""


class ProviderSettings(Strict):
    """One OpenAI-compatible Batch API. The key lives in the environment or a file."""

    base_url: str = Field(
        pattern=r"^https?://[^\s/]+", description="e.g. https://api.openai.com/v1"
    )
    api_key_env: str | None = Field(default=None, description="environment variable with the key")
    api_key_file: Path | None = Field(default=None, description="file with the key (k8s secret)")
    timeout: Timeout = Field(default=timedelta(seconds=30), description="per HTTP request")
    max_retries: int = Field(default=2, ge=0, le=10, description="retries of a transient failure")
    concurrency: int = Field(default=16, ge=1, le=512, description="requests in flight at once")
    allow_insecure_http: bool = Field(
        default=False, description="allow http:// to a host that is not loopback (keys in clear)"
    )
    api: Api = Field(
        default="openai", description="the Batch API's dialect (see README: API kinds)"
    )
    api_version: str | None = Field(
        default=None,
        description=f"azure: the api-version query parameter (default {AZURE_API_VERSION}; "
        f"{AZURE_V1} for the v1 data plane, which takes none); anthropic: the "
        f"anthropic-version header (default {ANTHROPIC_VERSION})",
    )
    auth: Auth | None = Field(
        default=None,
        description="how the key is sent: bearer (Authorization), api-key or x-api-key; "
        "default: the kind's (api-key for azure, bearer for the others)",
    )
    discover: Discovery | None = Field(
        default=None,
        description="track the account's batches from its list by itself (true, or "
        "match/created_within); off by default",
        json_schema_extra=or_a_switch,
    )
    estimate: bool | None = Field(
        default=None,
        description="read each batch's input file to estimate its cost before it runs "
        "(default: on where the API kind serves files; anthropic does not)",
    )

    @field_validator("api_version", mode="before")
    @classmethod
    def _version_as_written(cls, value: Any) -> Any:
        # YAML reads a bare 2024-10-21, as Azure's documents write it, as a date.
        return value.isoformat() if isinstance(value, date) else value

    @field_validator("discover", mode="before")
    @classmethod
    def _discover_switch(cls, value: Any) -> Any:
        if value is True:
            return {}
        return None if value is False else value

    @model_validator(mode="after")
    def _tls_and_files(self) -> ProviderSettings:
        url = urlsplit(self.base_url)
        if url.scheme == "http" and not self.allow_insecure_http and not _loopback(url.hostname):
            raise ValueError(
                "base_url: http:// would send the key in clear; use https://, a loopback "
                "host, or set allow_insecure_http: true"
            )
        if self.estimate and DIALECTS[self.api].files is None:
            raise ValueError(f"estimate: the {self.api} API serves no input files to read")
        return self

    @property
    def estimates(self) -> bool:
        """Whether this provider's batches are estimated from their input files."""
        return DIALECTS[self.api].files is not None and self.estimate is not False

    def read_key(self, name: str, environ: Mapping[str, str]) -> SecretStr | None:
        """The API key, or None when the provider needs none; ConfigError when it is missing."""
        where = f"provider {name!r}"
        return read_secret(where, "api_key_file", self.api_key_env, self.api_key_file, environ)

    def cannot_judge(self) -> dict[str, str]:
        """The policy conditions this provider's API kind can never satisfy, and why."""
        return DIALECTS[self.api].cannot(estimates=self.estimate is not False)


def read_secret(
    where: str, file_key: str, env: str | None, path: Path | None, environ: Mapping[str, str]
) -> SecretStr | None:
    """A secret from its environment variable or its file; None when neither is set,
    ConfigError (naming ``where``, never the value) when the one set is missing or
    empty: an empty token would let an empty given token in."""
    if env:
        value = environ.get(env, "").strip()
        if not value:
            raise ConfigError(f"{where}: environment variable {env} is not set or empty")
        return SecretStr(value)
    if path:
        try:
            value = path.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not text"
            raise ConfigError(f"{where}: cannot read {file_key} {path}: {why}") from None
        if not value:
            raise ConfigError(f"{where}: {file_key} {path} is empty")
        return SecretStr(value)
    return None


class HttpSettings(Strict):
    """The /healthz, /readyz and /metrics server, the status page and the API."""

    enabled: bool = Field(True, description="serve health, readiness, metrics, page and API")
    host: str = Field(default="127.0.0.1", description="loopback unless you mean otherwise")
    port: int = Field(default=9464, ge=0, le=65535, description="0: any free port (tests)")
    token_env: str | None = Field(
        default=None, description="environment variable with the status page's token"
    )
    token_file: Path | None = Field(default=None, description="or a file holding it")
    tokens: list[ApiToken] = Field(
        default_factory=list, description="named tokens by role for the API and the page"
    )

    @field_validator("tokens")
    @classmethod
    def _unique_names(cls, tokens: list[ApiToken]) -> list[ApiToken]:
        names = [t.name for t in tokens]
        if dupes := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"token names must be unique: {', '.join(dupes)}")
        return tokens

    @property
    def loopback(self) -> bool:
        return _loopback(self.host)

    def read_tokens(self, environ: Mapping[str, str]) -> list[tuple[str, Role, SecretStr]]:
        """Every token (name, role, value): the page's ``token_env``/``token_file`` as a
        viewer named ``page``, then ``tokens``; ConfigError when one is missing or two
        hold the same value (a token must say who it is)."""
        found: list[tuple[str, Role, SecretStr]] = []
        if (page := self.read_token(environ)) is not None:
            found.append(("page", "viewer", page))
        for token in self.tokens:
            where = f"http.tokens[{token.name!r}]"
            value = read_secret(where, "file", token.env, token.file, environ)
            assert value is not None  # one source is set
            found.append((token.name, token.role, value))
        values = [v.get_secret_value() for _, _, v in found]
        if len(set(values)) < len(values):
            raise ConfigError("http.tokens: two tokens hold the same value")
        return found

    def read_token(self, environ: Mapping[str, str]) -> SecretStr | None:
        """The status page's token, or None when none is configured; ConfigError when
        it is configured but missing."""
        return read_secret("http", "token_file", self.token_env, self.token_file, environ)


class Settings(BaseSettings):
    """Everything the daemon is told, after the YAML file and the environment."""

    model_config = SettingsConfigDict(
        env_prefix="WATCHDOG_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    database_url: str = Field("sqlite+aiosqlite:///watchdog.db", description="SQLite or PostgreSQL")
    poll_interval: Duration = Field(timedelta(seconds=60), description="each batch's polls")
    dry_run: bool = Field(False, description="judge and record everything, cancel nothing")
    safety: SafetySettings = Field(default_factory=SafetySettings, description="cancel limits")
    notify: NotifySettings = Field(default_factory=NotifySettings, description="webhooks")
    retention: RetentionSettings = Field(default_factory=RetentionSettings, description="pruning")
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
    http: HttpSettings = Field(default_factory=HttpSettings, description="health, page, API")
    estimate: EstimateSettings = Field(default_factory=EstimateSettings, description="input files")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="the lowest logged"
    )
    log_format: Literal["auto", "json", "console"] = Field(
        "auto", description="auto: JSON off a tty"
    )
    providers: dict[str, ProviderSettings] = Field(default_factory=dict, description="Batch APIs")
    pricing: list[Price] = Field(default_factory=list, description="USD per 1M tokens, first wins")
    policies: list[Policy] = Field(default_factory=list, description="the first that holds acts")
    budgets: list[Budget] = Field(default_factory=list, description="pooled spending limits")
    # Where each setting that is not the file's came from: {"database_url": "env
    # WATCHDOG_DATABASE_URL", ...}; filled in by load_settings.
    _origins: dict[str, str] = PrivateAttr(default_factory=dict)

    @property
    def origins(self) -> Mapping[str, str]:
        return self._origins

    def origin(self, key: str) -> str:
        """Where a top-level setting came from: the file, the default, or an override."""
        for dotted, source in self._origins.items():
            if dotted == key or dotted.startswith(key + "."):
                return source
        return "file" if key in self.model_fields_set else "default"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The YAML document arrives as init kwargs; the environment given to
        # load_settings overrides it, and a caller's explicit overrides (the demo's)
        # override both.
        environ, overrides = _LOADING.get((os.environ, {}))
        return (
            InitSettingsSource(settings_cls, dict(overrides)),
            _EnvSource(settings_cls, environ),
            init_settings,
        )

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
        for budget in self.budgets:
            # A budget's cancels are recorded under its name, as a policy's under its own.
            if budget.name in seen:
                raise ValueError(f"budgets: name {budget.name!r} is taken by a policy or budget")
            seen.add(budget.name)
            self._known_provider(budget.match.provider, f"budget {budget.name!r}: match.provider")
        return self

    def _known_provider(self, name: str | None, where: str) -> None:
        if name is not None and name not in self.providers:
            raise ValueError(f"{where}: unknown provider {name!r}; known: {self.provider_list()}")

    def provider_list(self) -> str:
        return ", ".join(sorted(self.providers)) or "(none configured)"

    @property
    def cadence(self) -> Cadence:
        return Cadence(self.poll_interval, self.adaptive_polling)

    def rules(self, *, dry_run: bool = False) -> Rules:
        """What this config says to judge by (the daemon's, a reload's, a policy test's)."""
        return Rules(
            policies=tuple(self.policies),
            pricing=tuple(self.pricing),
            dry_run=dry_run or self.dry_run,
            safety=self.safety,
            discover={name: p.discover for name, p in self.providers.items() if p.discover},
            budgets=tuple(self.budgets),
            estimate=self.estimate,
            estimated=frozenset(name for name, p in self.providers.items() if p.estimates),
        )


_LOADING: ContextVar[tuple[Mapping[str, str], Mapping[str, Any]]] = ContextVar("loading")


class _EnvSource(EnvSettingsSource):
    """pydantic-settings' environment source, reading the mapping it is given instead
    of the process's environment (so a load is a function of its arguments)."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(
            self._environ, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str
        )


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


class _UniqueKeys(yaml.SafeLoader):
    """YAML that refuses a key given twice in one mapping: `dry_run: true` then
    `dry_run: false` must not quietly mean live."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, typing.Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


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
        data = yaml.load(text, Loader=_UniqueKeys)  # a SafeLoader: no arbitrary objects
    except RecursionError:
        raise ConfigError(f"{path}: invalid YAML: nested deeper than can be read") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of settings")
    if odd := [k for k in data if not isinstance(k, str)]:  # `? x` or `1: x` at the top
        raise ConfigError(f"{path}: a setting's name must be text, not {odd[0]!r}")
    return data


def env_overrides(environ: Mapping[str, str]) -> dict[str, str]:
    """The settings the environment overrides, {dotted key: variable}. A ``WATCHDOG_*``
    variable that names no setting (a typo such as WATCHDOG_DRYRUN) is a ConfigError:
    silently ignoring it could leave a daemon live that was meant to be dry."""
    found = {}
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in NOT_SETTINGS:
            continue
        parts = upper.removeprefix(ENV_PREFIX).lower().split("__")
        if not _names_a_setting(parts):
            raise ConfigError(
                f"environment variable {name}: no such setting "
                f"(top-level keys: {', '.join(sorted(Settings.model_fields))}; "
                "nest with __, e.g. WATCHDOG_SAFETY__COOL_DOWN)"
            )
        found[".".join(parts)] = name
    return found


def _names_a_setting(parts: list[str]) -> bool:
    annotation: Any = Settings
    expect_key = False
    for part in parts:
        if not part:
            return False
        if expect_key:  # a dict's key, such as a provider's name
            expect_key = False
            continue
        model = model_in(annotation)
        field = model.model_fields.get(part) if model is not None else None
        if field is None:
            return False
        annotation = field.annotation
        expect_key = typing.get_origin(annotation) is dict and model_in(annotation) is not None
    return not expect_key or len(parts) == 1


@contextmanager
def _loading(environ: Mapping[str, str], overrides: Mapping[str, Any]) -> Iterator[None]:
    token = _LOADING.set((environ, overrides))
    try:
        yield
    finally:
        _LOADING.reset(token)


def load_settings(
    path: Path,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Read the file, apply the environment's ``WATCHDOG_*`` overrides (default: the
    process's) and then ``overrides``, validate; ConfigError on any problem. The result
    knows where each overridden setting came from (``Settings.origins``)."""
    environ = os.environ if environ is None else environ
    overrides = overrides or {}
    data = read_yaml(path)
    origins = {k: f"environment variable {v}" for k, v in env_overrides(environ).items()}
    origins |= {k: "override" for k in overrides}
    try:
        with _loading(environ, overrides):
            settings = Settings(**data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {error_text(exc, data, Settings)}") from None
    settings._origins = origins
    return settings
