"""The registry: every row group by its `--only` name, in the order a run measures them."""

from __future__ import annotations

from collections.abc import Callable

from . import backlog, claim, history, idle, launch, scale, sweep
from .harness import Bench

SECTIONS: dict[str, Callable[[Bench], None]] = {
    "idle": idle.run,  # rows 1-2
    "claim": claim.run,  # rows 3-4
    "scale": scale.run,  # row 5
    "launch": launch.run,  # row 6
    "sweep": sweep.run,  # row 7
    "history": history.run,  # row 8
    "backlog": backlog.run,  # row 9
}
