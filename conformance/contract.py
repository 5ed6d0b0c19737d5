"""Contract validation: every request a connector sends, and every reply, against the provider's
official OpenAPI 3.0/3.1 description (``--openapi SPEC``).

The kit validates the bytes the traffic tap saw (after detokenization: what the provider really
receives). Each exchange is placed on the spec's first server URL by its path relative to the
run's base URL, so a simulator on ``http://127.0.0.1:PORT`` is judged like the real host. Then:

- JSON (and other) bodies, parameters and security go through openapi-core;
- form-encoded bodies are validated by the kit (``conformance.formbody``: bracketed keys decoded
  and cast by the schema, then the operation's schema checked with openapi-schema-validator),
  because openapi-core 0.23 cannot deserialize Stripe's ``deepObject`` forms; openapi-core still
  checks that request's path, parameters and security;
- each reply is validated against the operation's documented responses.

Every problem becomes a ``Violation`` with a JSON path (``$.amount.value``, ``$`` for the whole
body, ``header:X-API-Key``, ``path``). Messages name the rule broken, never the value: the value
may be card data.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from jsonschema.exceptions import ValidationError as SchemaError  # type: ignore[import-untyped]
from openapi_core import OpenAPI
from openapi_core.testing import MockRequest, MockResponse
from openapi_schema_validator import OAS30Validator, OAS31Validator

from conformance.formbody import cast_to_schema, decode_form
from conformance.results import Violation
from conformance.traffic import TappedExchange

__all__ = ["ContractValidator", "SpecLoadError"]

_FORM = "application/x-www-form-urlencoded"
_NAMES_ONLY = frozenset({"required", "additionalProperties", "dependentRequired", "propertyNames"})
_BODY_ERRORS = frozenset(
    {
        "MissingRequestBody",
        "MissingRequiredRequestBody",
        "InvalidRequestBody",
        "RequestBodyDeserialiseError",
    }
)


class SpecLoadError(ValueError):
    """The OpenAPI file cannot be read or is not a valid description."""


def _json_path(parts: Iterable[object]) -> str:
    path = "$"
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def _schema_message(error: SchemaError) -> str:
    if error.validator in _NAMES_ONLY:
        return str(error.message)
    if error.validator in ("anyOf", "oneOf"):
        return f"matches none of the allowed shapes ({error.validator})"
    rule = json.dumps(error.validator_value, default=str)
    if len(rule) > 80:
        rule = rule[:77] + "..."
    return f"violates {error.validator} {rule}"


def _schema_errors(error: BaseException) -> list[SchemaError]:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        found = getattr(current, "schema_errors", None)
        if found:
            return list(found)
        current = current.__cause__ or current.__context__
    return []


def _safe_text(error: BaseException) -> str:
    """What an openapi-core error may say without quoting data."""
    name = type(error).__name__
    if hasattr(error, "name") and isinstance(getattr(error, "name", None), str):
        return f"{name}: {error.name}"  # parameter and header errors carry their name
    if name in ("ServerNotFound", "PathNotFound", "OperationNotFound", "ResponseNotFound"):
        return f"{name}: {error}"
    if name.startswith("Security"):
        return f"{name}: no accepted credentials were sent"
    if name == "MediaTypeNotFound":
        return f"{name}: the content type is not documented"
    return name


@dataclass(frozen=True, slots=True)
class _Located:
    host_url: str
    path: str
    template: str | None
    operation: Mapping[str, Any] | None


class ContractValidator:
    """One loaded spec; ``validate(exchange, base_url)`` lists that exchange's violations."""

    _cache: dict[Path, ContractValidator] = {}  # noqa: RUF012 - a process-wide cache on purpose

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            text = path.read_text(encoding="utf-8")
            if path.suffix in (".yaml", ".yml"):
                import yaml  # type: ignore[import-untyped]

                self.document: dict[str, Any] = yaml.safe_load(text)
            else:
                self.document = json.loads(text)
            self.api = OpenAPI.from_file_path(str(path))
        except Exception as exc:  # noqa: BLE001 - any failure to load is the same problem
            raise SpecLoadError(f"{path}: cannot load the OpenAPI description ({exc})") from None
        version = str(self.document.get("openapi", "3.0"))
        self._validator_class = OAS31Validator if version.startswith("3.1") else OAS30Validator
        servers = self.document.get("servers") or [{"url": "http://localhost"}]
        server = str(servers[0].get("url", "/"))
        for name, variable in (servers[0].get("variables") or {}).items():
            server = server.replace(f"{{{name}}}", str(variable.get("default", "")))
        if server.startswith("/"):
            server = "http://localhost" + server
        parts = urlsplit(server)
        self.server_host = f"{parts.scheme}://{parts.netloc}"
        self.server_path = parts.path.rstrip("/")
        self._templates = [
            (
                template,
                re.compile("^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)) + "$"),
            )
            for template in self.document.get("paths", {})
        ]

    @classmethod
    def load(cls, path: Path) -> ContractValidator:
        """A validator for ``path``, loaded once per process (large specs take seconds)."""
        resolved = path.resolve()
        if resolved not in cls._cache:
            cls._cache[resolved] = cls(resolved)
        return cls._cache[resolved]

    # -- locating -------------------------------------------------------------------------------

    def _locate(self, exchange: TappedExchange, base_url: str) -> _Located:
        base_path = urlsplit(base_url).path.rstrip("/")
        path = exchange.url.path
        if base_path and path.startswith(base_path):
            path = path[len(base_path) :] or "/"
        template = next((t for t, regex in self._templates if regex.match(path)), None)
        operation = None
        if template is not None:
            operation = self.document["paths"][template].get(exchange.method.lower())
        return _Located(self.server_host, self.server_path + path, template, operation)

    def _request(self, exchange: TappedExchange, located: _Located, *, body: bool) -> MockRequest:
        headers = {name: value for name, value in exchange.headers}
        return MockRequest(
            located.host_url,
            exchange.method.lower(),
            located.path,
            args=dict(parse_qsl(exchange.url.query.decode("ascii", errors="replace"))),
            headers=headers,
            data=exchange.body if body and exchange.body else None,
            content_type=exchange.content_type or "application/json",
        )

    # -- validation -----------------------------------------------------------------------------

    def validate(self, exchange: TappedExchange, base_url: str) -> list[Violation]:
        located = self._locate(exchange, base_url)
        method, shown = exchange.method, located.path
        if located.operation is None:
            where = "path" if located.template is None else "method"
            return [
                Violation("request", method, shown, where, f"{method} {shown} is not in the spec")
            ]
        violations = list(self._request_violations(exchange, located))
        if exchange.status_code is not None:
            violations += self._response_violations(exchange, located)
        return violations

    def _request_violations(
        self, exchange: TappedExchange, located: _Located
    ) -> Iterator[Violation]:
        form = exchange.content_type == _FORM
        request = self._request(exchange, located, body=not form)
        for error in self.api.iter_request_errors(request):
            if form and type(error).__name__ in _BODY_ERRORS:
                continue
            yield from self._violations("request", exchange, located, error)
        if form:
            yield from self._form_violations(exchange, located)

    def _form_violations(self, exchange: TappedExchange, located: _Located) -> Iterator[Violation]:
        assert located.operation is not None
        content = (located.operation.get("requestBody") or {}).get("content") or {}
        media = content.get(_FORM)
        if media is None:
            yield Violation(
                "request", exchange.method, located.path, "$", "form bodies are not documented"
            )
            return
        schema = media.get("schema") or {}
        value = cast_to_schema(decode_form(exchange.body), schema, self.document)
        root = {"allOf": [schema], "components": self.document.get("components", {})}
        validator = self._validator_class(root)
        for error in sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path)):
            yield Violation(
                "request",
                exchange.method,
                located.path,
                _json_path(error.absolute_path),
                _schema_message(error),
            )

    def _response_violations(self, exchange: TappedExchange, located: _Located) -> list[Violation]:
        assert exchange.status_code is not None
        request = self._request(exchange, located, body=exchange.content_type != _FORM)
        response = MockResponse(
            exchange.response_body or b"",
            status_code=exchange.status_code,
            headers=dict(exchange.response_headers),
            content_type=exchange.response_content_type or "application/json",
        )
        found: list[Violation] = []
        for error in self.api.iter_response_errors(request, response):
            found.extend(self._violations("response", exchange, located, error))
        return found

    @staticmethod
    def _violations(
        direction: str, exchange: TappedExchange, located: _Located, error: BaseException
    ) -> Iterator[Violation]:
        schema_errors = _schema_errors(error)
        if schema_errors:
            for schema_error in schema_errors:
                yield Violation(
                    direction,
                    exchange.method,
                    located.path,
                    _json_path(schema_error.absolute_path),
                    _schema_message(schema_error),
                )
            return
        name = getattr(error, "name", None)
        where = f"parameter:{name}" if isinstance(name, str) else "$"
        yield Violation(direction, exchange.method, located.path, where, _safe_text(error))
