"""The ``cellwatch`` command line: one click group of thin commands.

Each command parses its flags, builds the settings tree once, and calls into ``training`` or
``streaming``. Flags that override a setting are declared with :func:`settings_option`; their
environment variables are the settings' own (``CELLWATCH_<SECTION>_<FIELD>``) and are shown in
``--help``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import click
from click.core import ParameterSource

from cellwatch.settings import (
    CONFIG_ENV_VAR,
    Settings,
    SettingsError,
    as_plain_dict,
    describe_settings,
    env_var_name,
    load_settings,
    render_toml,
)

F = TypeVar("F", bound=Callable[..., Any])

# Flag destinations that carry a setting are named "<section>__<field>".
_SETTING_SEPARATOR = "__"


class SettingsProblem(click.ClickException):
    """Bad settings end the command with exit code 2 and the loader's message."""

    exit_code = 2

    def __init__(self, error: SettingsError) -> None:
        super().__init__(f"invalid settings: {error}")


@dataclasses.dataclass(frozen=True)
class Invocation:
    """What the group captured for its commands: the config file and the environment."""

    config_path: Path | None
    environ: Mapping[str, str]


def settings_option(key: str, *param_decls: str, **attrs: Any) -> Callable[[F], F]:
    """A flag that overrides the setting ``key`` (e.g. ``"kafka.bootstrap_servers"``)."""
    section, name = key.split(".")
    attrs.setdefault("default", None)
    attrs.setdefault("show_default", False)
    return click.option(
        *param_decls,
        f"{section}{_SETTING_SEPARATOR}{name}",
        envvar=env_var_name(key),
        show_envvar=True,
        **attrs,
    )


def build_settings(ctx: click.Context) -> Settings:
    """The settings tree for this command: file < environment < flags given on the line."""
    invocation: Invocation = ctx.find_object(Invocation)
    overrides: dict[str, Any] = {}
    origins: dict[str, str] = {}
    flags = {param.name: param.opts[0] for param in ctx.command.params}
    for param_name, value in ctx.params.items():
        if _SETTING_SEPARATOR not in param_name:
            continue
        # Values click took from the environment are left to the loader, which reads the
        # same variables and can then say where a bad value came from.
        if ctx.get_parameter_source(param_name) is ParameterSource.COMMANDLINE:
            key = param_name.replace(_SETTING_SEPARATOR, ".")
            overrides[key] = value
            origins[key] = f"flag {flags[param_name]}"
    try:
        return load_settings(invocation.config_path, invocation.environ, overrides, origins)
    except SettingsError as error:
        raise SettingsProblem(error) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar=CONFIG_ENV_VAR,
    show_envvar=True,
    help="TOML settings file (one table per section).",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    default="info",
    show_default=True,
    envvar="CELLWATCH_LOG_LEVEL",
    show_envvar=True,
    help="Logging verbosity.",
)
@click.version_option(package_name="cellwatch")
@click.pass_context
def main(ctx: click.Context, config_path: Path | None, log_level: str) -> None:
    """cellwatch: streaming time-series anomaly detection on Kafka."""
    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    ctx.obj = Invocation(config_path=config_path, environ=dict(os.environ))


@main.group()
def config() -> None:
    """Inspect the resolved settings."""


@config.command("show")
@click.option("--format", "output_format", type=click.Choice(["toml", "json"]), default="toml",
              show_default=True, help="Output format.")
@settings_option("kafka.bootstrap_servers", "--bootstrap-servers",
                 help="Comma-separated host:port list.")
@click.pass_context
def config_show(ctx: click.Context, output_format: str, **_flags: Any) -> None:
    """Print the resolved settings, secrets redacted."""
    settings = build_settings(ctx)
    if output_format == "json":
        click.echo(json.dumps(as_plain_dict(settings), indent=2))
    else:
        click.echo(render_toml(settings), nl=False)


@config.command("keys")
def config_keys() -> None:
    """List every setting with its environment variable and default."""
    rows = describe_settings()
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for key, env, default, help_text in rows:
        click.echo(f"{key:<{widths[0]}}  {env:<{widths[1]}}  {default:<{widths[2]}}  {help_text}")
