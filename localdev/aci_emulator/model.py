"""ARM shapes of `Microsoft.ContainerInstance/containerGroups`: validation, secrets, identities.

Pure functions (no state, no I/O) so the rules are easy to read next to the ACI behaviour they
copy. Error codes and messages follow what real ARM/ACI return where that is documented or seen in
recorded traffic (see the package docstring for sources); where ACI's exact code is not public the
emulator uses the closest documented one.
"""

from __future__ import annotations

import copy
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

API_VERSION = "2023-05-01"
SUPPORTED_API_VERSIONS = (API_VERSION,)
RESOURCE_TYPE = "Microsoft.ContainerInstance/containerGroups"
FAKE_TENANT_ID = "00000000-0000-0000-0000-0000000000e1"

GROUP_NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9]|-(?!-))*$")
CONTAINER_NAME_RE = GROUP_NAME_RE
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
GUID_RE = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
RESOURCE_GROUP_RE = re.compile(r"^[-\w._()]{1,90}$")
OS_TYPES = ("Linux", "Windows")
RESTART_POLICIES = ("Always", "OnFailure", "Never")
IDENTITY_TYPES = {
    "systemassigned": frozenset({"SystemAssigned"}),
    "userassigned": frozenset({"UserAssigned"}),
    "systemassigned,userassigned": frozenset({"SystemAssigned", "UserAssigned"}),
    "none": frozenset(),
}
# "Update containers in Azure Container Instances", properties that require container delete:
# OS type, CPU, memory, restart policy, ports (plus GPU and the network profile, as CPU/memory).
IMMUTABLE_GROUP_FIELDS = ("osType", "restartPolicy", "subnetIds")
READ_ONLY_FIELDS = ("provisioningState", "instanceView")


class ArmError(Exception):
    """An ARM error response: `{"error": {"code": ..., "message": ...}}` with an HTTP status."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}


def bad_request(code: str, message: str) -> ArmError:
    return ArmError(400, code, message)


def iso(ts: float, millis: bool = True) -> str:
    """ARM's UTC timestamps: `2023-08-20T14:04:30.046Z` (events use whole seconds)."""
    dt = datetime.fromtimestamp(ts, UTC)
    if millis:
        return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def group_id(sub: str, rg: str, name: str) -> str:
    return f"/subscriptions/{sub}/resourceGroups/{rg}/providers/{RESOURCE_TYPE}/{name}"


def normalize_location(location: str) -> str:
    """ARM compares locations without case or spaces ("West Europe" == "westeurope")."""
    return location.replace(" ", "").lower()


def check_subscription(sub: str) -> None:
    if not GUID_RE.match(sub):
        raise bad_request(
            "InvalidSubscriptionId",
            f"The provided subscription identifier '{sub}' is malformed or invalid.",
        )


def check_resource_group(rg: str) -> None:
    if not RESOURCE_GROUP_RE.match(rg) or rg.endswith("."):
        raise bad_request(
            "InvalidResourceGroupName",
            f"Resource group name '{rg}' is invalid. It can contain alphanumerics, underscores, "
            "parentheses, hyphens and periods (not at the end), up to 90 characters.",
        )


def check_group_name(name: str) -> None:
    if not 1 <= len(name) <= 63 or not GROUP_NAME_RE.match(name) or name.endswith("-"):
        raise bad_request(
            "InvalidContainerGroupName",
            f"The container group name '{name}' is invalid. A container group name must be 1 to "
            "63 characters long, contain only lowercase letters, numbers and '-', not start or "
            "end with '-' and not contain '--'.",
        )


def _required(where: str, prop: str) -> ArmError:
    # The wording of ARM's JSON deserialisation failures (Newtonsoft) for a missing property.
    return bad_request(
        "InvalidRequestContent",
        "The request content was invalid and could not be deserialized: "
        f"'Required property '{prop}' not found in JSON. Path '{where}'.'.",
    )


def _invalid(where: str, what: str) -> ArmError:
    return bad_request(
        "InvalidRequestContent",
        f"The request content was invalid and could not be deserialized: '{what} Path '{where}'.'.",
    )


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True)
class ContainerSpec:
    """What the emulator needs to run one container (secure values included)."""

    name: str
    image: str
    command: tuple[str, ...] | None
    env: dict[str, str]


@dataclass(frozen=True)
class GroupSpec:
    """A validated PUT body: the stored document plus the parts the emulator acts on."""

    location: str
    tags: dict[str, str]
    identity: dict[str, Any] | None
    properties: dict[str, Any]  # as sent, minus read-only fields; secrets included
    zones: list[str] | None
    restart_policy: str
    containers: tuple[ContainerSpec, ...]

    def comparable(self) -> dict[str, Any]:
        """The spec as ACI compares it for an update: everything but the tags."""
        identity = None
        if self.identity is not None:
            identity = {
                "type": identity_kind(self.identity),
                "uai": sorted(k.lower() for k in self.identity.get("userAssignedIdentities") or {}),
            }
        props = copy.deepcopy(self.properties)
        props["restartPolicy"] = self.restart_policy
        return {
            "location": normalize_location(self.location),
            "identity": identity,
            "zones": self.zones,
            "properties": props,
        }


def identity_kind(identity: dict[str, Any]) -> frozenset[str]:
    raw = identity.get("type")
    key = raw.replace(" ", "").lower() if isinstance(raw, str) else ""
    if key not in IDENTITY_TYPES:
        raise bad_request(
            "InvalidIdentityType",
            f"The identity type '{raw}' is not supported. Supported types are 'SystemAssigned', "
            "'UserAssigned', 'SystemAssigned, UserAssigned' and 'None'.",
        )
    return IDENTITY_TYPES[key]


def _check_resource_id(value: Any, where: str) -> None:
    if not isinstance(value, str) or not re.match(r"^/subscriptions/[^/]+/resourceGroups/", value):
        raise bad_request(
            "LinkedInvalidPropertyId",
            f"Property id '{value}' at path '{where}' is invalid. Expect fully qualified resource "
            "Id that start with '/subscriptions/{subscriptionId}' or "
            "'/providers/{resourceProviderNamespace}/'.",
        )


def validate_group(name: str, body: Any) -> GroupSpec:
    """Check a PUT body the way ACI does before accepting it (images are checked by the store)."""
    check_group_name(name)
    if not isinstance(body, dict):
        raise _invalid("", "The request body must be a JSON object.")
    location = body.get("location")
    if not isinstance(location, str) or not location.strip():
        raise bad_request(
            "LocationRequired", "The location property is required for this definition."
        )
    tags = body.get("tags") or {}
    if not isinstance(tags, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in tags.items()
    ):
        raise _invalid("tags", "Tags must be an object of strings.")
    zones = body.get("zones")
    if zones is not None and (
        not isinstance(zones, list) or not all(isinstance(z, str) for z in zones)
    ):
        raise _invalid("zones", "Zones must be a list of strings.")
    props = body.get("properties")
    if not isinstance(props, dict):
        raise _required("", "properties")
    props = {k: copy.deepcopy(v) for k, v in props.items() if k not in READ_ONLY_FIELDS}

    identity = body.get("identity")
    if identity is not None:
        if not isinstance(identity, dict):
            raise _invalid("identity", "Identity must be an object.")
        kinds = identity_kind(identity)
        uai = identity.get("userAssignedIdentities")
        if "UserAssigned" in kinds:
            if not isinstance(uai, dict) or not uai:
                raise bad_request(
                    "InvalidIdentity",
                    "The 'userAssignedIdentities' property is required with identity type "
                    "'UserAssigned'.",
                )
            for key in uai:
                _check_resource_id(key, "identity.userAssignedIdentities")
        elif uai:
            raise bad_request(
                "InvalidIdentity",
                "The 'userAssignedIdentities' property can only be used with identity type "
                "'UserAssigned'.",
            )

    os_type = props.get("osType")
    if os_type not in OS_TYPES:
        raise bad_request(
            "InvalidOsType",
            f"The 'osType' of container group '{name}' is invalid. The supported values are "
            f"{', '.join(OS_TYPES)}.",
        )
    restart_policy = props.get("restartPolicy", "Always")
    if restart_policy not in RESTART_POLICIES:
        raise _invalid(
            "properties.restartPolicy",
            f"The restart policy '{restart_policy}' is invalid; supported values are "
            f"{', '.join(RESTART_POLICIES)}.",
        )
    for i, sub in enumerate(props.get("subnetIds") or []):
        if not isinstance(sub, dict):
            raise _invalid(f"properties.subnetIds[{i}]", "A subnet id must be an object.")
        _check_resource_id(sub.get("id"), f"properties.subnetIds[{i}].id")
    for i, cred in enumerate(props.get("imageRegistryCredentials") or []):
        if not isinstance(cred, dict) or not isinstance(cred.get("server"), str):
            raise _required(f"properties.imageRegistryCredentials[{i}]", "server")

    raw_containers = props.get("containers")
    if not isinstance(raw_containers, list) or not raw_containers:
        raise _required("properties", "containers")
    containers = []
    seen: set[str] = set()
    for i, raw in enumerate(raw_containers):
        containers.append(_validate_container(name, raw, f"properties.containers[{i}]", seen))
    return GroupSpec(
        location=location,
        tags=dict(tags),
        identity=copy.deepcopy(identity),
        properties=props,
        zones=zones,
        restart_policy=restart_policy,
        containers=tuple(containers),
    )


def _validate_container(group: str, raw: Any, where: str, seen: set[str]) -> ContainerSpec:
    if not isinstance(raw, dict):
        raise _invalid(where, "A container must be an object.")
    cname = raw.get("name")
    if not isinstance(cname, str):
        raise _required(where, "name")
    if not 1 <= len(cname) <= 63 or not CONTAINER_NAME_RE.match(cname) or cname.endswith("-"):
        raise bad_request(
            "InvalidContainerName",
            f"The container name '{cname}' in container group '{group}' is invalid. A container "
            "name must be 1 to 63 characters long, contain only lowercase letters, numbers and "
            "'-', and not start or end with '-'.",
        )
    if cname in seen:
        raise bad_request(
            "DuplicateContainerName",
            f"The container name '{cname}' is used more than once in container group '{group}'.",
        )
    seen.add(cname)
    cprops = raw.get("properties")
    if not isinstance(cprops, dict):
        raise _required(where, "properties")
    image = cprops.get("image")
    if not isinstance(image, str) or not image.strip():
        raise _required(f"{where}.properties", "image")
    if any(c.isspace() for c in image):
        raise bad_request(
            "InvalidImageName",
            f"The image '{image}' of container '{cname}' in container group '{group}' is invalid.",
        )
    requests = (cprops.get("resources") or {}).get("requests")
    if (
        not isinstance(requests, dict)
        or not _number(requests.get("cpu"))
        or not _number(requests.get("memoryInGB"))
    ):
        raise bad_request(
            "ResourceRequestsNotSpecified",
            f"The resource requests of container '{cname}' in container group '{group}' are not "
            "specified: 'cpu' and 'memoryInGB' are required.",
        )
    if requests["cpu"] <= 0 or requests["memoryInGB"] <= 0:
        raise bad_request(
            "InvalidContainerResourceRequests",
            f"The resource requests of container '{cname}' in container group '{group}' must be "
            "positive.",
        )
    gpu = requests.get("gpu")
    if gpu is not None and (
        not isinstance(gpu, dict)
        or not isinstance(gpu.get("count"), int)
        or isinstance(gpu.get("count"), bool)
        or gpu["count"] < 1
        or not isinstance(gpu.get("sku"), str)
    ):
        raise _invalid(f"{where}.properties.resources.requests.gpu", "gpu needs count and sku.")
    command = cprops.get("command")
    if command is not None and (
        not isinstance(command, list) or not all(isinstance(c, str) for c in command)
    ):
        raise _invalid(f"{where}.properties.command", "The command must be a list of strings.")
    env: dict[str, str] = {}
    for j, var in enumerate(cprops.get("environmentVariables") or []):
        vwhere = f"{where}.properties.environmentVariables[{j}]"
        if not isinstance(var, dict) or not isinstance(var.get("name"), str):
            raise _required(vwhere, "name")
        if not ENV_NAME_RE.match(var["name"]):
            raise bad_request(
                "InvalidContainerEnvironmentVariable",
                f"The environment variable name in container '{cname}' of container group "
                f"'{group}' is invalid. A valid environment variable name must start with "
                "alphabetic character or '_', followed by a string of alphanumeric characters "
                "or '_' (e.g. 'my_name',  or 'MY_NAME',  or 'MyName').",
            )
        value = var.get("secureValue")
        if value is None:
            value = var.get("value")
        if value is not None and not isinstance(value, str):
            raise _invalid(vwhere, "An environment variable value must be a string.")
        env[var["name"]] = value or ""
    return ContainerSpec(
        name=cname, image=image, command=tuple(command) if command else None, env=env
    )


def immutable_change(old: GroupSpec, new: GroupSpec) -> str | None:
    """The first property an update may not change (ACI's InvalidContainerGroupUpdate), if any."""
    for key in IMMUTABLE_GROUP_FIELDS:
        before, after = old.properties.get(key), new.properties.get(key)
        if key == "restartPolicy":
            before, after = old.restart_policy, new.restart_policy
        if before != after:
            return key
    old_res = {c["name"]: _requests(c) for c in old.properties["containers"]}
    old_ports = {c["name"]: _ports(c) for c in old.properties["containers"]}
    for c in new.properties["containers"]:
        if c["name"] in old_res and old_res[c["name"]] != _requests(c):
            return f"resources of container '{c['name']}'"
        if c["name"] in old_ports and old_ports[c["name"]] != _ports(c):
            return f"ports of container '{c['name']}'"
    return None


def _ports(container: dict[str, Any]) -> list[tuple[Any, str]]:
    ports = (container.get("properties") or {}).get("ports") or []
    return sorted(
        (p.get("port"), str(p.get("protocol") or "TCP").upper())
        for p in ports
        if isinstance(p, dict)
    )


def _requests(container: dict[str, Any]) -> Any:
    return ((container.get("properties") or {}).get("resources") or {}).get("requests")


def sanitize(properties: dict[str, Any]) -> dict[str, Any]:
    """A deep copy with every secret removed, as ACI never returns them: environment
    `secureValue`s, registry passwords, secret volume contents, Azure Files keys, the Log
    Analytics workspace key and extension protected settings."""
    props = copy.deepcopy(properties)
    for group_key in ("containers", "initContainers"):
        for container in props.get(group_key) or []:
            cprops = container.get("properties") if isinstance(container, dict) else None
            if not isinstance(cprops, dict):
                continue
            cprops["environmentVariables"] = [
                {k: v for k, v in var.items() if k != "secureValue"}
                for var in cprops.get("environmentVariables") or []
                if isinstance(var, dict)
            ]
    for cred in props.get("imageRegistryCredentials") or []:
        if isinstance(cred, dict):
            cred.pop("password", None)
    for volume in props.get("volumes") or []:
        if isinstance(volume, dict):
            if "secret" in volume:
                volume["secret"] = {}
            if isinstance(volume.get("azureFile"), dict):
                volume["azureFile"].pop("storageAccountKey", None)
    log_analytics = (props.get("diagnostics") or {}).get("logAnalytics")
    if isinstance(log_analytics, dict):
        log_analytics.pop("workspaceKey", None)
    for ext in props.get("extensions") or []:
        if isinstance(ext, dict) and isinstance(ext.get("properties"), dict):
            ext["properties"].pop("protectedSettings", None)
    return props


def render_identity(identity: dict[str, Any] | None, resource_id: str) -> dict[str, Any] | None:
    """The identity as ARM returns it: the ids a real identity would get, stable per resource."""
    if identity is None:
        return None
    kinds = identity_kind(identity)
    out: dict[str, Any] = {"type": identity.get("type")}
    if "SystemAssigned" in kinds:
        out["principalId"] = str(uuid.uuid5(uuid.NAMESPACE_URL, resource_id.lower() + "#system"))
        out["tenantId"] = FAKE_TENANT_ID
    if "UserAssigned" in kinds:
        out["userAssignedIdentities"] = {
            key: {
                "principalId": str(uuid.uuid5(uuid.NAMESPACE_URL, key.lower() + "#principal")),
                "clientId": str(uuid.uuid5(uuid.NAMESPACE_URL, key.lower() + "#client")),
            }
            for key in identity.get("userAssignedIdentities") or {}
        }
    return out
