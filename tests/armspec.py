"""A strict validator of ARM traffic against Azure's vendored OpenAPI (Swagger 2.0) spec.

`ArmSpec.load()` reads `tests/azure_spec/containerInstance.json` (Microsoft.ContainerInstance
2023-05-01, see PROVENANCE.md there). `check_request` and `check_response` find the operation by
method and URL path and return a list of problems (empty = conforms). The rules, and why:

- Strict: a property the schema does not define is an error, after merging `allOf` (a
  ContainerGroup is `Resource` + `ContainerGroupProperties`). An object schema without
  `properties`, `additionalProperties` or `allOf` (e.g. an extension's `settings`) is free-form, as
  the spec means it; `"properties": {}` (EmptyDirVolume) allows no property at all.
- `x-ms-client-flatten` only changes SDK models, never the wire, so it is ignored.
- `readOnly` properties (on the property or on the definition it references) must not be sent in
  a request; they may appear in responses.
- `required` holds in both directions, except that a response never carries an `x-ms-secret`
  property (ARM does not return secrets); `null` is never valid (the spec has no `x-nullable`).
- `enum` is enforced exactly, also where `x-ms-enum.modelAsString` is true: that flag tells SDKs to
  tolerate values added later, but the app must send, and the emulator answer, documented values.
  The values the spec leaves as free strings (states, events) are checked separately against
  `localdev.aci_emulator.vocabulary`.
- Responses: the schema of the status code, else `default` (CloudError) for 4xx/5xx; a 2xx/3xx
  status the operation does not list is an error, and so is a body where the spec has no schema.
- Query parameters: required ones must be present, unknown ones are errors.

`Recorder` is the capture side: a per-retry azure-core policy for `build_clients(arm_policies=...)`
that keeps every exchange on the wire (retries and errors included) and checks them all.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from azure.core.pipeline import PipelineRequest, PipelineResponse
from azure.core.pipeline.policies import SansIOHTTPPolicy

SPEC_PATH = Path(__file__).resolve().parent / "azure_spec" / "containerInstance.json"
_DATE_TIME = re.compile(
    r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$", re.IGNORECASE
)
_INT32 = (-(2**31), 2**31 - 1)
Schema = dict[str, Any]


@dataclass(frozen=True)
class Operation:
    """One operation of the spec: what a request must look like and what may come back."""

    operation_id: str
    method: str
    template: str
    pattern: re.Pattern[str]
    body: Schema | None  # the schema of the `in: body` parameter, if the operation has one
    body_required: bool
    query: dict[str, Schema]  # query parameters by name
    responses: dict[str, Schema | None]  # status (or "default") -> schema (None: no body)


class ArmSpec:
    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.api_version = str(doc["info"]["version"])
        self.operations = [
            self._operation(template, method, raw)
            for template, item in doc["paths"].items()
            for method, raw in item.items()
        ]

    @classmethod
    def load(cls, path: Path = SPEC_PATH) -> ArmSpec:
        return cls(json.loads(path.read_text(encoding="utf-8")))

    # ---------------------------------------------------------------- operations

    def _operation(self, template: str, method: str, raw: dict[str, Any]) -> Operation:
        regex = "".join(
            "[^/]+" if part.startswith("{") else re.escape(part)
            for part in re.split(r"(\{[^}]+\})", template)
        )
        body: Schema | None = None
        body_required = False
        query: dict[str, Schema] = {}
        for param in raw.get("parameters", []):
            param = self.resolve(param)
            if param["in"] == "body":
                body, body_required = param["schema"], bool(param.get("required"))
            elif param["in"] == "query":
                query[param["name"]] = param
        return Operation(
            operation_id=raw["operationId"],
            method=method.upper(),
            template=template,
            # ARM matches paths without regard to case (the SDK sends resourceGroups, the spec
            # also has resourcegroups).
            pattern=re.compile(f"^{regex}/?$", re.IGNORECASE),
            body=body,
            body_required=body_required,
            query=query,
            responses={code: resp.get("schema") for code, resp in raw["responses"].items()},
        )

    def operation(self, method: str, url: str) -> Operation:
        """The operation a request is for; LookupError if the spec has none."""
        path = urlsplit(url).path
        for op in self.operations:
            if op.method == method.upper() and op.pattern.match(path):
                return op
        raise LookupError(f"no operation in the spec for {method} {path}")

    def check_request(self, method: str, url: str, body: Any | None) -> list[str]:
        """Problems with a request (its query string and JSON body; None = no body)."""
        op = self.operation(method, url)
        errors = self._check_query(op, url)
        if op.body is None:
            if body is not None:
                errors.append(f"{op.operation_id}: a body was sent but the operation takes none")
        elif body is None:
            if op.body_required:
                errors.append(f"{op.operation_id}: the required body is missing")
        else:
            errors += self.check(body, op.body, "body", request=True)
        return [f"{op.operation_id} request: {e}" for e in errors]

    def check_response(self, method: str, url: str, status: int, body: Any | None) -> list[str]:
        """Problems with a response (status and JSON body; None = empty body)."""
        op = self.operation(method, url)
        key = str(status)
        if key not in op.responses:
            if status < 400:
                return [f"{op.operation_id} response: status {status} is not documented"]
            key = "default"
        schema = op.responses.get(key)
        if schema is None:
            if body is None:
                return []
            return [f"{op.operation_id} response {status}: the spec documents no body"]
        if body is None:
            return [f"{op.operation_id} response {status}: the body is missing"]
        return [
            f"{op.operation_id} response {status}: {e}"
            for e in self.check(body, schema, "body", request=False)
        ]

    def _check_query(self, op: Operation, url: str) -> list[str]:
        query = parse_qs(urlsplit(url).query, keep_blank_values=True)
        errors = [
            f"query parameter {name!r} is not defined" for name in query if name not in op.query
        ]
        for name, param in op.query.items():
            values = query.get(name)
            if not values:
                if param.get("required"):
                    errors.append(f"required query parameter {name!r} is missing")
                continue
            raw = values[0]
            if name == "api-version" and raw != self.api_version:
                errors.append(f"api-version {raw!r} is not the spec's {self.api_version!r}")
            kind = param.get("type")
            if kind == "integer" and not re.fullmatch(r"-?\d+", raw):
                errors.append(f"query parameter {name}={raw!r} is not an integer")
            if kind == "boolean" and raw not in ("true", "false"):
                errors.append(f"query parameter {name}={raw!r} is not a boolean")
        return errors

    # ---------------------------------------------------------------- schemas

    def resolve(self, schema: Schema) -> Schema:
        """Follow local `$ref`s (`#/definitions/X`, `#/parameters/X`)."""
        seen = 0
        while "$ref" in schema:
            ref = schema["$ref"]
            if not ref.startswith("#/"):
                raise ValueError(f"only local $refs are supported, not {ref!r}")
            target: Any = self.doc
            for part in ref[2:].split("/"):
                target = target[part]
            schema = target
            seen += 1
            if seen > 50:
                raise ValueError(f"$ref loop at {ref!r}")
        return schema

    def _read_only(self, schema: Schema) -> bool:
        return bool(schema.get("readOnly")) or bool(self.resolve(schema).get("readOnly"))

    def _object_parts(self, schema: Schema) -> tuple[dict[str, Schema], set[str], Any, bool]:
        """(properties, required, additionalProperties, strict) with `allOf` merged in."""
        props: dict[str, Schema] = {}
        required: set[str] = set()
        additional: Any = None
        strict = False
        for part in schema.get("allOf", []):
            p, r, a, s = self._object_parts(self.resolve(part))
            props.update(p)
            required |= r
            additional = additional if a is None else a
            strict = strict or s
        if "properties" in schema or "allOf" in schema:
            strict = True
        props.update(schema.get("properties", {}))
        required |= set(schema.get("required", []))
        if "additionalProperties" in schema:
            additional = schema["additionalProperties"]
        return props, required, additional, strict

    def check(self, value: Any, schema: Schema, where: str, *, request: bool) -> list[str]:
        """Problems with `value` against `schema` (request=True: readOnly may not be sent)."""
        schema = self.resolve(schema)
        if value is None:
            return [f"{where}: null is not allowed"]
        kind = schema.get("type")
        is_object = kind == "object" or any(
            k in schema for k in ("properties", "allOf", "additionalProperties")
        )
        if is_object:
            return self._check_object(value, schema, where, request=request)
        errors: list[str] = []
        if kind == "array":
            if not isinstance(value, list):
                return [f"{where}: expected an array, got {type(value).__name__}"]
            for i, item in enumerate(value):
                errors += self.check(
                    item, schema.get("items", {}), f"{where}[{i}]", request=request
                )
            return errors
        if kind == "string":
            if not isinstance(value, str):
                return [f"{where}: expected a string, got {value!r}"]
            if schema.get("format") == "date-time" and not _DATE_TIME.match(value):
                errors.append(f"{where}: {value!r} is not an RFC 3339 date-time")
        elif kind == "integer":
            if not isinstance(value, int) or isinstance(value, bool):
                return [f"{where}: expected an integer, got {value!r}"]
            if schema.get("format") == "int32" and not _INT32[0] <= value <= _INT32[1]:
                errors.append(f"{where}: {value} is out of the int32 range")
        elif kind == "number":
            if not isinstance(value, int | float) or isinstance(value, bool):
                return [f"{where}: expected a number, got {value!r}"]
        elif kind == "boolean":
            if not isinstance(value, bool):
                return [f"{where}: expected a boolean, got {value!r}"]
        elif kind is not None:
            raise ValueError(f"unsupported schema type {kind!r} at {where}")
        if "enum" in schema and value not in schema["enum"]:
            errors.append(f"{where}: {value!r} is not one of {schema['enum']}")
        return errors

    def _check_object(self, value: Any, schema: Schema, where: str, *, request: bool) -> list[str]:
        if not isinstance(value, dict):
            return [f"{where}: expected an object, got {type(value).__name__}"]
        props, required, additional, strict = self._object_parts(schema)
        errors = [
            f"{where}: required property {name!r} is missing"
            for name in sorted(required)
            if name not in value
            # ARM never returns an `x-ms-secret` property: required in a request only.
            and (request or not self.resolve(props.get(name, {})).get("x-ms-secret"))
        ]
        for key, item in value.items():
            here = f"{where}.{key}"
            if key in props:
                if request and self._read_only(props[key]):
                    errors.append(f"{here}: read-only property sent in a request")
                    continue
                errors += self.check(item, props[key], here, request=request)
            elif isinstance(additional, dict):
                errors += self.check(item, additional, here, request=request)
            elif additional is True or (additional is None and not strict):
                continue
            else:
                errors.append(f"{here}: property not defined by the spec")
        return errors


# ---------------------------------------------------------------- capturing real traffic


@dataclass(frozen=True)
class Exchange:
    """One HTTP request the SDK sent and the response it got (JSON bodies parsed)."""

    method: str
    url: str
    request_body: Any | None
    status: int
    response_body: Any | None


def _json_or_none(raw: Any) -> Any | None:
    if raw is None:
        return None
    if isinstance(raw, bytes | bytearray):
        raw = raw.decode("utf-8")
    if not isinstance(raw, str):
        raise TypeError(f"unexpected body type {type(raw).__name__}")
    return json.loads(raw) if raw.strip() else None


class Recorder(SansIOHTTPPolicy):
    """A per-retry azure-core policy (`build_clients(..., arm_policies=[recorder])`) that keeps
    every exchange that reached the wire, retries and error responses included."""

    def __init__(self) -> None:
        self.exchanges: list[Exchange] = []
        self._lock = threading.Lock()

    def on_response(self, request: PipelineRequest, response: PipelineResponse) -> None:
        req = request.http_request
        raw = getattr(req, "content", None)
        if raw is None:
            raw = getattr(req, "body", None)
        http = response.http_response
        exchange = Exchange(
            method=req.method,
            url=req.url,
            request_body=_json_or_none(raw),
            status=http.status_code,
            response_body=_json_or_none(http.body()),
        )
        with self._lock:
            self.exchanges.append(exchange)

    def problems(self, spec: ArmSpec) -> list[str]:
        """Every way the recorded requests and responses depart from the spec."""
        found: list[str] = []
        for x in self.exchanges:
            where = f"{x.method} {urlsplit(x.url).path} -> {x.status}"
            try:
                errors = spec.check_request(x.method, x.url, x.request_body)
                errors += spec.check_response(x.method, x.url, x.status, x.response_body)
            except LookupError as exc:
                errors = [str(exc)]
            found += [f"{where}: {e}" for e in errors]
        return found

    def operation_ids(self, spec: ArmSpec) -> set[str]:
        return {spec.operation(x.method, x.url).operation_id for x in self.exchanges}
