"""``python -m localdev.host``: see the package docstring for the flags and behaviour."""

from __future__ import annotations

import sys

from localdev.host.cli import main

if __name__ == "__main__":
    sys.exit(main())
