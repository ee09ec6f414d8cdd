"""The `Example:` blocks of `detector/`'s docstrings run, and show what they print.

Every module under `detector/` is searched with `doctest`; each docstring holding
examples is one test. As in Keras' own docstrings, `np`, `keras` and `ops`
(`keras.ops`) are there without an import, beside the module's own names; everything
else an example needs it builds itself. `keras.utils.set_random_seed` runs before each
docstring, so an example may show values that depend on random weights.

A docstring with an `Example:` heading but no `>>>` line would be skipped silently by
doctest; `test_every_example_block_runs` fails instead.
"""

import doctest
import importlib
import pkgutil

import keras
import numpy as np
import pytest

import detector

SEED = 1234
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _modules():
    names = [
        info.name
        for info in pkgutil.walk_packages(detector.__path__, prefix="detector.")
    ]
    return [importlib.import_module(name) for name in sorted(names)]


def _docstrings_with_examples():
    finder = doctest.DocTestFinder(exclude_empty=True)
    found = []
    for module in _modules():
        for test in finder.find(module, module.__name__):
            # Names imported into a module are found again there; keep their home only.
            if test.examples and _defined_in(test, module):
                found.append(test)
    return sorted(found, key=lambda test: test.name)


def _defined_in(test, module):
    return test.filename == module.__file__


DOCTESTS = _docstrings_with_examples()


@pytest.mark.parametrize("test", DOCTESTS, ids=[test.name for test in DOCTESTS])
def test_docstring_example(test):
    keras.utils.set_random_seed(SEED)
    # The module's own names win over the shared ones.
    test.globs = {"np": np, "keras": keras, "ops": keras.ops, **test.globs}
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    report = []
    runner.run(test, out=report.append)
    results = runner.summarize(verbose=False)
    assert results.failed == 0, "".join(report)


def test_every_example_block_runs():
    # An `Example:` heading whose code doctest cannot see (no `>>>`) is never checked.
    without_doctest = []
    for module in _modules():
        finder = doctest.DocTestFinder(exclude_empty=False)
        for test in finder.find(module, module.__name__):
            if not _defined_in(test, module) or not test.docstring:
                continue
            for section in test.docstring.split("Example:")[1:]:
                if ">>>" not in section:
                    without_doctest.append(test.name)
    assert not without_doctest
    # The layers of the library each show one.
    layers = {test.name.rsplit(".", 1)[-1] for test in DOCTESTS}
    assert set(detector.layers.__all__) - {"get_activation"} <= layers
