"""Customer.io's own request schemas: its published Track API OpenAPI document
(``track-openapi.json``, trimmed; its description says where it comes from), checked with
jsonschema. The fake's strict mode applies them, and so does the conformance test, so that
the fake refuses what Customer.io would.

The document has defects that make it refuse valid requests; ``_patched`` fixes each, with
the reason. What it leaves out (sizes, ULIDs) ``store.check`` covers. Without jsonschema
installed (``pip install django-cio[fakeserver]``) strict mode checks only those.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

Json = dict[str, Any]
DOCUMENT = Path(__file__).with_name("track-openapi.json")

# v2 items by (type, action): the component that describes each.
V2_SCHEMAS = {
    **{("person", action): f"person_{action}" for action in (
        "event", "screen", "page", "delete", "suppress", "unsuppress", "add_device",
        "delete_device", "merge", "add_relationships", "delete_relationships")},
    ("person", "identify"): "identify_person",
    **{("object", action): f"object_{action}" for action in (
        "identify", "identify_anonymous", "delete", "add_relationships", "delete_relationships")},
}


def _patched(document: Json) -> Json:
    schemas = document["components"]["schemas"]
    paths = document["paths"]

    def require_each_branch(one_of: list[Json]) -> None:
        # Branches that require nothing all match any identifier, and oneOf then fails.
        for branch in one_of:
            branch.setdefault("required", list(branch["properties"]))

    require_each_branch(schemas["v2_cio_relationships"]["items"]["properties"]["identifiers"]
                        ["oneOf"])
    merge = paths["/api/v1/merge_customers"]["post"]["requestBody"]["content"][
        "application/json"]["schema"]["properties"]
    for side in ("primary", "secondary"):
        require_each_branch(merge[side]["oneOf"])
    # Page and screen events also match the standard branch, whose type may be any of the
    # three, so oneOf fails for them: the standard branch is the one of type "event".
    schemas["anonymousEventsRequest"]["oneOf"][0]["properties"]["type"]["enum"] = ["event"]
    # A person's screen view has no anonymous_id (the document copies the anonymous one).
    for branch in schemas["eventsRequest"]["oneOf"]:
        if "anonymous_id" in branch.get("required", ()):
            branch["required"].remove("anonymous_id")
    # v1 attribute values may be any JSON, as v2's are (the document lists only scalars).
    identify = paths["/api/v1/customers/{identifier}"]["put"]["requestBody"]["content"][
        "application/json"]["schema"]
    identify["additionalProperties"] = {}
    return document


@cache
def document() -> Json:
    """The trimmed document, patched (see ``_patched``)."""
    return _patched(json.loads(DOCUMENT.read_text()))


@cache
def _validator(pointer: str) -> Any:
    """A validator for the schema at ``pointer`` in the document (None without jsonschema)."""
    try:
        from jsonschema import Draft202012Validator
        from referencing import Registry
        from referencing.jsonschema import DRAFT202012
    except ImportError:
        return None
    registry = Registry().with_resource("urn:track", DRAFT202012.create_resource(document()))
    return Draft202012Validator({"$ref": f"urn:track#{pointer}"}, registry=registry)


def _request_body(path: str, method: str) -> str:
    return (f"/paths/{path.replace('~', '~0').replace('/', '~1')}/{method}/requestBody/content"
            f"/application~1json/schema")


@cache
def _v1_routes() -> list[tuple[re.Pattern[str], str, str]]:
    routes = []
    for path, methods in document()["paths"].items():
        pattern = re.compile("^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(path)) + "$")
        for method, operation in methods.items():
            if isinstance(operation, dict) and "requestBody" in operation:
                routes.append((pattern, method.upper(), _request_body(path, method)))
    return routes


def available() -> bool:
    """Whether jsonschema is installed, so that the schemas are applied."""
    return _validator("/openapi") is not None


def v2_problems(item: Any) -> list[tuple[str, str]]:
    """(field, message) for each way a v2 item breaks its schema."""
    if not isinstance(item, dict):
        return [("batch", "an operation must be an object")]
    name = V2_SCHEMAS.get((item.get("type"), item.get("action")))  # type: ignore[arg-type]
    if name is None:
        return [("action", "unknown type or action")]
    return _problems(f"/components/schemas/{name}", item)


def v1_problems(method: str, path: str, body: Any) -> list[tuple[str, str]]:
    """(field, message) for each way a v1 request body breaks its schema (a path the
    document does not give a body: none)."""
    for pattern, route_method, pointer in _v1_routes():
        if route_method == method and pattern.match(path):
            return _problems(pointer, body)
    return []


def _problems(pointer: str, value: Any) -> list[tuple[str, str]]:
    """The most telling error, naming the rule and never the value (it may be PII)."""
    validator = _validator(pointer)
    if validator is None:
        return []
    error = None
    errors = list(validator.iter_errors(value))
    while errors:  # into oneOf and anyOf, towards the deepest field at fault
        error = max(errors, key=lambda error: len(error.absolute_path))
        errors = [*error.context]
    if error is None:
        return []
    rule = str(error.validator)
    if rule not in ("oneOf", "anyOf", "allOf", "additionalProperties"):
        rule += f" {json.dumps(error.validator_value)[:100]}"
    return [(".".join(str(part) for part in error.absolute_path) or "body",
             f"breaks Customer.io's schema ({rule})")]
