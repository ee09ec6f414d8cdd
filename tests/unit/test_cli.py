"""The click group, through CliRunner: settings precedence at the command line, clear errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

from click.testing import CliRunner

from cellwatch.cli import main


def run(args: list[str], env: dict[str, str] | None = None):
    return CliRunner().invoke(main, args, env=env or {}, catch_exceptions=False)


def test_config_show_resolves_file_environment_and_flag(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[kafka]\ngroup_id = "g-file"\nclient_id = "c-file"\n')
    result = run(
        ["--config", str(config), "config", "show", "--format", "json",
         "--bootstrap-servers", "h1:9,h2:9"],
        env={"CELLWATCH_KAFKA_CLIENT_ID": "c-env",
             "CELLWATCH_KAFKA_BOOTSTRAP_SERVERS": "env:1"},
    )
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["kafka"]["group_id"] == "g-file"
    assert shown["kafka"]["client_id"] == "c-env"
    assert shown["kafka"]["bootstrap_servers"] == ["h1:9", "h2:9"]


def test_config_file_from_environment_variable(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[metrics]\nport = 9999\n')
    result = run(["config", "show"], env={"CELLWATCH_CONFIG": str(config)})
    assert result.exit_code == 0
    assert "port = 9999" in result.output


def test_config_show_redacts_secrets() -> None:
    result = run(["config", "show"], env={
        "CELLWATCH_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "CELLWATCH_KAFKA_SASL_MECHANISM": "PLAIN",
        "CELLWATCH_KAFKA_SASL_USERNAME": "u",
        "CELLWATCH_KAFKA_SASL_PASSWORD": "s3cret-value",
    })
    assert result.exit_code == 0
    assert "s3cret-value" not in result.output
    assert 'sasl_password = "**********"' in result.output


def test_bad_flag_value_exits_2_naming_the_flag() -> None:
    result = CliRunner().invoke(main, ["config", "show", "--bootstrap-servers", "nohost"], env={})
    assert result.exit_code == 2
    assert ("kafka.bootstrap_servers: expected host:port items, received 'nohost' "
            "(from flag --bootstrap-servers)") in result.output


def test_bad_environment_value_exits_2_naming_the_variable() -> None:
    result = CliRunner().invoke(main, ["config", "show"],
                                env={"CELLWATCH_METRICS_PORT": "70000"})
    assert result.exit_code == 2
    assert "metrics.port: expected a value of at most 65535, received 70000" in result.output
    assert "CELLWATCH_METRICS_PORT" in result.output


def test_help_shows_environment_variables() -> None:
    result = run(["config", "show", "--help"])
    assert "CELLWATCH_KAFKA_BOOTSTRAP_SERVERS" in result.output
    assert "CELLWATCH_CONFIG" in run(["--help"]).output


def test_config_keys_lists_every_setting_once() -> None:
    result = run(["config", "keys"])
    lines = result.output.strip().splitlines()
    keys = [line.split()[0] for line in lines]
    assert len(keys) == len(set(keys))
    assert any(re.match(r"kafka\.sasl_password\s+CELLWATCH_KAFKA_SASL_PASSWORD", line)
               for line in lines)
