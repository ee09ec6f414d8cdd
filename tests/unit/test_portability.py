"""Portability: the tests that compare outputs bit for bit pass while this machine computes
as other CPUs would, and the streaming step's outputs do not change with the BLAS kernel.

A machine with another CPU runs other OpenBLAS kernels, whose float32 products round
differently, and other NumPy SIMD code (an AMD EPYC without AVX-512 once failed 22 tests
that passed elsewhere). ``OPENBLAS_CORETYPE`` makes this machine run another CPU's BLAS
kernels, ``NPY_DISABLE_CPU_FEATURES`` NumPy's code for a CPU without AVX-512 (or AVX2), so
a developer sees here what another CPU would show. Each run is a fresh interpreter: both
are read when the libraries load.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

# The tests whose assertions compare scores, states or records bit for bit.
COMPARING_TESTS = (
    "tests/unit/detector/test_exact_product.py",
    "tests/unit/detector/test_step.py",
    "tests/unit/streaming/test_engine.py",
    "tests/unit/streaming/test_durability.py",
    "tests/unit/streaming/test_replay.py",
)


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def _kernels() -> list[str]:
    """OpenBLAS kernels this CPU can run: the SSE ones every x86-64 CPU has, and the AVX
    ones where the CPU has the instructions."""
    flags = _cpu_flags()
    kernels = ["Prescott", "Nehalem"]
    if "avx" in flags:
        kernels.append("Sandybridge")
    if {"avx2", "fma"} <= flags:
        kernels.append("Haswell")
    if "avx512f" in flags:
        kernels.append("SkylakeX")
    return kernels


def _numpy_levels() -> list[str]:
    """NumPy SIMD dispatch targets this CPU has above x86-64-v2, highest first: disabling
    them (``NPY_DISABLE_CPU_FEATURES``) runs the code paths of a CPU without them, such as
    an AMD EPYC without AVX-512."""
    from numpy._core._multiarray_umath import __cpu_features__

    return [level for level in ("AVX512_SPR", "AVX512_ICL", "X86_V4", "X86_V3")
            if __cpu_features__.get(level)]


def _environments() -> dict[str, dict[str, str]]:
    """Each a way this machine can compute as another CPU would."""
    environments = {f"openblas-{kernel}": {"OPENBLAS_CORETYPE": kernel} for kernel in _kernels()}
    levels = _numpy_levels()
    for index, level in enumerate(levels):
        # Disabling a level disables the ones above it too.
        environments[f"numpy-without-{level}"] = {
            "NPY_DISABLE_CPU_FEATURES": " ".join(levels[: index + 1])}
    return environments


def _uses_openblas() -> bool:
    config = np.show_config(mode="dicts")
    blas = config.get("Build Dependencies", {}).get("blas", {})
    return "openblas" in str(blas.get("name", "")).lower()


pytestmark = pytest.mark.skipif(
    platform.machine().lower() not in ("x86_64", "amd64") or not _uses_openblas(),
    reason="OPENBLAS_CORETYPE selects x86-64 kernels of OpenBLAS; this NumPy has neither",
)

_FINGERPRINT = """
import hashlib, numpy as np
from detector.features import ChannelScaler
from detector.forecaster_step import StepParams
from detector.scorer_config import ScorerConfig
from detector.step import StreamingStep
rng = np.random.default_rng(3)
F, C, D, U, M, H = 4, 5, 9, 16, 12, 10
w = lambda *shape: (rng.standard_normal(shape) * 0.4).astype(np.float32)
params = StepParams(w(6, C), w(C), w(C), w(3 * D, U), w(U), "tanh", w(U + M, 2 * M), w(2 * M),
                    "tanh", "sigmoid", ((w(M, H), w(H)), (w(H, H), w(H))), "elu_sigmoid",
                    w(H, 2 * F), w(2 * F), 0.01)
step = StreamingStep(params, ChannelScaler((0.0,) * F, (1.0,) * F), ScorerConfig(
    learning_period=5, history=20))
values = np.cumsum(rng.standard_normal((400, 37, F)), axis=0).astype(np.float32)
times = 1_700_000_000_000 + 60_000 * np.arange(400)[:, None] + np.arange(37)[None, :]
state, digest = step.layout.initial(37), hashlib.sha256()
for t in range(400):
    result, state = step(values[t], times[t], state)
    for array in (result.score, result.likelihood, result.surprise, result.onset, state):
        digest.update(array.tobytes())
print(digest.hexdigest())
"""


def _run(environment: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **environment, "OPENBLAS_NUM_THREADS": "1",
           "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env=env, text=True,
                          capture_output=True, timeout=600, check=False)


def test_the_step_gives_the_same_bits_with_every_blas_kernel():
    fingerprints = {}
    for kernel in _kernels():
        run = _run({"OPENBLAS_CORETYPE": kernel}, "-c", _FINGERPRINT)
        assert run.returncode == 0, run.stderr
        fingerprints[kernel] = run.stdout.strip()
    assert len(set(fingerprints.values())) == 1, fingerprints


@pytest.mark.parametrize("name", list(_environments()))
def test_comparing_tests_pass_computing_as_another_cpu(name):
    run = _run(_environments()[name], "-m", "pytest", "-q", "-p", "no:cacheprovider",
               *COMPARING_TESTS)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
