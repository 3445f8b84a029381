"""Errors and exit codes shared by the local host's modules."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FUNCTION_FAILED = 1
EXIT_CONFIG_ERROR = 2


class HostError(Exception):
    """A configuration or startup problem: reported in one line, exit code 2."""


class ScheduleError(HostError):
    """A timer schedule that the Functions host would refuse."""
