"""Request classification: which kind of Blob or ARM request a proxied request is.

Kinds are what the proxy counts, and what faults, triggers and refusals match against.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Literal
from urllib.parse import parse_qsl

Classifier = Callable[[str, str, str | Mapping[str, str], Mapping[str, str]], str]
Flavor = Literal["storage", "arm"]


def _query(query: str | Mapping[str, str]) -> dict[str, str]:
    """Query parameters with lower-cased names and values (Azure treats them case-insensitively)."""
    items = parse_qsl(query, keep_blank_values=True) if isinstance(query, str) else query.items()
    return {k.lower(): v.lower() for k, v in items}


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is not None:
        return value
    lname = name.lower()
    for key, val in headers.items():
        if key.lower() == lname:
            return val
    return None


def storage_kind(
    method: str, path: str, query: str | Mapping[str, str], headers: Mapping[str, str]
) -> str:
    """Classify a Blob REST request.

    Kinds: ``list``, ``copy`` (PUT with x-ms-copy-source), ``put_blob``, ``put_block``,
    ``put_block_list``, ``lease:<action>`` (``lease`` if no action header), ``delete`` (blob),
    ``batch`` (a Blob Batch request: many deletes in one),
    ``delete_container``, ``get_blob``, ``get_props`` (HEAD, and GET of container properties or
    metadata), ``set_metadata``, ``create_container``, ``abort_copy``, ``other``.
    Container-level calls are recognised by ``restype=container``, not by counting path segments,
    because blob names may contain slashes.
    """
    m = method.upper()
    q = _query(query)
    comp = q.get("comp", "")
    container_level = q.get("restype", "") == "container"
    if m == "HEAD":
        return "get_props"
    if m == "GET":
        if comp == "list":
            return "list"
        if comp in ("", "metadata", "properties") and container_level:
            return "get_props"
        if comp == "":
            return "get_blob" if path.strip("/").count("/") >= 2 else "other"
        if comp == "metadata":
            return "get_props"
        return "other"
    if m == "PUT":
        if comp == "lease":
            action = (_header(headers, "x-ms-lease-action") or "").strip().lower()
            return f"lease:{action}" if action else "lease"
        if comp == "block":
            return "put_block"
        if comp == "blocklist":
            return "put_block_list"
        if comp == "copy":
            return "abort_copy"
        if _header(headers, "x-ms-copy-source"):
            return "copy"
        if comp == "metadata":
            return "set_metadata"
        if comp == "":
            return "create_container" if container_level else "put_blob"
        return "other"
    if m == "DELETE":
        if container_level:
            return "delete_container"
        return "delete" if comp == "" else "other"
    if m == "POST" and comp == "batch":
        return "batch"
    return "other"


_ACI_GROUPS = "/providers/microsoft.containerinstance/containergroups"


def arm_kind(
    method: str, path: str, query: str | Mapping[str, str], headers: Mapping[str, str]
) -> str:
    """Classify an ARM request for Microsoft.ContainerInstance container groups.

    Kinds: ``arm_list`` (GET on the containerGroups collection, subscription- or resource-group
    scoped, nextLink pages included since they hit the same path), ``arm_get``, ``arm_put``,
    ``arm_delete``, ``arm_patch``, ``arm_stop``, ``arm_logs``, ``arm_other``.
    """
    m = method.upper()
    low = path.lower().rstrip("/")
    at = low.find(_ACI_GROUPS)
    if at < 0:
        return "arm_other"
    rest = [p for p in low[at + len(_ACI_GROUPS) :].split("/") if p]
    if not rest:
        return "arm_list" if m == "GET" else "arm_other"
    if len(rest) == 1:
        by_method = {
            "GET": "arm_get",
            "PUT": "arm_put",
            "DELETE": "arm_delete",
            "PATCH": "arm_patch",
        }
        return by_method.get(m, "arm_other")
    if len(rest) == 2 and rest[1] == "stop" and m == "POST":
        return "arm_stop"
    if len(rest) == 4 and rest[1] == "containers" and rest[3] == "logs" and m == "GET":
        return "arm_logs"
    return "arm_other"


def queue_kind(
    method: str, path: str, query: str | Mapping[str, str], headers: Mapping[str, str]
) -> str:
    """Classify a Queue REST request (the completion notifications' queue).

    Kinds: ``queue_send`` (POST .../messages: Put Message), ``queue_receive`` (GET messages),
    ``queue_peek`` (GET messages?peekonly=true), ``queue_delete_message``, ``queue_create``,
    ``queue_other``.
    """
    m = method.upper()
    q = _query(query)
    parts = [p for p in path.split("/") if p]  # account, queue[, messages[, id]]
    if len(parts) >= 3 and parts[2] == "messages":
        if m == "POST":
            return "queue_send"
        if m == "GET":
            return "queue_peek" if q.get("peekonly") == "true" else "queue_receive"
        if m == "DELETE" and len(parts) == 4:
            return "queue_delete_message"
        return "queue_other"
    if len(parts) == 2 and m == "PUT" and not q.get("comp"):
        return "queue_create"
    return "queue_other"


def kind_matches(pattern: str, kind: str) -> bool:
    """``*`` matches anything; ``lease`` matches ``lease`` and every ``lease:<action>``."""
    return pattern in ("*", kind) or kind.startswith(pattern + ":")
