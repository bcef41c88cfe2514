"""Options: one spelling for each, read from keyword arguments, then the environment.

Every option can be given as a keyword argument (to ``configure``, the handlers, or a
dictConfig entry) or as the environment variable ``PHOSPHO_<NAME>``. Durations are float
seconds; limits start with ``max_``.
"""

from __future__ import annotations

import difflib
import importlib
import ipaddress
import os
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping, Optional
from urllib.parse import urlsplit

from . import _diag

DEFAULT_BASE_URL = "https://api.phospho.ai"

TextFunction = Callable[[Any], str]


@dataclass(frozen=True)
class Options:
    """The resolved configuration of one pipeline (see the README's configuration table)."""

    api_key: Optional[str] = field(default=None, repr=False)
    project_id: Optional[str] = None
    base_url: str = DEFAULT_BASE_URL
    local_dir: Optional[str] = None
    max_batch_size: int = 5000
    max_batch_bytes: int = 1_000_000
    flush_interval: float = 1.0
    max_queue_size: int = 100_000
    timeout: float = 10.0
    shutdown_timeout: float = 5.0
    max_attempts: int = 5
    max_field_chars: int = 100_000
    version_id: Optional[str] = None
    input_to_str: Optional[TextFunction] = None
    output_to_str: Optional[TextFunction] = None
    allow_insecure_http: bool = False
    durable: bool = False
    max_spool_tasks: int = 100_000
    max_retry_time: float = 60.0
    max_in_flight: int = 3
    redact: Any = None
    sample_rate: float = 1.0

    def __repr__(self) -> str:
        # The key is never shown, even masked, so a repr pasted in a bug report is safe.
        shown = ", ".join(
            f"{f.name}={getattr(self, f.name)!r}" for f in fields(self) if f.name != "api_key"
        )
        key = "'***'" if self.api_key else "None"
        return f"Options(api_key={key}, {shown})"

    @property
    def online(self) -> bool:
        """True when tasks go to the phospho API, False when they go to the local store."""
        return bool(self.api_key and self.project_id)

    @property
    def endpoint(self) -> str:
        """The ingestion URL for this project."""
        return f"{self.base_url}/v2/log/{self.project_id}"

    def store_path(self) -> Path:
        """The SQLite file of the local store."""
        return Path(self.local_dir or default_data_dir()) / "tasks.sqlite3"


_INT_OPTIONS = {
    "max_batch_size", "max_batch_bytes", "max_queue_size", "max_attempts", "max_field_chars", "max_spool_tasks",
    "max_in_flight",
}
_FLOAT_OPTIONS = {"flush_interval", "timeout", "shutdown_timeout", "max_retry_time"}
_STR_OPTIONS = {"api_key", "project_id", "base_url", "local_dir", "version_id"}
_FUNC_OPTIONS = {"input_to_str", "output_to_str"}
_BOOL_OPTIONS = {"allow_insecure_http", "durable"}
OPTION_NAMES = frozenset(f.name for f in fields(Options))


def env_name(option: str) -> str:
    """The environment variable that sets ``option``."""
    return "PHOSPHO_" + option.upper()


def resolve(explicit: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Options:
    """Build ``Options`` from explicit values, falling back to the environment.

    Raises:
        TypeError: an unknown option name.
        ValueError: a value of the wrong kind or out of range, or only one of the two
            credentials set.
    """
    env = os.environ if environ is None else environ
    unknown = set(explicit) - OPTION_NAMES
    if unknown:
        hints = []
        for name in sorted(unknown):
            close = difflib.get_close_matches(name, sorted(OPTION_NAMES), n=1)
            hints.append(f"{name} (did you mean {close[0]}?)" if close else name)
        raise TypeError(
            f"unknown phospho_logging option(s): {', '.join(hints)}; "
            f"known options: {', '.join(sorted(OPTION_NAMES))}"
        )
    values: dict[str, Any] = {}
    for name in OPTION_NAMES:
        value = explicit.get(name)
        source = None
        if value is None:
            value = env.get(env_name(name)) or None
            source = env_name(name)
        if value is not None:
            values[name] = _convert(name, value, source)
    if environ is None:
        _warn_unknown_variables(env)
    if "base_url" in values:
        values["base_url"] = normalize_base_url(values["base_url"])
    options = Options(**values)
    _check(options)
    return options


#: Variables of ours that are not options.
_OTHER_VARIABLES = frozenset({"PHOSPHO_TEST_ID", "PHOSPHO_TEST_METRIC"})
_warned_variables: set[str] = set()


def _warn_unknown_variables(env: Mapping[str, str]) -> None:
    """Say once per name that a ``PHOSPHO_*`` variable is not an option (a typo, most often)."""
    known = {env_name(name) for name in OPTION_NAMES} | _OTHER_VARIABLES
    for variable in sorted(k for k in env if k.startswith("PHOSPHO_") and k not in known):
        if variable in _warned_variables:
            continue
        _warned_variables.add(variable)
        close = difflib.get_close_matches(variable, sorted(known), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        _diag.warn_once("unknown_variable:" + variable, "%s is set but is not a phospho_logging option%s; it is "
                        "ignored", variable, hint)


def _convert(name: str, value: Any, source: Optional[str] = None) -> Any:
    try:
        if name in _INT_OPTIONS:
            if isinstance(value, bool) or int(value) != float(value) or int(value) < 1:
                raise ValueError
            return int(value)
        if name in _FLOAT_OPTIONS:
            number = float(value)
            if not number > 0 or number == float("inf"):
                raise ValueError
            return number
        if name in _BOOL_OPTIONS:
            if isinstance(value, str):
                if value.strip().lower() not in {"1", "true", "yes", "on", "0", "false", "no", "off"}:
                    raise ValueError
                return value.strip().lower() in {"1", "true", "yes", "on"}
            return bool(value)
        if name in _FUNC_OPTIONS:
            return import_callable(value) if isinstance(value, str) else _callable(value)
        if name == "redact":
            # True (the built-in masks), False, a callable, or "module:function".
            if isinstance(value, bool):
                return value
            if isinstance(value, str):
                word = value.strip().lower()
                if word in {"1", "true", "yes", "on", "0", "false", "no", "off"}:
                    return word in {"1", "true", "yes", "on"}
                return import_callable(value)
            return _callable(value)
        if name == "sample_rate":
            if isinstance(value, bool):
                raise ValueError
            rate = float(value)
            if not 0.0 <= rate <= 1.0:
                raise ValueError
            return rate
        if not isinstance(value, str):
            raise ValueError
        return value
    except _Unimportable as exc:
        where = f" (from {source})" if source else ""
        raise ValueError(f"phospho_logging option {name}{where}: {exc}") from None
    except (TypeError, ValueError):
        kind = (
            "a positive whole number" if name in _INT_OPTIONS
            else "a positive number of seconds" if name in _FLOAT_OPTIONS
            else "true or false" if name in _BOOL_OPTIONS
            else "a callable or 'module:function'" if name in _FUNC_OPTIONS
            else "true, false, a callable or 'module:function'" if name == "redact"
            else "a number from 0 to 1" if name == "sample_rate"
            else "a string"
        )
        shown = "***" if name == "api_key" else repr(value)
        where = f" (from {source})" if source else ""
        raise ValueError(f"phospho_logging option {name}{where} must be {kind}, got {shown}") from None


def _callable(value: Any) -> Any:
    if not callable(value):
        raise TypeError
    return value


def import_callable(spec: str) -> Any:
    """Import ``"package.module:function"`` or ``"package.module.function"``."""
    module_name, _, attr = spec.partition(":") if ":" in spec else spec.rpartition(".")
    if not module_name or not attr:
        raise ValueError
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise _Unimportable(f"{spec!r} names a module that cannot be imported: {exc}") from None
    if not hasattr(module, attr):
        raise _Unimportable(f"{spec!r}: module {module_name!r} has no attribute {attr!r}")
    return _callable(getattr(module, attr))


class _Unimportable(ValueError):
    """A ``module:function`` spec that looks right but does not import."""


def normalize_base_url(url: str) -> str:
    """Strip trailing slashes and a trailing ``/v2``: the client appends ``/v2`` itself."""
    url = url.strip().rstrip("/")
    if url.endswith("/v2"):
        url = url[: -len("/v2")]
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError(f"phospho_logging option base_url must be an http(s) URL, got {url!r}")
    return url


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses, where plain http cannot leak the key."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check(options: Options) -> None:
    if bool(options.api_key) != bool(options.project_id):
        missing = "project_id (PHOSPHO_PROJECT_ID)" if options.api_key else "api_key (PHOSPHO_API_KEY)"
        raise ValueError(
            f"phospho_logging: {missing} is not set; set both api_key and project_id to send "
            "tasks to phospho, or neither to keep them in the local store"
        )
    parts = urlsplit(options.base_url)
    if (
        options.online
        and parts.scheme == "http"
        and not is_loopback(parts.hostname or "")
        and not options.allow_insecure_http
    ):
        raise ValueError(
            f"phospho_logging: refusing to send the API key over plain http to {parts.hostname}; "
            "use https, or if this network is trusted pass allow_insecure_http=True or set "
            "PHOSPHO_ALLOW_INSECURE_HTTP=1"
        )


def default_data_dir() -> Path:
    """A per-user data directory (never the working directory)."""
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "phospho-logging"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "phospho-logging"
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "phospho-logging"
