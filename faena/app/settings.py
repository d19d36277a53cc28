"""App settings: names, defaults, validation and the environment fallbacks for URLs.

Settings are read when an app is created, never at import. Unknown names are an error that
lists the valid ones.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Final

from faena.contracts.broker import MAX_DELIVERIES
from faena.foundation.clock import SYSTEM_CLOCK, Clock
from faena.foundation.exceptions import ConfigurationError
from faena.model.options import validate_priority, validate_queue
from faena.model.routing import Routes
from faena.model.serialization import SERIALIZERS

DEFAULT_BROKER_URL: Final = "sqlite:///faena.sqlite3"
BROKER_ENV: Final = "FAENA_BROKER_URL"
RESULTS_ENV: Final = "FAENA_RESULTS_URL"


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Everything an app can be configured with. See ``docs/configuration.md``."""

    default_queue: str = "default"
    default_priority: int = 0
    serializer: str = "json"
    accept: tuple[str, ...] = ("json",)
    max_message_size: int = 1024 * 1024
    result_ttl: float = 86_400.0
    lease_s: float = 30.0
    heartbeat_s: float | None = None
    max_deliveries: int = 5
    poll_interval_s: float = 0.002
    result_cleanup_interval_s: float = 60.0
    shutdown_grace_s: float = 30.0
    eager: bool = False
    function_modules: tuple[str, ...] | None = None
    routes: Routes = field(default_factory=lambda: Routes([]), compare=False)
    revoke_check_s: float = 1.0
    concurrency_retry_s: float = 1.0
    clock: Clock = field(default=SYSTEM_CLOCK, compare=False)

    @property
    def heartbeat_interval_s(self) -> float:
        """How often a worker renews its leases: a third of the lease unless set."""
        return self.heartbeat_s if self.heartbeat_s is not None else self.lease_s / 3.0


SETTING_NAMES: Final = tuple(sorted(f.name for f in fields(Settings)))


def build_settings(given: Mapping[str, Any]) -> Settings:
    """Validate settings given to ``Faena(...)``.

    Raises:
        ConfigurationError: an unknown name (valid names listed) or a bad value.
    """
    unknown = sorted(set(given) - set(SETTING_NAMES))
    if unknown:
        raise ConfigurationError(
            f"unknown setting(s) {', '.join(unknown)}; "
            f"valid settings are: {', '.join(SETTING_NAMES)}"
        )
    values = dict(given)
    if "accept" in values:
        values["accept"] = _names("accept", values["accept"])
    if "function_modules" in values and values["function_modules"] is not None:
        values["function_modules"] = _names("function_modules", values["function_modules"])
    if "routes" in values and not isinstance(values["routes"], Routes):
        values["routes"] = Routes.build(values["routes"])
    settings = Settings(**values)
    _check(settings)
    return settings


def _names(setting: str, value: Any) -> tuple[str, ...]:
    """A list of names; one name given alone (``"json"``) is a list of one, not of letters."""
    names = (value,) if isinstance(value, str) else value
    try:
        names = tuple(names)
    except TypeError:
        names = None
    if names is None or not all(isinstance(n, str) and n for n in names):
        raise ConfigurationError(f"setting {setting} must be a list of names, got {value!r}")
    return names


def _positive(name: str, value: float, settings: Settings) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise ConfigurationError(
            f"setting {name} must be a positive number (not inf or nan), got {value!r}"
        )


def _check(s: Settings) -> None:
    validate_queue(s.default_queue)
    validate_priority(s.default_priority)
    if s.serializer not in SERIALIZERS:
        raise ConfigurationError(f"serializer must be one of {SERIALIZERS}, got {s.serializer!r}")
    bad = [a for a in s.accept if a not in SERIALIZERS]
    if bad or not s.accept:
        raise ConfigurationError(
            f"accept must list serializers from {SERIALIZERS}, got {s.accept!r}"
        )
    if s.serializer not in s.accept:
        raise ConfigurationError(
            f"serializer {s.serializer!r} is not in accept={s.accept!r}: workers of this app "
            "would refuse its own messages; add it to accept"
        )
    for name in (
        "max_message_size",
        "result_ttl",
        "lease_s",
        "poll_interval_s",
        "result_cleanup_interval_s",
        "shutdown_grace_s",
        "revoke_check_s",
        "concurrency_retry_s",
    ):
        _positive(name, getattr(s, name), s)
    if s.heartbeat_s is not None:
        _positive("heartbeat_s", s.heartbeat_s, s)
        if s.heartbeat_s >= s.lease_s:
            raise ConfigurationError(
                f"heartbeat_s ({s.heartbeat_s}) must be shorter than lease_s ({s.lease_s}), or "
                "leases expire between renewals"
            )
    if type(s.max_deliveries) is not int or not 1 <= s.max_deliveries <= MAX_DELIVERIES:
        raise ConfigurationError(
            f"max_deliveries must be an int from 1 to {MAX_DELIVERIES}, got {s.max_deliveries!r}"
        )


def resolve_urls(broker: str | None, results: str | None) -> tuple[str, str]:
    """Broker and results URLs: explicit arguments, then the environment, then the default.

    Results default to the broker's own store.
    """
    for name, url in (("broker", broker), ("results", results)):
        if url is not None and (not isinstance(url, str) or not url.strip()):
            raise ConfigurationError(
                f"{name} must be a URL such as 'redis://localhost:6379/0', or None for the "
                f"default; got {url!r}"
            )
    # An empty environment variable counts as unset.
    broker_url = broker or os.environ.get(BROKER_ENV) or DEFAULT_BROKER_URL
    results_url = results or os.environ.get(RESULTS_ENV) or broker_url
    return broker_url, results_url
