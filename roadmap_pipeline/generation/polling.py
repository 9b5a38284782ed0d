"""Waiting for an advisory lock by polling ``pg_try_advisory_lock``.

Both the concept locks and the checkpoint migrations wait this way rather than inside a blocking
``pg_advisory_lock``: a statement blocked in the server counts as running, and the migrations
build indexes CONCURRENTLY, which wait for every running statement of the database.
"""

from __future__ import annotations

import time
from collections.abc import Callable

POLL_START_S = 0.02
POLL_MAX_S = 0.5


def poll_until(
    attempt: Callable[[], bool], start_s: float = POLL_START_S, max_s: float = POLL_MAX_S
) -> None:
    """Call ``attempt`` until it returns True, sleeping between calls with a doubling delay
    (``start_s``, capped at ``max_s``) so that a long wait costs few round trips."""
    delay = start_s
    while not attempt():
        time.sleep(delay)
        delay = min(delay * 2, max_s)
