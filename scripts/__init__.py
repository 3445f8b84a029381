"""Developer scripts: `python -m scripts.chaos`, `python -m scripts.bench`, `scripts/drop.py`."""
