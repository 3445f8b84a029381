"""The poll side of Model Launcher: claim new blobs into batches and launch a group per batch."""
