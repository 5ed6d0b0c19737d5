"""Baseline expectations as data, JSON merge patches over them, and checking them.

A scenario's expectation is a JSON object with one block per step; each leaf is one assertion::

    {"authorize": {"status": "authorized", "outcome": "succeeded",
                   "amount_authorized": "@request.amount", "provider_reference": "@present",
                   "decline": "@absent", "provider_requests": 1}}

A sandbox profile patches it with an RFC 7386 merge patch (``merge_patch``): a value replaces
the baseline leaf, ``null`` removes the assertion (the profile must give a reason, shown in the
report). Leaves are matched against the *facts* a step observed (``check_block``):

- a scalar: equal (enums compare by value);
- a non-empty list: any of (an empty list: equal to ``[]``);
- ``"@present"`` / ``"@absent"``: the fact is (not) there (``None`` and missing are absent);
- ``"@request.<path>"``: equal to that part of the step's request;
- ``"@step.<step>.<path>"``: equal to a fact of an earlier step;
- an operator object ``{"@lte": 1.5}`` / ``{"@gte": 0.2}``: numeric bounds.

Fact paths are dotted (``decline.code``); facts are the result's JSON dump plus what the harness
measured (``provider_requests``, ``raised``, ``elapsed_ms``, ...).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Mapping
from typing import Any

from conformance.results import AssertionOutcome

__all__ = [
    "MISSING",
    "ExpectationError",
    "check_block",
    "flatten",
    "lookup",
    "merge_patch",
    "null_paths",
]

JSON = Any


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


MISSING: Any = _Missing()

_OPERATORS = frozenset({"@lte", "@gte", "@lt", "@gt"})


class ExpectationError(ValueError):
    """An expectation that cannot be evaluated (a bad marker): a bug in a scenario or profile."""


def merge_patch(target: JSON, patch: JSON) -> JSON:
    """RFC 7386 JSON merge patch; returns a new value, ``target`` is not modified."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result: dict[str, Any] = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def null_paths(patch: JSON, prefix: str = "") -> list[str]:
    """Dotted paths a merge patch removes (its ``null`` values)."""
    if not isinstance(patch, dict):
        return []
    found: list[str] = []
    for key, value in patch.items():
        path = f"{prefix}.{key}" if prefix else key
        if value is None:
            found.append(path)
        else:
            found.extend(null_paths(value, path))
    return found


def _is_operator(value: object) -> bool:
    return isinstance(value, dict) and bool(value) and set(value) <= _OPERATORS


def flatten(block: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(dotted path, expected)`` for every leaf of an expectation block, in order."""
    for key, value in block.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict) and not _is_operator(value):
            yield from flatten(value, path)
        else:
            yield path, value


def lookup(data: object, path: str) -> Any:
    """The value at a dotted ``path`` of nested mappings, or ``MISSING``."""
    current: Any = data
    for part in path.split("."):
        if isinstance(current, Mapping) and part in current:
            current = current[part]
        else:
            return MISSING
    return current


def _normalize(value: Any) -> Any:
    """Enums by value, tuples as lists: compare what JSON would show."""
    if isinstance(value, str):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_normalize(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _normalize(v) for k, v in value.items()}
    return value


def show(value: Any) -> str:
    if value is MISSING:
        return "<missing>"
    try:
        return json.dumps(_normalize(value), sort_keys=True, default=str)
    except (TypeError, ValueError):
        return repr(value)


class _Resolver:
    def __init__(self, request: Mapping[str, Any], steps: Mapping[str, Mapping[str, Any]]):
        self.request = request
        self.steps = steps

    def reference(self, marker: str) -> Any:
        if marker.startswith("@request."):
            return lookup(self.request, marker.removeprefix("@request."))
        if marker.startswith("@step."):
            step, _, path = marker.removeprefix("@step.").partition(".")
            if step not in self.steps:
                raise ExpectationError(f"{marker}: no earlier step {step!r}")
            return lookup(self.steps[step], path)
        raise ExpectationError(f"unknown expectation marker {marker!r}")

    def matches(self, expected: Any, actual: Any) -> bool:
        if isinstance(expected, list) and expected:
            return any(self.matches(option, actual) for option in expected)
        if _is_operator(expected):
            return self._compare(expected, actual)
        if isinstance(expected, str) and expected.startswith("@"):
            if expected == "@present":
                return actual is not MISSING and actual is not None
            if expected == "@absent":
                return actual is MISSING or actual is None
            reference = self.reference(expected)
            return reference is not MISSING and _normalize(reference) == _normalize(actual)
        if actual is MISSING:
            return False
        return bool(_normalize(expected) == _normalize(actual))

    @staticmethod
    def _compare(bounds: Mapping[str, Any], actual: Any) -> bool:
        if isinstance(actual, bool) or not isinstance(actual, (int, float)):
            return False
        checks = {
            "@lte": lambda bound: actual <= bound,
            "@gte": lambda bound: actual >= bound,
            "@lt": lambda bound: actual < bound,
            "@gt": lambda bound: actual > bound,
        }
        return all(checks[op](bound) for op, bound in bounds.items())

    def describe(self, expected: Any) -> str:
        if isinstance(expected, list) and expected:
            return " or ".join(self.describe(option) for option in expected)
        if isinstance(expected, str) and expected.startswith(("@request.", "@step.")):
            try:
                return f"{show(self.reference(expected))} ({expected})"
            except ExpectationError:
                return expected
        if isinstance(expected, str) and expected.startswith("@"):
            return expected.removeprefix("@")
        return show(expected)


def check_block(
    step: str,
    block: Mapping[str, Any],
    facts: Mapping[str, Any],
    *,
    request: Mapping[str, Any] | None = None,
    steps: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[AssertionOutcome]:
    """Check every leaf of ``block`` against ``facts``; one outcome per leaf, in order."""
    resolver = _Resolver(request or {}, steps or {})
    outcomes: list[AssertionOutcome] = []
    for path, expected in flatten(block):
        actual = lookup(facts, path)
        outcomes.append(
            AssertionOutcome(
                step=step,
                path=path,
                expected=resolver.describe(expected),
                actual=show(actual),
                passed=resolver.matches(expected, actual),
            )
        )
    return outcomes
