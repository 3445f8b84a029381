"""`python -m localdev.proxy`: run the proxy as a process of its own (see `cli`)."""

from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
