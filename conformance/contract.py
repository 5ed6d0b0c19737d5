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

Official specs have authoring defects, and the kit must still judge traffic against them. So a
spec is loaded in three steps rather than by openapi-core's all-or-nothing spec validation:

1. the known, harmless defects are repaired in memory and kept as ``SpecDefect`` warnings, one
   line each with its JSON pointer: an ``enum`` listing a value twice (UK Open Banking's
   ``OBFrequency6Code``: the repeat is dropped), an operation listing a parameter twice (Berlin
   Group's ``Consent-ID`` on ``POST /v1/funds-confirmations``: the first is kept), an
   ``operationId`` used twice (the repeat is dropped; validation never uses it);
2. the repaired description is validated strictly (openapi-spec-validator); anything else wrong
   in it is a ``SpecLoadError`` of one line naming the file and the JSON pointer, as are a file
   that does not parse, that is not OpenAPI 3.0/3.1, or whose ``$ref`` cannot be resolved from
   local files (a URL is never fetched: use a copy whose references point to local files);
3. openapi-core is built on the repaired description, without validating it again.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from jsonschema.exceptions import ValidationError as SchemaError  # type: ignore[import-untyped]
from jsonschema_path import SchemaPath
from jsonschema_path.handlers.urllib import UrllibHandler
from openapi_core import Config, OpenAPI
from openapi_core.testing import MockRequest, MockResponse
from openapi_schema_validator import OAS30Validator, OAS31Validator
from openapi_spec_validator.settings import OpenAPISpecValidatorSettings
from openapi_spec_validator.shortcuts import get_validator_cls

from conformance.formbody import cast_to_schema, decode_form
from conformance.results import Violation
from conformance.traffic import TappedExchange

__all__ = ["ContractValidator", "SpecDefect", "SpecLoadError"]

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
    """The OpenAPI file cannot be read or is not a valid description (one line: the file, the
    JSON pointer where known, what is wrong)."""


@dataclass(frozen=True, slots=True)
class SpecDefect:
    """A known authoring defect of a spec, repaired in memory: validation goes on without it."""

    file: str
    pointer: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.pointer}: {self.message}"


# -- loading a spec -------------------------------------------------------------------------------

#: How ``$ref`` targets are read: local files only. A spec naming a URL (Moov's raw one names
#: GitHub's master branch) would make a run depend on the network and on whatever is there now.
_LOCAL_FILES_ONLY = {"file": UrllibHandler("file")}
_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
_MESSAGE_LIMIT = 160


def _escape(part: object) -> str:
    return str(part).replace("~", "~0").replace("/", "~1")


def _pointer(parts: Iterable[object]) -> str:
    return "".join(f"/{_escape(part)}" for part in parts) or "/"


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MESSAGE_LIMIT else text[: _MESSAGE_LIMIT - 3] + "..."


def _nodes(node: Any, parts: tuple[object, ...] = ()) -> Iterator[tuple[tuple[object, ...], Any]]:
    """Every dict and list of the description, with its path, parents first."""
    if isinstance(node, dict):
        yield parts, node
        for key, value in node.items():
            yield from _nodes(value, (*parts, key))
    elif isinstance(node, list):
        yield parts, node
        for index, value in enumerate(node):
            yield from _nodes(value, (*parts, index))


def _resolve_local(document: Mapping[str, Any], node: Any) -> Any:
    seen = 0
    while isinstance(node, dict) and str(node.get("$ref", "")).startswith("#/") and seen < 20:
        target: Any = document
        for part in str(node["$ref"])[2:].split("/"):
            key = part.replace("~1", "/").replace("~0", "~")
            target = target.get(key) if isinstance(target, dict) else None
        node, seen = target, seen + 1
    return node


def _repeated_enum_values(document: dict[str, Any], file: str) -> Iterator[SpecDefect]:
    for parts, node in _nodes(document):
        values = node.get("enum") if isinstance(node, dict) else None
        if not isinstance(values, list):
            continue
        kept: dict[str, Any] = {}
        repeated: list[Any] = []
        for value in values:
            key = json.dumps(value, sort_keys=True)
            if key in kept:
                repeated.append(value)
            else:
                kept[key] = value
        if repeated:
            node["enum"] = list(kept.values())
            shown = ", ".join(json.dumps(v) for v in repeated)
            yield SpecDefect(
                file, _pointer((*parts, "enum")), _short(f"enum repeats {shown}; repeat ignored")
            )


def _repeated_parameters(document: dict[str, Any], file: str) -> Iterator[SpecDefect]:
    for template, item in (document.get("paths") or {}).items():
        if not isinstance(item, dict):
            continue
        owners = [((), item)] + [((m,), item[m]) for m in _METHODS if isinstance(item.get(m), dict)]
        for where, owner in owners:
            parameters = owner.get("parameters")
            if not isinstance(parameters, list):
                continue
            first: dict[tuple[str, str], int] = {}
            kept = []
            for index, parameter in enumerate(parameters):
                resolved = _resolve_local(document, parameter)
                key = (
                    (str(resolved.get("name")), str(resolved.get("in")))
                    if isinstance(resolved, dict)
                    else (f"#{index}", "")
                )
                if key not in first:
                    first[key] = index
                    kept.append(parameter)
                    continue
                pointer = _pointer(("paths", template, *where, "parameters", index))
                yield SpecDefect(
                    file,
                    pointer,
                    f"repeats parameter {key[0]!r} (in {key[1]}) of parameters/{first[key]}; "
                    "the first is used",
                )
            if len(kept) < len(parameters):
                owner["parameters"] = kept


def _repeated_operation_ids(document: dict[str, Any], file: str) -> Iterator[SpecDefect]:
    first: dict[str, str] = {}
    for template, item in (document.get("paths") or {}).items():
        if not isinstance(item, dict):
            continue
        for method in _METHODS:
            operation = item.get(method)
            if not isinstance(operation, dict) or "operationId" not in operation:
                continue
            pointer = _pointer(("paths", template, method, "operationId"))
            identifier = str(operation["operationId"])
            if identifier not in first:
                first[identifier] = pointer
                continue
            del operation["operationId"]  # validation never uses it
            yield SpecDefect(
                file, pointer, f"operationId {identifier!r} is also {first[identifier]}; ignored"
            )


#: The known authoring defects: each finds and repairs one kind, in place (module docstring).
_REPAIRS: tuple[Callable[[dict[str, Any], str], Iterator[SpecDefect]], ...] = (
    _repeated_enum_values,
    _repeated_parameters,
    _repeated_operation_ids,
)


def _read_document(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise SpecLoadError(f"{path}: cannot read the OpenAPI file ({reason})") from None
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml  # type: ignore[import-untyped]

            document = yaml.safe_load(text)
        else:
            document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SpecLoadError(
            f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from None
    except Exception as exc:  # noqa: BLE001 - yaml's errors: any is the same problem
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise SpecLoadError(f"{path}: not valid YAML{where}") from None
    version = document.get("openapi") if isinstance(document, dict) else None
    if not isinstance(document, dict) or not str(version).startswith(("3.0", "3.1")):
        found = f"openapi {version!r}" if version is not None else "no openapi field"
        raise SpecLoadError(f"{path}: /openapi: not an OpenAPI 3.0 or 3.1 description ({found})")
    return document


def _error_pointer(document: Any, error: SchemaError) -> str | None:
    """Where in ``document`` a spec validator's ``error`` is.

    Errors of the whole-document check carry the document as their instance and the full path;
    those of the per-part checks (a schema, a parameter) carry the failing value and a path
    relative to the part. So: the instance is found by identity when it is an object or array
    (then the path is followed from it when it leads somewhere, else the instance is the
    place); a scalar is found as the first node whose relative path leads to an equal value.
    """
    instance, relative = error.instance, list(error.path)
    if isinstance(instance, (dict, list)):
        found = next((p for p, node in _nodes(document) if node is instance), None)
        if found is not None:
            if relative and _follow(instance, relative) is not _NOWHERE:
                return _pointer((*found, *relative))
            return _pointer(found)
    if not relative:
        return None
    for parts, node in _nodes(document):
        target = _follow(node, relative)
        if target is not _NOWHERE and type(target) is type(instance) and target == instance:
            return _pointer((*parts, *relative))
    return None


_NOWHERE = object()
# A message that opens with the failing object or array ("{...} is not valid under any of
# the schemas listed in the 'oneOf' keyword"): what follows the value is the readable part.
_QUOTED_VALUE = re.compile(r"[\[{].*[\]}] ((?:is|has|does|should) .*)", re.DOTALL)


def _follow(node: Any, parts: Iterable[object]) -> Any:
    """The value at ``parts`` below ``node``, or ``_NOWHERE``."""
    for part in parts:
        in_object = isinstance(node, dict) and part in node
        in_array = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        if not (in_object or in_array):
            return _NOWHERE
        node = node[part]
    return node


def _error_message(error: SchemaError) -> str:
    """The first line of a spec validator's message, without the object it quotes."""
    summary = str(error.message).strip().split("\n", 1)[0]
    quoted = _QUOTED_VALUE.fullmatch(summary)
    return _short(quoted.group(1) if quoted else summary)


def _ref_problem(document: Any, ref: str) -> tuple[str, str]:
    """(JSON pointer of the ``$ref`` naming ``ref``, what is wrong with it)."""
    where = "/"
    for parts, node in _nodes(document):
        value = node.get("$ref") if isinstance(node, dict) else None
        if isinstance(value, str) and value in (ref, f"#{ref}"):
            where, ref = _pointer((*parts, "$ref")), value
            break
    if urlsplit(ref).scheme not in ("", "file"):
        return where, (
            f"remote $ref {ref!r} (the kit reads local files only: use a copy of the spec "
            "whose references point to local files)"
        )
    return where, f"$ref {ref!r} points to nothing"


def _check_spec(document: dict[str, Any], path: Path) -> None:
    """Strict validation of what the repairs left: the first problem, as one line."""
    # As openapi-core's own check does it: with a cache of resolved references (a third faster
    # on Stripe's spec).
    spec = SchemaPath.from_dict(
        document,
        base_uri=path.resolve().as_uri(),
        handlers=_LOCAL_FILES_ONLY,
        resolved_cache_maxsize=OpenAPISpecValidatorSettings().resolved_cache_maxsize,
    )
    try:
        error = next(iter(get_validator_cls(document)(spec).iter_errors()), None)
    except Exception as exc:  # noqa: BLE001 - an unresolvable $ref, a malformed object...
        ref = getattr(exc, "ref", None)
        if isinstance(ref, str):
            where, problem = _ref_problem(document, ref)
            raise SpecLoadError(f"{path}: {where}: {problem}") from None
        raise SpecLoadError(
            f"{path}: cannot load the OpenAPI description ({type(exc).__name__}: "
            f"{_short(str(exc))})"
        ) from None
    if error is not None:
        where = _error_pointer(document, error) or "(no location given)"
        raise SpecLoadError(f"{path}: {where}: {_error_message(error)}")


# -- validating traffic ---------------------------------------------------------------------------


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
        self.document: dict[str, Any] = _read_document(path)
        #: The known defects repaired in memory (module docstring): one warning line each.
        self.defects: tuple[SpecDefect, ...] = tuple(
            defect for repair in _REPAIRS for defect in repair(self.document, path.name)
        )
        _check_spec(self.document, path)
        # The file's URI resolves references to neighbouring files (moov-base-common.yaml).
        spec = SchemaPath.from_dict(
            self.document, base_uri=path.resolve().as_uri(), handlers=_LOCAL_FILES_ONLY
        )
        try:
            self.api = OpenAPI(spec, config=Config(spec_validator_cls=None))
        except Exception as exc:  # noqa: BLE001 - validated above: a surprise, said in one line
            raise SpecLoadError(
                f"{path}: cannot load the OpenAPI description ({type(exc).__name__})"
            ) from None
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
        """The violations of one exchange, request then response (none: it conforms).

        openapi-core warns where it cannot judge (an OAuth2 or OpenID Connect security scheme,
        UK Open Banking's and others'; a parameter style it does not know; a deprecated
        parameter): those are not violations, and under ``-W error`` (a generated project's
        pytest) the warning would crash the scenario, so they are silenced here.
        """
        located = self._locate(exchange, base_url)
        method, shown = exchange.method, located.path
        if located.operation is None:
            where = "path" if located.template is None else "method"
            return [
                Violation("request", method, shown, where, f"{method} {shown} is not in the spec")
            ]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
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
