"""Imports point one way: cellwatch -> training, streaming -> detector.

``detector`` is pure: no Kafka, Prometheus or click, not even transitively.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROJECT_PACKAGES = ("detector", "training", "streaming", "cellwatch")
ALLOWED = {
    "detector": set(),
    "training": {"detector"},
    "streaming": {"detector"},
    "cellwatch": {"detector", "training", "streaming"},
}
FORBIDDEN_THIRD_PARTY = {
    "detector": {"kafka", "confluent_kafka", "prometheus_client", "click"},
    "training": {"kafka", "confluent_kafka", "prometheus_client", "click"},
    "streaming": {"click"},
}


def imported_top_levels(source: str, package: str) -> set[str]:
    """Top-level names a module imports; relative imports resolve to its own package."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add(package if node.level else (node.module or "").split(".")[0])
    return names


def violations(package: str, source: str) -> set[str]:
    imported = imported_top_levels(source, package)
    other_project = (imported & set(PROJECT_PACKAGES)) - ALLOWED[package] - {package}
    return other_project | (imported & FORBIDDEN_THIRD_PARTY.get(package, set()))


def test_the_scanner_sees_a_violation() -> None:
    assert violations("detector", "from streaming.worker import Worker\n") == {"streaming"}
    assert violations("detector", "import kafka.errors\n") == {"kafka"}
    assert violations("training", "def f():\n    import cellwatch.cli\n") == {"cellwatch"}
    assert violations("streaming", "from . import metrics\nimport detector\n") == set()


@pytest.mark.parametrize("package", PROJECT_PACKAGES)
def test_imports_point_one_way(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"package {package} has no modules"
    found = {
        str(path.relative_to(ROOT)): bad
        for path in files
        if (bad := violations(package, path.read_text(encoding="utf-8")))
    }
    assert not found, f"{package} imports what it must not: {found}"


def test_detector_does_not_load_io_libraries_transitively() -> None:
    modules = sorted(
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for path in (ROOT / "detector").rglob("*.py")
    )
    probe = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(sorted(m for m in ('kafka', 'prometheus_client', 'click') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                            text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"


# confluent-kafka is an extra: only its adapters import it at module level.
CONFLUENT_MODULES = {"streaming/confluent_io.py", "streaming/confluent_topics.py"}


def module_level_imports(source: str) -> set[str]:
    """Top-level names imported outside any function (what importing the module loads)."""
    names: set[str] = set()
    for node in ast.parse(source).body:
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names.add((node.module or "").split(".")[0])
    return names


def test_only_the_confluent_adapters_import_confluent_kafka_when_loaded() -> None:
    found = sorted(
        str(path.relative_to(ROOT)) for package in PROJECT_PACKAGES
        for path in (ROOT / package).rglob("*.py")
        if "confluent_kafka" in module_level_imports(path.read_text(encoding="utf-8"))
        and str(path.relative_to(ROOT)) not in CONFLUENT_MODULES)
    assert found == []


def test_the_kafka_python_worker_is_built_without_confluent_kafka() -> None:
    """A kafka-python-only install: confluent_kafka cannot be imported at all."""
    probe = (
        "import sys\n"
        "sys.modules['confluent_kafka'] = None  # import confluent_kafka now fails\n"
        "import cellwatch.cli, cellwatch.wiring\n"
        "from cellwatch.kafka_clients import kafka_client\n"
        "from cellwatch.settings import SettingsError, load_settings\n"
        "print(kafka_client(load_settings(environ={}).kafka).name)\n"
        "try:\n"
        "    load_settings(environ={'CELLWATCH_KAFKA_CLIENT': 'confluent'})\n"
        "except SettingsError as error:\n"
        "    print(error)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                            text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "kafka-python"
    assert "pip install 'cellwatch[confluent]'" in lines[1]
