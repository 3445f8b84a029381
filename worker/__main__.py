"""Entry point: `python -m worker` (the container image's ENTRYPOINT)."""

from worker.run import main

if __name__ == "__main__":
    raise SystemExit(main())
