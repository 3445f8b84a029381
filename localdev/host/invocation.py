"""Calling user functions: the ``context`` argument, the host's log lines, running invocations."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import azure.functions as func
from azure.functions import _abc as func_abc

# One logger name for the whole host, so its console output reads as before the split.
logger = logging.getLogger("localdev.host")

HOST_API_REASON = "This function was programmatically called via the host APIs."


class _TraceContext(func_abc.TraceContext):
    @property
    def trace_parent(self) -> str:
        return ""

    @property
    def trace_state(self) -> str:
        return ""

    @property
    def attributes(self) -> dict[str, str]:
        return {}


class _RetryContext(func_abc.RetryContext):
    @property
    def retry_count(self) -> int:
        return 0

    @property
    def max_retry_count(self) -> int:
        return 0

    @property
    def exception(self) -> Any:
        return None


class InvocationContext(func.Context):
    """The ``context`` argument the worker passes to functions that declare it."""

    def __init__(self, invocation_id: str, function_name: str, function_directory: str) -> None:
        self._invocation_id = invocation_id
        self._function_name = function_name
        self._function_directory = function_directory
        self._thread_local = threading.local()
        self._thread_local.invocation_id = invocation_id

    @property
    def invocation_id(self) -> str:
        return self._invocation_id

    @property
    def thread_local_storage(self) -> Any:
        return self._thread_local

    @property
    def function_name(self) -> str:
        return self._function_name

    @property
    def function_directory(self) -> str:
        return self._function_directory

    @property
    def trace_context(self) -> func_abc.TraceContext:
        return _TraceContext()

    @property
    def retry_context(self) -> func_abc.RetryContext:
        return _RetryContext()


@dataclasses.dataclass
class InvocationOutcome:
    """What one invocation produced."""

    succeeded: bool
    result: Any = None


class Invoker:
    """Calls user functions with the host's log lines and tracks what is running."""

    def __init__(self, function_directory: str) -> None:
        self._function_directory = function_directory
        self._running: dict[str, str] = {}  # invocation id -> function name
        self._idle = threading.Condition()

    def invoke(
        self,
        name: str,
        user_function: Callable[..., Any],
        kwargs: dict[str, Any],
        *,
        reason: str,
        wants_context: bool,
    ) -> InvocationOutcome:
        """Run one invocation; exceptions are logged with traceback, never raised."""
        invocation_id = str(uuid.uuid4())
        if wants_context:
            kwargs = {
                **kwargs,
                "context": InvocationContext(invocation_id, name, self._function_directory),
            }
        with self._idle:
            self._running[invocation_id] = name
        logger.info("Executing 'Functions.%s' (Reason='%s', Id=%s)", name, reason, invocation_id)
        started = time.monotonic()
        try:
            result = user_function(**kwargs)
            if inspect.isawaitable(result):
                result = asyncio.run(_await(result))
        except (Exception, SystemExit):
            elapsed = (time.monotonic() - started) * 1000
            logger.exception(
                "Executed 'Functions.%s' (Failed, Id=%s, Duration=%dms)\n"
                "Exception while executing function: Functions.%s",
                name,
                invocation_id,
                elapsed,
                name,
            )
            return InvocationOutcome(succeeded=False)
        finally:
            with self._idle:
                self._running.pop(invocation_id, None)
                self._idle.notify_all()
        elapsed = (time.monotonic() - started) * 1000
        logger.info(
            "Executed 'Functions.%s' (Succeeded, Id=%s, Duration=%dms)",
            name,
            invocation_id,
            elapsed,
        )
        return InvocationOutcome(succeeded=True, result=result)

    def wait_idle(self, timeout: float) -> list[str]:
        """Wait up to ``timeout`` seconds for running invocations; return those still running."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._running:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._idle.wait(remaining)
            return sorted(self._running.values())


async def _await(awaitable: Any) -> Any:
    return await awaitable
