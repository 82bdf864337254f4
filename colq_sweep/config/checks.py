"""The one error a bad config value gets, and the value checks every spec uses (the bottom of the config
package: it imports nothing of colq_sweep, so a method's spec in quantize/methods/ can use it)."""

from __future__ import annotations

import dataclasses
from typing import Any


class ConfigError(ValueError):
    """One bad config value: `str(err)` is the single line shown to the user."""

    def __init__(self, field_name: str, value: Any, fix: str):
        self.field = field_name
        self.value = value
        super().__init__(f"config error: {field_name}={value!r}: {fix}")


def pos_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(name, value, "must be a positive integer")
    return value


def boolean(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(name, value, "must be true or false")
    return value


def choice(name: str, value: Any, allowed: tuple) -> Any:
    if value not in allowed or type(value) is not type(allowed[0]):  # 4.0 is not the integer 4
        raise ConfigError(name, value, f"allowed: {', '.join(map(str, allowed))}")
    return value


def positive_or_null(name: str, value: Any) -> float | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
        raise ConfigError(name, value, "must be null or a positive number")
    return value


def workers(name: str, value: Any) -> int | None:
    """`auto` (None) or a count >= 0."""
    if value == "auto" or value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(name, value, "must be auto or an integer >= 0 (0: prepare each batch in the main thread)")
    return value


def known_keys(group: str, d: dict, cls: type, ignore: tuple[str, ...] = ()) -> None:
    """Every key of `d` is a field of the dataclass `cls` (less `ignore`), else one line naming the first."""
    allowed = {f.name for f in dataclasses.fields(cls) if f.init} - set(ignore)
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise ConfigError(f"{group}.{unknown[0]}", d[unknown[0]], f"unknown key; {group} takes: {', '.join(sorted(allowed))}")


def required_present(group: str, d: dict, cls: type) -> None:
    required = [f.name for f in dataclasses.fields(cls)
                if f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]  # fmt: skip
    missing = [k for k in required if k not in d]
    if missing:
        raise ConfigError(f"{group}.{missing[0]}", None, f"missing in the {group} config; add `{missing[0]}:` to it")
