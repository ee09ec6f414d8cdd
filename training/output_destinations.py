"""Where the commands write, checked before any work: never over a user's file or directory.

Every writer replaces only what an earlier run of itself wrote, and says so before it reads a
single reading when the destination holds anything else:

- a model artifact directory (``train``) must not exist yet, or be a complete earlier
  artifact that holds nothing but its own files (the new artifact is written into a
  temporary sibling and renamed into place, and the old one is removed with it);
- an output directory (``evaluate --out``, ``synth``) may hold anything, but the files the
  command writes there are replaced only when its marker file (``evaluation.json``,
  ``labels.json``) says they came from an earlier run;
- an output file (``replay --score-to``) must not be one of the inputs, and is written into
  a temporary sibling that replaces it only once complete.

Every check ends with :class:`OutputPathError`, whose message names the path, what is there
and what to do instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

# What `cellwatch train` leaves beside an artifact while it trains (see training.trainer).
CHECKPOINT_SUFFIX = ".checkpoint"
_CHECKPOINT_ENTRIES = {"history.json", "backup"}


class OutputPathError(ValueError):
    """An output path the command must not, or cannot, write to."""


def check_can_create(path: Path, what: str) -> None:
    """Refuses ``path`` when its nearest existing ancestor is no writable directory, so a
    typo or a read-only mount fails now rather than after the work is done."""
    ancestor = path.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputPathError(f"{what} {path}: cannot be created, {ancestor} is not a "
                              f"directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputPathError(f"{what} {path}: cannot be created, {ancestor} is not "
                              f"writable by this user")


def _refuse_unnamed(path: Path, what: str) -> None:
    # "." or "dir/.." name a directory by its relation to another; replacing it would mean
    # renaming the current directory (or a parent) aside.
    if path.name in ("", ".", ".."):
        raise OutputPathError(f"{what} {path}: expected the path of the directory to write, "
                              f"such as artifacts/model, received {str(path)!r}")


def _artifact_files(path: Path) -> set[str] | None:
    """The files a complete earlier artifact at ``path`` lists, or None if it is none."""
    # Here, not at the top: detector.artifact imports TensorFlow, which synth, evaluate's
    # checks and replay do not otherwise need before they work.
    from detector.artifact import FORMAT, METADATA_FILE

    try:
        metadata = json.loads((path / METADATA_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT or not isinstance(
            metadata.get("files"), dict):
        return None
    return {METADATA_FILE, *metadata["files"]}


def _foreign_files(path: Path, own: set[str]) -> list[str]:
    """Files under ``path`` (relative names) that are not in ``own``; folders hold nothing
    of their own, so an empty one is lost without loss."""
    return [relative for entry in sorted(path.rglob("*"))
            if entry.is_symlink() or not entry.is_dir()
            if (relative := entry.relative_to(path).as_posix()) not in own]


def check_artifact_destination(path: Path) -> None:
    """Refuses an artifact path whose replacement would lose anything but an earlier artifact.

    The artifact is swapped into place by renaming (``detector.artifact``), which removes
    whatever directory was there; so that directory must be empty or a complete cellwatch
    artifact holding only its own files. Its checkpoint folder beside it (removed after training)
    must hold only a checkpoint.
    """
    what = "model artifact"
    path = Path(path)
    _refuse_unnamed(path, what)
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise OutputPathError(f"{what} {path}: exists and is not a directory; it would be "
                              f"replaced (choose a path that does not exist yet)")
    # An empty directory (made for the artifact beforehand) loses nothing when replaced.
    if path.exists() and any(path.iterdir()):
        own = _artifact_files(path)
        if own is None:
            raise OutputPathError(
                f"{what} {path}: exists and is not a cellwatch model artifact (no valid "
                f"metadata.json); it would be replaced, so choose a path that does not "
                f"exist yet, or remove it yourself")
        foreign = _foreign_files(path, own)
        if foreign:
            raise OutputPathError(
                f"{what} {path}: holds {len(foreign)} file(s) that are not part of the "
                f"artifact, such as {foreign[0]!r}; replacing the artifact would delete "
                f"them, so move them elsewhere or choose another path")
    checkpoint = path.parent / f"{path.name}{CHECKPOINT_SUFFIX}"
    if checkpoint.is_symlink() or (checkpoint.exists() and not checkpoint.is_dir()):
        raise OutputPathError(f"training checkpoint {checkpoint}: exists and is not a "
                              f"directory; it is removed after training, so move it away")
    if checkpoint.is_dir():
        foreign = sorted(entry.name for entry in checkpoint.iterdir()
                         if entry.name not in _CHECKPOINT_ENTRIES)
        if foreign:
            raise OutputPathError(
                f"training checkpoint {checkpoint}: holds {foreign[0]!r}, which is not from "
                f"an interrupted `cellwatch train`; it is removed after training, so move it "
                f"away or choose another artifact path")
    check_can_create(path, what)


def check_output_directory(path: Path, what: str, writes: Sequence[str], marker: str) -> None:
    """Refuses an output directory where the command would overwrite files it did not write.

    ``writes`` are the entries the command puts into ``path``; ``marker`` is the one of them
    it writes last, whose presence shows the others came from an earlier run of the command.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"{what} {path}: exists and is not a directory")
    if path.is_dir():
        earlier_run = (path / marker).is_file()
        for name in writes:
            target = path / name
            if not (target.exists() or target.is_symlink()):
                continue
            if not earlier_run:
                raise OutputPathError(
                    f"{what} {path}: already holds {name}, which this command would "
                    f"overwrite, and no {marker} shows that an earlier run wrote it; choose "
                    f"another directory, or move it away")
            if target.is_symlink() or not (target.is_file() or target.is_dir()):
                raise OutputPathError(f"{what} {path}: {name} is not a regular file or "
                                      f"directory; move it away")
    check_can_create(path / marker, what)


# Written into a plots directory after its plots: later runs may replace what it holds.
PLOTS_MARKER = ".cellwatch-plots"


def check_plots_directory(path: Path, what: str) -> None:
    """Refuses a plots directory that holds files no earlier run wrote: the plots are named
    after the streams, so which files they would replace is known only after reading."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"{what} {path}: exists and is not a directory")
    if path.is_dir() and not (path / PLOTS_MARKER).is_file():
        held = sorted(entry.name for entry in path.iterdir())
        if held:
            raise OutputPathError(
                f"{what} {path}: holds {len(held)} entr{'y' if len(held) == 1 else 'ies'} "
                f"(such as {held[0]!r}) that no earlier evaluation wrote, and plots named "
                f"after the streams could overwrite them; choose a new or empty directory")
    check_can_create(path / PLOTS_MARKER, what)


def check_output_file(path: Path, what: str, inputs: Sequence[Path]) -> None:
    """Refuses an output file that is one of the inputs, or exists as a non-regular file."""
    path = Path(path)
    _refuse_unnamed(path, what)
    if path.exists() or path.is_symlink():
        if path.is_symlink() or not path.is_file():
            raise OutputPathError(f"{what} {path}: exists and is not a regular file")
        for source in inputs:
            with contextlib.suppress(OSError):
                if os.path.samefile(path, source):
                    raise OutputPathError(f"{what} {path}: is the input {source}; it would be "
                                          f"overwritten, so choose another file")
    check_can_create(path, what)


@contextlib.contextmanager
def replaced_when_complete(path: Path) -> Iterator[IO[bytes]]:
    """A binary file that becomes ``path`` only when the block ends without an error.

    It is written as a temporary sibling and renamed over ``path``; an error or interrupt
    removes it and leaves whatever ``path`` held before.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.parent / f".{path.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        with staging.open("xb") as handle:
            yield handle
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)
