"""The settings as people see them: ``config show`` (TOML or JSON) and ``config keys``.

Secrets are replaced by a mask in everything shown here unless a caller asks otherwise.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from cellwatch.settings import REDACTED, SECTIONS, Secret, Settings, env_var_name, setting_keys


def as_plain_dict(settings: Settings, *, redact: bool = True) -> dict[str, dict[str, Any]]:
    """The tree as JSON/TOML-ready values; secrets are replaced by a mask unless asked."""

    def plain(value: Any) -> Any:
        if isinstance(value, Secret):
            return REDACTED if redact else value.reveal()
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, tuple):
            return list(value)
        return value

    return {
        name: {field.name: plain(getattr(getattr(settings, name), field.name))
               for field in dataclasses.fields(SECTIONS[name])}
        for name in SECTIONS
    }


def render_toml(settings: Settings) -> str:
    """The resolved tree as TOML, secrets redacted; unset optional values are commented out."""
    lines: list[str] = []
    for section_name, values in as_plain_dict(settings).items():
        if lines:
            lines.append("")
        lines.append(f"[{section_name}]")
        for name, value in values.items():
            if value is None:
                lines.append(f"# {name} is not set")
            else:
                # JSON scalars and string arrays are valid TOML for every type used here.
                lines.append(f"{name} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


def describe_settings() -> list[tuple[str, str, str, str]]:
    """(key, environment variable, default, help) for every setting, for docs and --help."""
    rows = []
    for key in setting_keys():
        section_name, name = key.split(".")
        field = next(f for f in dataclasses.fields(SECTIONS[section_name]) if f.name == name)
        default = field.default
        shown = "" if default is None else (
            ",".join(default) if isinstance(default, tuple) else str(default))
        rows.append((key, env_var_name(key), shown, field.metadata["help"]))
    return rows

