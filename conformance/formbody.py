"""Form-encoded bodies as JSON, for validating them against an OpenAPI schema.

openapi-core 0.23 cannot deserialize Stripe's ``application/x-www-form-urlencoded`` bodies
(``deepObject`` keys such as ``payment_method_data[card][number]`` fail even for valid requests;
see the specs README). So the kit does what a form decoder on the provider side does:

1. ``decode_form`` turns bracketed keys into nested objects (``a[b][c]=1``), ``a[]=x`` and
   ``a[0]=x`` into lists;
2. ``cast_to_schema`` turns each string into the type the schema asks for there (integer,
   number, boolean; ``anyOf``/``oneOf`` branches tried in order; ``$ref`` followed), leaving
   anything that does not convert as a string so the validator reports it.

The result is validated against the operation's schema like a JSON body.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl

__all__ = ["cast_to_schema", "decode_form"]

Schema = Mapping[str, Any]


def _split_key(key: str) -> list[str]:
    head, _, rest = key.partition("[")
    parts = [head]
    while rest:
        inner, _, rest = rest.partition("]")
        parts.append(inner)
        _, _, rest = rest.partition("[")
    return parts


def _insert(container: dict[str, Any], parts: list[str], value: str) -> None:
    node: Any = container
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        following = None if last else parts[index + 1]
        if isinstance(node, list):
            if part == "" or not part.isdigit():
                node.append(value if last else ([] if following in ("",) else {}))
                node = node[-1]
                continue
            position = int(part)
            while len(node) <= position:
                node.append(None)
            if last:
                node[position] = value
            elif node[position] is None:
                node[position] = [] if following == "" or (following or "").isdigit() else {}
            node = node[position]
            continue
        if last:
            node[part] = value
            return
        if part not in node:
            node[part] = [] if following == "" or (following or "").isdigit() else {}
        node = node[part]


def decode_form(body: bytes) -> dict[str, Any]:
    """Nested objects and lists from bracketed form keys; values stay strings."""
    decoded: dict[str, Any] = {}
    for key, value in parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True):
        _insert(decoded, _split_key(key), value)
    return decoded


def _resolve(schema: Schema, root: Schema) -> Schema:
    seen = 0
    while "$ref" in schema and seen < 50:
        ref = str(schema["$ref"])
        if not ref.startswith("#/"):
            return schema
        node: Any = root
        for part in ref[2:].split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        schema = node
        seen += 1
    return schema


def _types(schema: Schema) -> list[str]:
    kind = schema.get("type")
    if isinstance(kind, list):
        return [str(k) for k in kind]
    if isinstance(kind, str):
        return [kind]
    if "properties" in schema:
        return ["object"]
    if "items" in schema:
        return ["array"]
    return []


def _cast_scalar(value: str, kinds: list[str]) -> Any:
    for kind in kinds:
        if kind == "integer" and value.lstrip("-").isdigit():
            return int(value)
        if kind == "number":
            try:
                return int(value) if value.lstrip("-").isdigit() else float(value)
            except ValueError:
                continue
        if kind == "boolean" and value in ("true", "false"):
            return value == "true"
    return value


def cast_to_schema(value: Any, schema: Schema, root: Schema) -> Any:
    """``value`` (from ``decode_form``) with strings converted where ``schema`` wants another
    type. See the module docstring."""
    schema = _resolve(schema, root)
    for combinator in ("anyOf", "oneOf"):
        if combinator in schema:
            for branch in schema[combinator]:
                resolved = _resolve(branch, root)
                kinds = _types(resolved)
                fits = (
                    (isinstance(value, dict) and "object" in kinds)
                    or (isinstance(value, list) and "array" in kinds)
                    or (isinstance(value, str) and not {"object", "array"} & set(kinds))
                )
                if fits:
                    converted = cast_to_schema(value, resolved, root)
                    if isinstance(value, str) and converted == value and "string" not in kinds:
                        continue
                    return converted
            return value
    if "allOf" in schema:
        for branch in schema["allOf"]:
            value = cast_to_schema(value, branch, root)
        return value
    kinds = _types(schema)
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        result: dict[str, Any] = {}
        for key, item in value.items():
            sub = properties.get(key, extra if isinstance(extra, dict) else None)
            result[key] = cast_to_schema(item, sub, root) if sub is not None else item
        return result
    if isinstance(value, list):
        items = schema.get("items")
        return [cast_to_schema(i, items, root) if isinstance(items, dict) else i for i in value]
    if isinstance(value, str):
        return _cast_scalar(value, kinds)
    return value
