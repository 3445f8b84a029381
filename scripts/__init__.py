"""Developer scripts: `python -m scripts.chaos`, `scripts/bench.py`, `scripts/drop.py`."""
