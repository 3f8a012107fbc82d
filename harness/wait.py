"""Waiting on a condition, never sleep-and-hope: poll ``predicate`` until it holds or ``timeout`` passes; and a
test's steps run beside a service that holds the main thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


def until(predicate: Callable[[], bool], timeout: float = 20.0, every: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return predicate()


def drive(stop: Callable[[], None], steps: Callable[[], None]) -> list[BaseException]:
    """Run ``steps`` in a thread while the service runs in the main thread (it installs signal handlers), then stop
    the service whatever happened; the errors are returned for the test to raise."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            steps()
        except BaseException as e:  # re-raised in the test's thread
            errors.append(e)
        finally:
            stop()

    threading.Thread(target=run, daemon=True).start()
    return errors
