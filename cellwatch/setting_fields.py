"""How one setting is declared, typed and checked: the machinery under the settings tree.

A section of :mod:`cellwatch.settings` is a frozen dataclass deriving from
:class:`SettingsSection`, each field declared with :func:`setting` (default, one-line help,
constraints). Values are coerced to the field's type (from TOML values, or from text for
environment variables and flags) and checked against its constraints; a bad one raises
:class:`SettingsError` naming the setting, what was expected and what was received (never a
:class:`Secret`'s value).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Union

REDACTED = "**********"


class SettingsError(ValueError):
    """A setting has a value that cannot be used; the message says which, where and why.

    ``key`` is the dotted name of the offending setting when there is exactly one.
    """

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class Secret:
    """A string that never shows itself in reprs, logs or ``config show`` output."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({REDACTED!r})"

    def __str__(self) -> str:
        return REDACTED

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def setting(
    default: Any,
    help: str,
    *,
    choices: tuple[str, ...] | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    positive: bool = False,
) -> Any:
    """Declares one setting: its default, a one-line help and the constraints its value obeys."""
    return dataclasses.field(
        default=default,
        metadata={
            "help": help,
            "choices": choices,
            "minimum": minimum,
            "maximum": maximum,
            "positive": positive,
        },
    )


def _optional_inner(annotation: Any) -> tuple[Any, bool]:
    """Returns (T, True) for ``T | None`` and (annotation, False) otherwise."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if len(args) == 1:
            return args[0], True
    return annotation, False


def describe_type(annotation: Any) -> str:
    inner, optional = _optional_inner(annotation)
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
             Path: "a path", Secret: "a string (secret)"}
    if typing.get_origin(inner) is tuple:
        name = "a list of strings (comma-separated in environment variables and flags)"
    else:
        name = names.get(inner, getattr(inner, "__name__", str(inner)))
    return f"{name} or nothing" if optional else name


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def coerce_value(annotation: Any, raw: Any, *, from_text: bool) -> Any:
    """Turns a raw value (TOML value, or text from the environment or a flag) into ``annotation``.

    Raises ``TypeError`` with a short reason; the caller adds where the value came from.
    """
    inner, optional = _optional_inner(annotation)
    if raw is None or (from_text and optional and raw == ""):
        if optional:
            return None
        raise TypeError("a value is required")
    if typing.get_origin(inner) is tuple:
        if from_text and isinstance(raw, str):
            items = [item.strip() for item in raw.split(",") if item.strip()]
        elif isinstance(raw, list | tuple):
            items = list(raw)
        else:
            raise TypeError("not a list")
        if not all(isinstance(item, str) for item in items):
            raise TypeError("every item must be a string")
        return tuple(items)
    if inner is bool:
        if isinstance(raw, bool):
            return raw
        if from_text and isinstance(raw, str) and raw.strip().lower() in _TRUE | _FALSE:
            return raw.strip().lower() in _TRUE
        raise TypeError("not a boolean")
    if inner is int:
        if isinstance(raw, bool):
            raise TypeError("not an integer")
        if isinstance(raw, int):
            return raw
        if from_text and isinstance(raw, str):
            try:
                return int(raw.strip())
            except ValueError:
                raise TypeError("not an integer") from None
        raise TypeError("not an integer")
    if inner is float:
        if isinstance(raw, bool):
            raise TypeError("not a number")
        if isinstance(raw, int | float):
            value = float(raw)
        elif from_text and isinstance(raw, str):
            try:
                value = float(raw.strip())
            except ValueError:
                raise TypeError("not a number") from None
        else:
            raise TypeError("not a number")
        if not math.isfinite(value):
            raise TypeError("not a finite number")
        return value
    if inner in (str, Path, Secret):
        if isinstance(raw, Secret):
            raw = raw.reveal()
        if isinstance(raw, Path):
            raw = str(raw)
        if not isinstance(raw, str):
            raise TypeError("not a string")
        return inner(raw)
    raise TypeError(f"unsupported setting type {inner!r}")  # a bug in a section declaration


def _check_constraints(field: dataclasses.Field, value: Any) -> str | None:
    """Returns why ``value`` breaks the field's declared constraints, or None."""
    if value is None:
        return None
    meta = field.metadata
    if meta.get("choices") and value not in meta["choices"]:
        return "one of " + ", ".join(meta["choices"])
    if isinstance(value, int | float) and not isinstance(value, bool):
        if meta.get("positive") and value <= 0:
            return "a value greater than 0"
        if meta.get("minimum") is not None and value < meta["minimum"]:
            return f"a value of at least {meta['minimum']}"
        if meta.get("maximum") is not None and value > meta["maximum"]:
            return f"a value of at most {meta['maximum']}"
    if isinstance(value, tuple) and not value and meta.get("positive"):
        return "at least one item"
    return None


def shown_value(value: Any, annotation: Any = None) -> str:
    """How a received value appears in an error: a secret's value never does, whatever its
    type (a password written as a TOML number is still a password)."""
    if isinstance(value, Secret) or _optional_inner(annotation)[0] is Secret:
        return f"a value of type {type(value).__name__} (not shown: a secret)"
    return repr(value)


class SettingsSection:
    """Validation shared by every section: field types and constraints, then cross-checks."""

    section_name: typing.ClassVar[str]

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for field in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, field.name)
            key = f"{self.section_name}.{field.name}"
            try:
                coerced = coerce_value(hints[field.name], value, from_text=False)
            except TypeError as error:
                raise SettingsError(
                    f"{key}: expected {describe_type(hints[field.name])}, "
                    f"received {shown_value(value, hints[field.name])} ({error})",
                    key=key) from None
            if coerced != value or type(coerced) is not type(value):
                # Normalise e.g. lists to tuples so sections stay hashable and comparable.
                object.__setattr__(self, field.name, coerced)
            problem = _check_constraints(field, coerced)
            if problem:
                raise SettingsError(
                    f"{key}: expected {problem}, "
                    f"received {shown_value(coerced, hints[field.name])}", key=key)
        self._cross_check()

    def _cross_check(self) -> None:
        """Checks that involve several fields of the section."""
