"""Sandbox profiles: per connector and environment, the provider's magic values and the patches
over baseline expectations.

A sandbox profile is a JSON or TOML file. The kit ships one per built-in connector and
environment in ``conformance/sandboxes/<connector>/<environment>.{json,toml}`` (environment:
``simulator``, ``replay`` -- falling back to ``simulator`` --, ``live``). A connector package
ships its own the same way, as package data found through an entry point of the
``tessera.sandboxes`` group named after the connector, whose value is the package (directory)
holding the files::

    [project.entry-points."tessera.sandboxes"]
    acme = "acme_connector.sandboxes"     # acme_connector/sandboxes/simulator.json

``--overrides FILE`` layers more on top (kit's, then the package's, then the overrides; later
files winning)::

    {
      "connector": "sandbox",
      "environment": "simulator",
      "inputs": {
        "card.declined.insufficient_funds": {"number": "4000000000009995"},
        "card.requires_3ds": {"amount": 3001}
      },
      "credentials": {"api_key": "sk_sim_conformance"},
      "simulator": {"settle_delay": 0.2},
      "scenarios": {
        "card.refund.over_captured": {
          "patch": {"refund": {"decline": {"code": "invalid_amount"}}}
        },
        "card.authorize.approved": {
          "patch": {"authorize": {"amount_authorized": null}},
          "reasons": {"authorize.amount_authorized": "the provider does not echo amounts"}
        },
        "card.verify": {"skip": "verification is not enabled on our sandbox account"}
      },
      "polling": {"within": 30}
    }

``simulator`` holds keyword options for the simulator factory (those it accepts).
``inputs`` map the abstract inputs scenarios ask for to magic values; an input no scenario asks
for, or a key its input does not take, stops the profile from loading, naming the key and what
is allowed (``conformance.inputs.INPUT_KEYS``). ``scenarios`` patch a
scenario's expectation with an RFC 7386 merge patch (keyed by scenario id, or by an instance id
such as ``card.currency.roundtrip[JPY]``). Removing an assertion (``null``) needs a reason under
``reasons`` (dotted ``step.path``), or the profile does not load; TOML, which has no ``null``,
removes with ``remove = {"authorize.amount_authorized" = "reason"}``. A removal must name an
assertion the scenario has (its baseline's, or one an earlier file's patch added), or a step or
group of them (``authorize``, ``refund.decline``): a typo would otherwise remove nothing, and
the profile does not load, naming the path, the closest assertion and all of them. Every removal
and its reason is listed in the reports.

A file loads only for its own ``connector`` and ``environment`` (a replay run also takes
``simulator`` files), and a ``live`` file may not hold ``credentials``: live secrets come from the
environment or Vault, never from a file.
"""

from __future__ import annotations

import difflib
import importlib.resources
import json
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from conformance.expectations import flatten, merge_patch, null_paths
from conformance.inputs import input_problems
from conformance.polling import PollPolicy
from conformance.results import RemovedAssertion

__all__ = [
    "BUILTIN_DIR",
    "PROFILE_GROUP",
    "SandboxProfile",
    "SandboxProfileError",
    "ScenarioPatch",
    "builtin_profile_paths",
    "load_sandbox_profile",
]

BUILTIN_DIR = Path(__file__).with_name("sandboxes")
#: Entry-point group through which a connector package ships its sandbox profiles.
PROFILE_GROUP = "tessera.sandboxes"
_SUFFIXES = (".json", ".toml")
_FALLBACK = {"replay": ("replay", "simulator")}


class SandboxProfileError(ValueError):
    """A sandbox profile file is malformed; the message names the file and the problem."""


_CONFIG = ConfigDict(extra="forbid", frozen=True)


class _ScenarioOverride(BaseModel):
    model_config = _CONFIG

    skip: Annotated[str | None, Field(min_length=3, max_length=500)] = None
    patch: dict[str, Any] = Field(default_factory=dict)
    reasons: dict[str, Annotated[str, Field(min_length=3, max_length=500)]] = Field(
        default_factory=dict
    )
    remove: dict[str, Annotated[str, Field(min_length=3, max_length=500)]] = Field(
        default_factory=dict
    )


class _Polling(BaseModel):
    model_config = _CONFIG

    within: Annotated[float, Field(gt=0, le=3600)] = 10.0
    initial: Annotated[float, Field(gt=0, le=60)] = 0.02
    maximum: Annotated[float, Field(gt=0, le=300)] = 1.0


class _Preflight(BaseModel):
    model_config = _CONFIG

    method: str = "GET"
    path: str = "/"
    timeout: Annotated[float, Field(gt=0, le=60)] = 5.0


class _File(BaseModel):
    model_config = _CONFIG

    connector: str
    environment: Literal["simulator", "replay", "live"]
    description: str = ""
    inputs: dict[str, dict[str, Any]] = Field(default_factory=dict)
    credentials: dict[str, str] = Field(default_factory=dict)
    scenarios: dict[str, _ScenarioOverride] = Field(default_factory=dict)
    simulator: dict[str, Any] = Field(default_factory=dict)
    polling: _Polling | None = None
    preflight: _Preflight | None = None
    deadline_seconds: Annotated[float | None, Field(gt=0, le=600)] = None


@dataclass(frozen=True, slots=True)
class ScenarioPatch:
    """What the profile files say about one scenario id: merged patch, skip, removals."""

    patch: dict[str, Any] = field(default_factory=dict)
    skip: str | None = None
    removed: tuple[RemovedAssertion, ...] = ()


@dataclass
class SandboxProfile:
    """The merged sandbox profile of a run (possibly empty: no files)."""

    connector: str
    environment: str
    files: list[str] = field(default_factory=list)
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    credentials: dict[str, str] = field(default_factory=dict)
    scenarios: dict[str, ScenarioPatch] = field(default_factory=dict)
    simulator: dict[str, Any] = field(default_factory=dict)
    polling: PollPolicy = field(default_factory=PollPolicy)
    preflight_method: str = "GET"
    preflight_path: str = "/"
    preflight_timeout: float = 5.0
    deadline_seconds: float = 10.0

    def input(self, name: str) -> dict[str, Any] | None:
        value = self.inputs.get(name)
        return dict(value) if value is not None else None

    def patched(
        self, scenario_id: str, instance_id: str, baseline: Mapping[str, Any]
    ) -> tuple[dict[str, Any], str | None, list[RemovedAssertion]]:
        """The expectation of one scenario instance after the profile's patches, its skip
        reason (if any) and the assertions the patches removed."""
        expectation: dict[str, Any] = merge_patch({}, dict(baseline))
        skip: str | None = None
        removed: list[RemovedAssertion] = []
        keys = [scenario_id] if scenario_id == instance_id else [scenario_id, instance_id]
        for key in keys:
            entry = self.scenarios.get(key)
            if entry is None:
                continue
            expectation = merge_patch(expectation, entry.patch)
            skip = entry.skip or skip
            removed.extend(entry.removed)
        return expectation, skip, removed


def _read(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SandboxProfileError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise SandboxProfileError(f"{path}: not valid {path.suffix[1:].upper()}: {exc}") from None
    if not isinstance(data, dict):
        raise SandboxProfileError(f"{path}: the top level must be an object")
    return data


def _parse(path: Path, known_scenarios: frozenset[str] | None) -> _File:
    try:
        parsed = _File.model_validate(_read(path))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}" for error in exc.errors()
        )
        raise SandboxProfileError(f"{path}: {problems}") from None
    unknown_inputs = input_problems(parsed.inputs)
    if unknown_inputs:
        raise SandboxProfileError(f"{path}: {'; '.join(unknown_inputs)}")
    for scenario_id, override in parsed.scenarios.items():
        base_id = scenario_id.split("[", 1)[0]
        if known_scenarios is not None and base_id not in known_scenarios:
            raise SandboxProfileError(f"{path}: no scenario {scenario_id!r} in the catalogue")
        removed = null_paths(override.patch)
        missing = [p for p in removed if p not in override.reasons]
        if missing:
            raise SandboxProfileError(
                f"{path}: scenario {scenario_id!r} removes {', '.join(missing)} without a "
                'reason (add it under "reasons")'
            )
        extra = [p for p in override.reasons if p not in removed]
        if extra:
            raise SandboxProfileError(
                f"{path}: scenario {scenario_id!r} gives reasons for {', '.join(extra)}, "
                "which its patch does not remove"
            )
    return parsed


def _added_assertions(patch: Mapping[str, Any]) -> set[str]:
    """The assertion paths a merge patch sets (its non-``null`` leaves)."""
    return {path for path, value in flatten(patch) if value is not None}


def _check_removals(
    path: Path,
    scenario_id: str,
    removals: Sequence[str],
    assertions: set[str],
) -> None:
    """Refuse a removal that names no assertion of the scenario (``assertions``): it would
    remove nothing, silently, while the report lists it as removed. A path names an assertion,
    or a step or group holding some (removing ``authorize`` removes all of that step's)."""
    for removed in removals:
        if any(a == removed or a.startswith(f"{removed}.") for a in assertions):
            continue
        close = difflib.get_close_matches(removed, sorted(assertions), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise SandboxProfileError(
            f"{path}: scenario {scenario_id!r} removes {removed!r}, which is not one of its "
            f"assertions{hint}; its assertions are: {', '.join(sorted(assertions))}"
        )


def _removal_patch(paths: Mapping[str, str]) -> dict[str, Any]:
    patch: dict[str, Any] = {}
    for dotted in paths:
        parts = dotted.split(".")
        node = patch
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = None
    return patch


def _combine(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """Two merge patches as one (the second wins), keeping their ``null`` removals."""
    combined = dict(first)
    for key, value in second.items():
        previous = combined.get(key)
        if isinstance(value, dict) and isinstance(previous, dict):
            combined[key] = _combine(previous, value)
        else:
            combined[key] = value
    return combined


def _profile_in(directory: Traversable, environment: str) -> list[Path]:
    for env in _FALLBACK.get(environment, (environment,)):
        for suffix in _SUFFIXES:
            candidate = directory.joinpath(f"{env}{suffix}")
            if candidate.is_file():
                if not isinstance(candidate, Path):  # e.g. inside a zip: not supported
                    raise SandboxProfileError(f"{candidate}: a sandbox profile must be a file")
                return [candidate]
    return []


def _packaged_dirs(connector: str) -> list[Traversable]:
    """The directories the connector's packages declare under ``tessera.sandboxes``."""
    found: list[Traversable] = []
    for entry_point in entry_points(group=PROFILE_GROUP, name=connector):
        where = f"entry point {entry_point.name} = {entry_point.value!r} ({PROFILE_GROUP})"
        try:
            directory = importlib.resources.files(entry_point.value)
        except (ImportError, TypeError, ValueError) as exc:
            raise SandboxProfileError(
                f"{where}: not an importable package ({type(exc).__name__})"
            ) from None
        if not directory.is_dir():
            raise SandboxProfileError(f"{where}: not a directory")
        found.append(directory)
    return found


def builtin_profile_paths(connector: str, environment: str) -> list[Path]:
    """The profile files that come with ``connector`` for ``environment`` (with fallbacks): the
    kit's own, then those its package ships (``tessera.sandboxes`` entry points)."""
    paths = _profile_in(BUILTIN_DIR / connector, environment)
    for directory in _packaged_dirs(connector):
        paths += _profile_in(directory, environment)
    return paths


def load_sandbox_profile(
    connector: str,
    environment: str,
    overrides: Sequence[Path] = (),
    *,
    known_scenarios: frozenset[str] | None = None,
    known_assertions: Mapping[str, frozenset[str]] | None = None,
    builtin: bool = True,
    option_prefix: str = "--",
) -> SandboxProfile:
    """Merge the built-in profile (if any) and ``overrides`` for a run. See the module
    docstring; raises ``SandboxProfileError`` naming the file for any problem.

    ``known_assertions`` maps scenario ids to their baseline's assertion paths
    (``authorize.status``); with it, a removal naming none of a scenario's is refused.
    ``option_prefix`` spells the options errors name (``--vault-path``, ``--tessera-vault-path``).
    """
    profile = SandboxProfile(connector=connector, environment=environment)
    paths = [*(builtin_profile_paths(connector, environment) if builtin else []), *overrides]
    for path in paths:
        parsed = _parse(path, known_scenarios)
        if parsed.connector != connector:
            raise SandboxProfileError(
                f"{path}: written for connector {parsed.connector!r}, not {connector!r}"
            )
        accepted = _FALLBACK.get(environment, (environment,))
        if parsed.environment not in accepted:
            raise SandboxProfileError(
                f"{path}: written for the {parsed.environment!r} environment, not "
                f"{environment!r} (this run's mode); use a file per environment"
            )
        if parsed.credentials and environment == "live":
            raise SandboxProfileError(
                f"{path}: a live profile must not hold credentials (never put live secrets in a "
                f"file): set TESSERA_<CONNECTOR>_<FIELD> or use {option_prefix}vault-path"
            )
        profile.files.append(str(path))
        for name, values in parsed.inputs.items():
            profile.inputs[name] = {**profile.inputs.get(name, {}), **values}
        profile.credentials.update(parsed.credentials)
        profile.simulator.update(parsed.simulator)
        for scenario_id, override in parsed.scenarios.items():
            removals = {**override.reasons, **override.remove}
            patch = _combine(override.patch, _removal_patch(override.remove))
            previous = profile.scenarios.get(scenario_id, ScenarioPatch())
            base_id = scenario_id.split("[", 1)[0]
            baseline = known_assertions.get(base_id) if known_assertions is not None else None
            if baseline is not None and removals:
                # What an earlier file's patch added (to the scenario or this instance) may be
                # removed again too.
                earlier = profile.scenarios.get(base_id, ScenarioPatch()).patch
                assertions = {*baseline, *_added_assertions(earlier)}
                if base_id != scenario_id:
                    assertions |= _added_assertions(previous.patch)
                _check_removals(path, scenario_id, list(removals), assertions)
            profile.scenarios[scenario_id] = ScenarioPatch(
                patch=_combine(previous.patch, patch),
                skip=override.skip or previous.skip,
                removed=previous.removed
                + tuple(
                    RemovedAssertion(path=p, reason=r, source=path.name)
                    for p, r in removals.items()
                ),
            )
        if parsed.polling is not None:
            profile.polling = PollPolicy(
                within=parsed.polling.within,
                initial=parsed.polling.initial,
                maximum=parsed.polling.maximum,
            )
        if parsed.preflight is not None:
            profile.preflight_method = parsed.preflight.method
            profile.preflight_path = parsed.preflight.path
            profile.preflight_timeout = parsed.preflight.timeout
        if parsed.deadline_seconds is not None:
            profile.deadline_seconds = parsed.deadline_seconds
    return profile
