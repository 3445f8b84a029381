"""Sample Model Launcher worker: processes one claimed batch inside its ACI container.

The launcher starts the image with the `ML_*` environment contract (see worker/README.md); the
worker reads the batch manifest, streams every input once (sha256, size, text/CSV/JSON stats),
writes one result per input plus a batch summary under the output prefix, and reports the batch
outcome through its exit code, which the janitor records.
"""

__version__ = "1.0.0"
