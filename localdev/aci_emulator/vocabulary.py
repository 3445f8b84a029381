"""The state and event values ACI documents, which its REST spec leaves as free strings.

The 2023-05-01 spec types `provisioningState`, `instanceView.state`, a container's
`currentState.state` and an event's `name` and `type` as plain strings. Clients (this app, the
janitor) branch on them, so the emulator may emit only values Azure documents; a test
(`tests/test_arm_contract.py`) checks every value in its responses against these sets and
`store.add_event` refuses an undocumented event. Add a value only with a source.

Sources:
- [STATES] Microsoft Learn, "Azure Container Instances states",
  https://learn.microsoft.com/azure/container-instances/container-state
  (MicrosoftDocs/azure-docs `articles/container-instances/container-state.md`).
- [LOGS] Microsoft Learn, "Retrieve container logs and events in Azure Container Instances",
  https://learn.microsoft.com/azure/container-instances/container-instances-get-logs
  (the `az container show` events: Pulling, Pulled, Created, Started; type Normal).
- [TROUBLESHOOT] Microsoft Learn, "Troubleshoot common issues in Azure Container Instances",
  https://learn.microsoft.com/azure/container-instances/container-instances-troubleshooting
  (an image that cannot be pulled: Pulling, Failed (type Warning), BackOff).

- [TRAFFIC] Recorded Azure traffic quoted in the project's issue "Hold to Azure's contract":
  a container killed by the platform (exit code 7147/7148) carries the event "Killing" with the
  message "Killing container (platform initiated)"; ACI emits the same name when it stops or
  restarts a container (update in place, stop).

Not constrained: `detailStatus` (the spec calls it "the human-readable status") and event
messages.
"""

from __future__ import annotations

# properties.provisioningState: the outcome of the last PUT/POST/DELETE [STATES, "Provisioning"].
# Pending/Creating are transient; Unhealthy/Repairing are repairs of a running group.
PROVISIONING_STATES = frozenset(
    {"Pending", "Creating", "Succeeded", "Failed", "Unhealthy", "Repairing"}
)

# properties.instanceView.state of a container group [STATES, "Container Groups"].
GROUP_STATES = frozenset({"Running", "Stopped", "Pending", "Succeeded", "Failed"})

# containers[].properties.instanceView.currentState/previousState.state [STATES, "Containers"].
CONTAINER_STATES = frozenset({"Running", "Waiting", "Terminated"})

# instanceView.events[].name [LOGS, TROUBLESHOOT, TRAFFIC].
EVENT_NAMES = frozenset({"Pulling", "Pulled", "Created", "Started", "Failed", "BackOff", "Killing"})

# instanceView.events[].type [LOGS, TROUBLESHOOT].
EVENT_TYPES = frozenset({"Normal", "Warning"})


def undocumented_values(group: dict[str, object]) -> list[str]:
    """Every state or event value in a rendered container group (a GET/PUT/list body) that is not
    documented above, as 'path: value' strings; an empty list means the group is clean."""
    found: list[str] = []

    def check(where: str, value: object, allowed: frozenset[str]) -> None:
        if value is not None and value not in allowed:
            found.append(f"{where}: {value!r}")

    def events(where: str, view: dict[str, object]) -> None:
        for i, event in enumerate(_list(view.get("events"))):
            if isinstance(event, dict):
                check(f"{where}.events[{i}].name", event.get("name"), EVENT_NAMES)
                check(f"{where}.events[{i}].type", event.get("type"), EVENT_TYPES)

    props = group.get("properties")
    if not isinstance(props, dict):
        return found
    check("properties.provisioningState", props.get("provisioningState"), PROVISIONING_STATES)
    view = props.get("instanceView")
    if isinstance(view, dict):
        check("properties.instanceView.state", view.get("state"), GROUP_STATES)
        events("properties.instanceView", view)
    for kind in ("containers", "initContainers"):
        for i, container in enumerate(_list(props.get(kind))):
            cprops = container.get("properties") if isinstance(container, dict) else None
            cview = cprops.get("instanceView") if isinstance(cprops, dict) else None
            if not isinstance(cview, dict):
                continue
            where = f"properties.{kind}[{i}].properties.instanceView"
            for key in ("currentState", "previousState"):
                state = cview.get(key)
                if isinstance(state, dict):
                    check(f"{where}.{key}.state", state.get("state"), CONTAINER_STATES)
            events(where, cview)
    return found


def _list(value: object) -> list[object]:
    return value if isinstance(value, list) else []
