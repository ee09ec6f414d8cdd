"""A FIFO for tests of code that must refuse non-regular files instead of blocking on them."""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def fed_fifo(path: Path, text: str, within_s: float = 3.0) -> Iterator[Path]:
    """A FIFO at ``path`` that hands ``text`` to a reader that opens it within ``within_s``.

    Code that wrongly reads the FIFO then gets ``text`` instead of blocking forever, so a
    test of the refusal fails (rather than hangs) when the refusal is missing.
    """
    os.mkfifo(path)

    def feed() -> None:
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            try:
                fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as error:
                if error.errno != errno.ENXIO:  # ENXIO: no reader yet
                    return
                time.sleep(0.02)
                continue
            with os.fdopen(fd, "w") as handle:
                handle.write(text)
            return

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        yield path
    finally:
        feeder.join()
