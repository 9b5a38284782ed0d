"""Timing one action of a benchmark: wall time, the database server's CPU time (which a busy
machine does not inflate), and the load average it ran under."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class Measured:
    wall: float
    cpu: float | None  # CPU seconds of the server processes, when the server runs on this host
    load: float  # 1-minute load average at the end
    result: Any

    def __str__(self) -> str:
        return self._format(self.wall, self.cpu)

    def scaled(self, factor: float) -> str:
        return self._format(self.wall * factor, self.cpu * factor if self.cpu else None)

    def _format(self, wall: float, cpu: float | None) -> str:
        shown = f"{wall * 1000:7.1f} ms" if wall < 1 else f"{wall:7.2f} s"
        if cpu is not None:
            shown += f" ({cpu:.2f} s server CPU)"
        return f"{shown} [load {self.load:.2f}]"


def measure(cpu: Callable[[], float | None], action: Callable[[], Any]) -> Measured:
    """Run ``action`` once; ``cpu`` reads the server's CPU seconds (None: not measurable)."""
    before = cpu()
    started = time.perf_counter()
    result = action()
    wall = time.perf_counter() - started
    after = cpu()
    used = after - before if before is not None and after is not None else None
    return Measured(wall, used, os.getloadavg()[0], result)


def machine_load() -> str:
    return (
        ", ".join(f"{x:.2f}" for x in os.getloadavg()) + f" (1, 5, 15 min; {os.cpu_count()} CPUs)"
    )
