"""How a failure ends a command: one line of message and a documented exit code, no traceback.

The codes are listed in :mod:`cellwatch.startup_errors` and README.md ("Exit codes").
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import click

from cellwatch.settings import SettingsError

# Duplicated from cellwatch.startup_errors, which imports kafka-python: `--help` stays fast.
_EXIT_USAGE_OR_SETTINGS = 2
_EXIT_DELIVERY_FAILURE = 3
_EXIT_TOPIC_PROBLEM = 6


class SettingsProblem(click.ClickException):
    """Bad settings end the command with exit code 2 and the loader's message."""

    exit_code = _EXIT_USAGE_OR_SETTINGS

    def __init__(self, error: SettingsError) -> None:
        super().__init__(f"invalid settings: {error}")


class InputProblem(click.ClickException):
    """A problem with the user's input or files: exit code 1 and the message."""


class DeliveryFailure(click.ClickException):
    """Output records were not acknowledged (exit code 3); nothing of them was committed, so
    a restart resumes where the last acknowledged batch ended."""

    exit_code = _EXIT_DELIVERY_FAILURE


class TopicProblem(click.ClickException):
    """A topic the worker needs is missing or has the wrong shape (exit code 6), at start or
    while it runs (a changelog deleted and auto-created anew); the message says what to do."""

    exit_code = _EXIT_TOPIC_PROBLEM


class StartupFailure(click.ClickException):
    """The environment did not let the command start (exit code 4 or 5, see
    :mod:`cellwatch.startup_errors`)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turns the packages' input, delivery and start-up errors into one clear line."""
    from cellwatch.startup_errors import StartupError
    from detector.artifact import ArtifactError
    from streaming.ports import OutputError, TopicSetupError
    from training.evaluation import EvaluationError
    from training.output_destinations import OutputPathError
    from training.recordings import RecordingError
    from training.trainer import TrainingError

    try:
        yield
    except StartupError as error:
        raise StartupFailure(str(error), error.exit_code) from None
    except OutputError as error:
        raise DeliveryFailure(str(error)) from None
    except TopicSetupError as error:
        raise TopicProblem(str(error)) from None
    except (ArtifactError, EvaluationError, OutputPathError, RecordingError,
            TrainingError) as error:
        raise InputProblem(str(error)) from None
