"""Job profiles (JOB_PROFILES) and per-batch parameters: which image, resources and retry rules
a batch runs with, decided by its top-level folder under incoming/, and the values its folder's
parameters file may set.

JOB_PROFILES is JSON in the app setting itself (docs/profiles.md): config.py validates it with
everything else at start, before anything touches storage or ARM, and a change restarts the app
like any other setting. It never holds a secret: secure values and registry passwords name other
app settings (`"@SETTING_NAME"`), which is where secrets already live (Key Vault references).

The ACI_* settings are the profile "default"; a named profile sets its own job spec (nothing
inherited from ACI_*, so one model's secrets never reach another's image) and may narrow the
janitor's rules (timeout, attempts, no-retry codes, which default to the global settings) and
cap its own active groups within MAX_ACTIVE_GROUPS.
"""

from __future__ import annotations

import fnmatch
import json
import math
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

DEFAULT_PROFILE = "default"
PARAM_ENV_PREFIX = "ML_PARAM_"
MAX_PARAMS_BYTES = 64 * 1024
MAX_PARAM_VALUE = 4096
PARAM_TYPES = ("string", "integer", "number", "boolean")

_PROFILE_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")
_PARAM_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
_SETTING_REF_RE = re.compile(r"^@[A-Za-z_][A-Za-z0-9_]*$")

# Profile keys -> the Settings field each sets. Every key not given takes the same default as
# its ACI_* setting (image is required); the janitor's keys default to the global settings.
SPEC_KEYS = {
    "image": "image",
    "cpu": "cpu",
    "memory_gb": "memory_gb",
    "gpu_sku": "gpu_sku",
    "gpu_count": "gpu_count",
    "command": "command",
    "env": "env",
    "secure_env": "secure_env",
    "identity_id": "identity_id",
    "identity_client_id": "identity_client_id",
    "registry_server": "registry_server",
    "registry_username": "registry_username",
    "registry_password": "registry_password",
    "subnet_id": "subnet_id",
    "job_timeout_minutes": "job_timeout_minutes",
    "max_attempts": "max_attempts",
    "no_retry_exit_codes": "no_retry_exit_codes",
}
OTHER_KEYS = ("match", "max_active_groups", "params", "comment")


@dataclass(frozen=True)
class ParamSpec:
    """One declared parameter: its type, default (None: required) and allowed values or range."""

    name: str
    type: str
    default: Any = None
    allowed: tuple[Any, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None

    @property
    def env_name(self) -> str:
        return PARAM_ENV_PREFIX + self.name.upper()

    def problem(self, value: Any) -> str | None:
        """Why `value` is not acceptable for this parameter, or None."""
        ok = {
            "string": isinstance(value, str),
            "integer": isinstance(value, int) and not isinstance(value, bool),
            "number": isinstance(value, int | float)
            and not isinstance(value, bool)
            and math.isfinite(value),
            "boolean": isinstance(value, bool),
        }[self.type]
        if not ok:
            return f"must be {'an' if self.type == 'integer' else 'a'} {self.type}, got {value!r}"
        if self.type == "string" and len(value) > MAX_PARAM_VALUE:
            return f"is longer than {MAX_PARAM_VALUE} characters"
        if self.allowed is not None and value not in self.allowed:
            return f"is {value!r}, not one of {list(self.allowed)!r}"
        if self.minimum is not None and value < self.minimum:
            return f"is {value!r}, below its minimum {self.minimum:g}"
        if self.maximum is not None and value > self.maximum:
            return f"is {value!r}, above its maximum {self.maximum:g}"
        return None

    def render(self, value: Any) -> str:
        """The environment value: JSON's spelling for numbers and booleans, strings as they are."""
        return value if isinstance(value, str) else json.dumps(value)


@dataclass(frozen=True)
class Profile:
    name: str
    match: tuple[str, ...]
    # (Settings field, value) pairs, for dataclasses.replace; secure values resolved: no repr
    spec: tuple[tuple[str, Any], ...] = field(repr=False)
    max_active_groups: int | None = None
    params: tuple[ParamSpec, ...] = ()

    def matches(self, folder: str) -> bool:
        return any(fnmatch.fnmatchcase(folder, pattern) for pattern in self.match)


def route(profiles: tuple[Profile, ...], has_default: bool, relative: str) -> str | None:
    """The profile of a file by its path under incoming/: the first profile (in JOB_PROFILES
    order) one of whose patterns matches its top-level folder; else the default profile when
    there is one (the ACI_* settings), else None: the file stays where it is, blocked."""
    if "/" in relative:
        folder = relative.split("/", 1)[0]
        for profile in profiles:
            if profile.matches(folder):
                return profile.name
    return DEFAULT_PROFILE if has_default else None


def check_params(specs: tuple[ParamSpec, ...], data: bytes | None) -> tuple[dict[str, str], str]:
    """The `ML_PARAM_*` environment of a batch from its parameters file (None: no file), or a
    reason naming the first bad parameter (then the environment is empty)."""
    values: dict[str, Any] = {}
    if data is not None:
        if len(data) > MAX_PARAMS_BYTES:
            return {}, f"larger than {MAX_PARAMS_BYTES} bytes"
        try:
            parsed = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            return {}, f"not valid JSON ({exc})"
        if not isinstance(parsed, dict):
            return {}, "must be a JSON object of parameter names and values"
        values = parsed
    declared = {p.name: p for p in specs}
    unknown = sorted(set(values) - set(declared))
    if unknown:
        allowed = ", ".join(sorted(declared)) or "none"
        return {}, f"parameter {unknown[0]!r} is not declared by the profile (declared: {allowed})"
    env: dict[str, str] = {}
    for spec in specs:
        if spec.name in values:
            why = spec.problem(values[spec.name])
            if why:
                return {}, f"parameter {spec.name!r} {why}"
            env[spec.env_name] = spec.render(values[spec.name])
        elif spec.default is None:
            return {}, f"parameter {spec.name!r} is required (it has no default)"
        else:
            env[spec.env_name] = spec.render(spec.default)
    return env, ""


def parse_profiles(
    raw: str, env: Mapping[str, str], max_active_groups: int, problems: list[str]
) -> tuple[Profile, ...]:
    """Parse JOB_PROFILES, appending one problem per bad field (each named
    `JOB_PROFILES.<profile>.<key>`) to `problems`."""
    try:
        data = json.loads(raw)
    except ValueError as exc:
        problems.append(f"JOB_PROFILES is not valid JSON ({exc})")
        return ()
    if not isinstance(data, dict) or not data:
        problems.append("JOB_PROFILES must be a non-empty JSON object: profile name -> profile")
        return ()
    out = []
    for name, body in data.items():
        where = f"JOB_PROFILES.{name}"
        if name == DEFAULT_PROFILE:
            problems.append(f"{where}: 'default' is the ACI_* settings' profile; choose a name")
            continue
        if not _PROFILE_NAME_RE.match(name):
            problems.append(
                f"{where}: a profile name is 1-32 lowercase letters, digits and hyphens"
            )
            continue
        if not isinstance(body, dict):
            problems.append(f"{where} must be a JSON object")
            continue
        profile = _parse_profile(name, body, env, max_active_groups, problems)
        if profile is not None:
            out.append(profile)
    return tuple(out)


def _parse_profile(
    name: str, body: dict[str, Any], env: Mapping[str, str], cap: int, problems: list[str]
) -> Profile | None:
    from config import _GUID_RE, GPU_SKUS  # noqa: PLC0415 (config imports this module)
    from settings_reader import _ENV_NAME_RE  # noqa: PLC0415

    where = f"JOB_PROFILES.{name}"
    before = len(problems)

    def bad(key: str, why: str) -> None:
        problems.append(f"{where}.{key} {why}")

    for key in sorted(set(body) - set(SPEC_KEYS) - set(OTHER_KEYS)):
        bad(key, f"is not a profile field (known: {', '.join([*SPEC_KEYS, *OTHER_KEYS])})")

    match = body.get("match")
    patterns = (match,) if isinstance(match, str) else match
    if (
        not isinstance(patterns, list | tuple)
        or not patterns
        or not all(isinstance(p, str) and p and "/" not in p for p in patterns)
    ):
        bad("match", "must be a top-level folder name or glob, or a list of them (no '/')")
        patterns = ()

    def number(key: str, low: float, high: float, integer: bool = False) -> Any:
        value = body.get(key)
        if value is None:
            return None
        kind = int if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kind) or not low <= value <= high:
            bad(key, f"must be {'an integer' if integer else 'a number'} from {low:g} to {high:g}")
            return None
        return value

    def text(key: str) -> str | None:
        value = body.get(key)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            bad(key, "must be a non-empty string")
            return None
        return value

    def reference(key: str, value: Any) -> str | None:
        """A secret named by reference: `@SETTING` -> that app setting's value."""
        if not isinstance(value, str) or not _SETTING_REF_RE.match(value):
            bad(key, 'must name an app setting that holds the secret, e.g. "@MODEL_A_TOKEN"')
            return None
        resolved = (env.get(value[1:]) or "").strip()
        if not resolved:
            bad(key, f"names the app setting {value[1:]}, which is not set")
            return None
        return resolved

    spec: dict[str, Any] = {
        "image": None,
        "cpu": 1.0,
        "memory_gb": 1.5,
        "gpu_sku": None,
        "gpu_count": 0,
        "command": None,
        "env": (),
        "secure_env": (),
        "identity_id": None,
        "identity_client_id": None,
        "registry_server": None,
        "registry_username": None,
        "registry_password": None,
        "subnet_id": None,
    }
    image = text("image")
    if image is None and "image" not in body:
        bad("image", "is required")
    elif image is not None and any(c.isspace() for c in image):
        bad("image", f"={image!r} is not an image reference")
    spec["image"] = image
    spec["cpu"] = float(number("cpu", 0.1, 24) or 1.0)
    spec["memory_gb"] = float(number("memory_gb", 0.1, 448) or 1.5)
    sku = text("gpu_sku")
    if sku is not None and sku.upper() not in GPU_SKUS:
        bad("gpu_sku", f"={sku!r} must be one of: {', '.join(GPU_SKUS)}")
        sku = None
    spec["gpu_sku"] = sku.upper() if sku else None
    count = number("gpu_count", 0, 4, integer=True)
    if count and not sku:
        bad("gpu_count", "is set but gpu_sku is not")
    spec["gpu_count"] = count if count is not None else (1 if sku else 0)
    command = body.get("command")
    if isinstance(command, str):
        spec["command"] = tuple(shlex.split(command)) or None
    elif isinstance(command, list) and command and all(isinstance(x, str) for x in command):
        spec["command"] = tuple(command)
    elif command is not None:
        bad("command", "must be a non-empty list of strings or a shell-style string")

    for key in ("env", "secure_env"):
        items = body.get(key, {})
        if not isinstance(items, dict):
            bad(key, "must be a JSON object: variable name -> value")
            continue
        pairs = []
        for var, value in sorted(items.items()):
            if not _ENV_NAME_RE.match(var) or var.startswith("ML_"):
                bad(f"{key}.{var}", "is not a valid variable name (the ML_ prefix is reserved)")
            elif key == "env" and not isinstance(value, str):
                bad(f"{key}.{var}", "must be a string")
            elif key == "env":
                pairs.append((var, value))
            elif (resolved := reference(f"{key}.{var}", value)) is not None:
                pairs.append((var, resolved))
        spec[key] = tuple(pairs)
    both = {k for k, _ in spec["env"]} & {k for k, _ in spec["secure_env"]}
    for var in sorted(both):
        bad(f"env.{var}", "is also in secure_env")

    identity = text("identity_id")
    if identity is not None and "/userassignedidentities/" not in identity.lower():
        bad("identity_id", "must be the resource ID of a user-assigned identity")
    client_id = text("identity_client_id")
    if client_id is not None and not _GUID_RE.match(client_id):
        bad("identity_client_id", "is not a GUID")
    if identity and not client_id:
        bad("identity_client_id", "is required with identity_id")
    spec["identity_id"], spec["identity_client_id"] = identity, client_id
    server, user = text("registry_server"), text("registry_username")
    password = (
        reference("registry_password", body["registry_password"])
        if "registry_password" in body
        else None
    )
    if (user or password) and not server:
        bad("registry_server", "is required with registry_username/registry_password")
    if bool(user) != ("registry_password" in body):
        bad("registry_username", "and registry_password go together")
    if server and not user and not identity:
        bad("registry_server", "needs identity_id (AcrPull) or registry_username/password")
    spec["registry_server"], spec["registry_username"] = server, user
    spec["registry_password"] = password
    subnet = text("subnet_id")
    if subnet is not None and "/subnets/" not in subnet.lower():
        bad("subnet_id", "must be a subnet resource ID (.../subnets/NAME)")
    spec["subnet_id"] = subnet

    timeout = number("job_timeout_minutes", 0.01, 7 * 24 * 60)
    if timeout is not None:
        spec["job_timeout_minutes"] = float(timeout)
    attempts = number("max_attempts", 1, 20, integer=True)
    if attempts is not None:
        spec["max_attempts"] = attempts
    codes = body.get("no_retry_exit_codes")
    if codes is not None:
        if not isinstance(codes, list) or not all(
            isinstance(c, int) and not isinstance(c, bool) and c != 0 for c in codes
        ):
            bad("no_retry_exit_codes", "must be a list of non-zero integer exit codes")
        else:
            spec["no_retry_exit_codes"] = frozenset(codes)
    own_cap = number("max_active_groups", 1, cap, integer=True)  # within MAX_ACTIVE_GROUPS
    params = _parse_params(where, body.get("params", {}), problems)
    if len(problems) > before:
        return None
    return Profile(name, tuple(patterns), tuple(spec.items()), own_cap, params)


def _parse_params(where: str, raw: Any, problems: list[str]) -> tuple[ParamSpec, ...]:
    """`params`: name -> {"type", "default"?, "allowed"? | "min"?/"max"?}."""
    if not isinstance(raw, dict):
        problems.append(f"{where}.params must be a JSON object: parameter name -> declaration")
        return ()
    out = []
    env_names: set[str] = set()
    for name, decl in raw.items():
        at = f"{where}.params.{name}"
        if not _PARAM_NAME_RE.match(name):
            problems.append(f"{at}: a parameter name is a letter then letters, digits or _")
            continue
        if name.upper() in env_names:
            problems.append(f"{at}: another parameter has the same upper-case name")
            continue
        env_names.add(name.upper())
        if not isinstance(decl, dict) or decl.get("type") not in PARAM_TYPES:
            problems.append(f"{at}.type must be one of: {', '.join(PARAM_TYPES)}")
            continue
        extra = sorted(set(decl) - {"type", "default", "allowed", "min", "max", "comment"})
        if extra:
            problems.append(f"{at}.{extra[0]} is not a parameter field")
            continue
        kind = decl["type"]
        bounds = {k: decl.get(k) for k in ("min", "max")}
        if any(v is not None for v in bounds.values()) and kind not in ("integer", "number"):
            problems.append(f"{at}: min/max apply to integer and number parameters only")
            continue
        if any(
            v is not None and (isinstance(v, bool) or not isinstance(v, int | float))
            for v in bounds.values()
        ):
            problems.append(f"{at}: min and max must be numbers")
            continue
        allowed = decl.get("allowed")
        if allowed is not None and (not isinstance(allowed, list) or not allowed):
            problems.append(f"{at}.allowed must be a non-empty list of values")
            continue
        spec = ParamSpec(name, kind, None, None, bounds["min"], bounds["max"])
        bad_allowed = [why for v in allowed or [] if (why := spec.problem(v))]
        if bad_allowed:
            problems.append(f"{at}.allowed: a value {bad_allowed[0]}")
            continue
        spec = ParamSpec(
            name, kind, None, tuple(allowed) if allowed else None, bounds["min"], bounds["max"]
        )
        default = decl.get("default")
        if default is not None and (why := spec.problem(default)):
            problems.append(f"{at}.default {why}")
            continue
        out.append(ParamSpec(name, kind, default, spec.allowed, spec.minimum, spec.maximum))
    return tuple(out)
