"""The janitor: record finished batches, keep their logs, relaunch or dead-letter, delete groups."""
