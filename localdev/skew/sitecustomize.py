"""Shift this process's wall clock by ML_CLOCK_SKEW_SECONDS (chaos runs and tests only).

Put this folder first on PYTHONPATH of a process and its `time.time()`, `datetime.now()` and
`datetime.utcnow()` run that many seconds ahead (negative: behind) of the machine's clock, the
way a host with a wrong clock would; monotonic clocks are untouched. A FAKE wrong clock: no
real part can give one process another wall time on a shared machine.
"""

from __future__ import annotations

import datetime as _dt
import os
import time as _time

_SKEW = float(os.environ.get("ML_CLOCK_SKEW_SECONDS", "0") or 0)

if _SKEW:
    _real_time = _time.time
    _real_time_ns = _time.time_ns

    def _time_skewed() -> float:
        return _real_time() + _SKEW

    def _time_ns_skewed() -> int:
        return _real_time_ns() + int(_SKEW * 1e9)

    _time.time = _time_skewed
    _time.time_ns = _time_ns_skewed

    class _SkewedDatetime(_dt.datetime):
        @classmethod
        def now(cls, tz: _dt.tzinfo | None = None) -> _SkewedDatetime:
            return cls.fromtimestamp(_time_skewed(), tz)

        @classmethod
        def utcnow(cls) -> _SkewedDatetime:
            return cls.fromtimestamp(_time_skewed(), _dt.UTC).replace(tzinfo=None)

    _dt.datetime = _SkewedDatetime  # type: ignore[misc]
