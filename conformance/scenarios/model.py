"""Scenarios: templates with baseline expectations, selected by what a manifest declares.

A scenario is an async function over a ``ScenarioContext`` plus data: an id, the profile it
belongs to, a ``Requirement`` (what the manifest must declare for it to apply), the capabilities
it covers when it passes, the abstract inputs it needs from the sandbox profile, and its baseline
expectation (``conformance.expectations``). Modules of this package register them with the
``scenario`` decorator::

    @scenario(
        "card.void",
        CARD,
        "Authorize, then void",
        requires=Requirement(operations={Operation.AUTHORIZE, Operation.VOID}),
        covers=("operation:void",),
        expect={"void": {"status": "voided", "outcome": "succeeded"}},
    )
    async def void(ctx: ScenarioContext) -> None:
        authorized = await ctx.call("authorize", Operation.AUTHORIZE, ctx.authorize_request())
        await ctx.call("void", Operation.VOID, ctx.void_request(authorized))

A scenario with ``params`` is a template expanded per manifest (one instance per declared
currency, per decline code, ...); ``{param}`` in its covers and inputs is replaced. Its
``profile_params`` add the instances a sandbox profile opts into by giving their inputs (a
decline code beyond the baseline four, for which the profile names a magic card).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sdk import Category, Manifest, Operation

if TYPE_CHECKING:
    from conformance.harness import ScenarioContext

__all__ = [
    "CATALOGUE",
    "Requirement",
    "Scenario",
    "ScenarioInstance",
    "expand",
    "scenario",
]

ScenarioFn = Callable[["ScenarioContext"], Awaitable[None]]
ParamsFn = Callable[[Manifest], Iterable[str]]
#: Given the names of the inputs the sandbox profile gives, the further params to run.
ProfileParamsFn = Callable[[Collection[str]], Iterable[str]]


@dataclass(frozen=True)
class Requirement:
    """What a manifest must declare for a scenario to apply; ``unmet`` says what is missing."""

    operations: frozenset[Operation] = frozenset()
    methods: frozenset[str] = frozenset()
    capture_partial: bool = False
    capture_multiple: bool = False
    refund_partial: bool = False
    refund_multiple: bool = False
    idempotency: bool = False
    #: Needs the fault proxy: simulator mode with ``--faults``.
    faults: bool = False
    #: Needs a provider the kit controls (simulator, or replay of a recording of one).
    simulator: bool = False

    def unmet(self, manifest: Manifest) -> str | None:
        missing = [f"operation {op.value}" for op in sorted(self.operations - manifest.operations)]
        declared_methods = {m.value for m in manifest.payment_methods}
        missing += [f"payment method {m}" for m in sorted(self.methods - declared_methods)]
        flags = (
            (self.capture_partial, manifest.capture.partial, "partial capture"),
            (self.capture_multiple, manifest.capture.multiple, "multiple captures"),
            (self.refund_partial, manifest.refund.partial, "partial refunds"),
            (self.refund_multiple, manifest.refund.multiple, "multiple refunds"),
            (self.idempotency, manifest.idempotency is not None, "idempotency support"),
        )
        missing += [label for wanted, declared, label in flags if wanted and not declared]
        if missing:
            return "not applicable: the manifest does not declare " + ", ".join(missing)
        return None


@dataclass(frozen=True)
class Scenario:
    id: str
    profile: Category
    title: str
    run: ScenarioFn
    requires: Requirement = field(default_factory=Requirement)
    covers: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ()
    expect: Mapping[str, Any] = field(default_factory=dict)
    params: ParamsFn | None = None
    profile_params: ProfileParamsFn | None = None
    #: A one-line description of the baseline expectation, for reports and docs.
    baseline: str = ""


@dataclass(frozen=True)
class ScenarioInstance:
    """One runnable scenario: a scenario, and its parameter when it is a template."""

    scenario: Scenario
    param: str | None = None

    @property
    def id(self) -> str:
        return self.scenario.id if self.param is None else f"{self.scenario.id}[{self.param}]"

    @property
    def title(self) -> str:
        return (
            self.scenario.title if self.param is None else f"{self.scenario.title} ({self.param})"
        )

    def _fill(self, text: str) -> str:
        return text.replace("{param}", self.param or "")

    @property
    def covers(self) -> tuple[str, ...]:
        return tuple(self._fill(cap) for cap in self.scenario.covers)

    @property
    def inputs(self) -> tuple[str, ...]:
        return tuple(self._fill(name) for name in self.scenario.inputs)


#: Every registered scenario, by profile, in registration order.
CATALOGUE: dict[Category, list[Scenario]] = {category: [] for category in Category}


def scenario(
    scenario_id: str,
    profile: Category | Iterable[Category],
    title: str,
    *,
    requires: Requirement | None = None,
    covers: Iterable[str] = (),
    inputs: Iterable[str] = (),
    expect: Mapping[str, Any] | None = None,
    params: ParamsFn | None = None,
    profile_params: ProfileParamsFn | None = None,
    baseline: str = "",
) -> Callable[[ScenarioFn], ScenarioFn]:
    """Register the decorated function as a scenario (in one or several profiles)."""
    profiles = [profile] if isinstance(profile, Category) else list(profile)
    if profile_params is not None and params is None:
        raise ValueError(f"scenario {scenario_id!r}: profile_params extend params; give both")

    def register(fn: ScenarioFn) -> ScenarioFn:
        for category in profiles:
            if any(existing.id == scenario_id for existing in CATALOGUE[category]):
                raise ValueError(f"scenario {scenario_id!r} is registered twice in {category}")
            CATALOGUE[category].append(
                Scenario(
                    id=scenario_id,
                    profile=category,
                    title=title,
                    run=fn,
                    requires=requires or Requirement(),
                    covers=tuple(covers),
                    inputs=tuple(inputs),
                    expect=dict(expect or {}),
                    params=params,
                    profile_params=profile_params,
                    baseline=baseline or (fn.__doc__ or "").strip().split("\n")[0],
                )
            )
        return fn

    return register


def expand(
    scenarios: Iterable[Scenario], manifest: Manifest, provided: Collection[str] = ()
) -> list[ScenarioInstance]:
    """Every instance of ``scenarios`` for ``manifest`` (templates expanded), with those the
    sandbox profile opts into by giving the inputs named in ``provided``."""
    instances: list[ScenarioInstance] = []
    for item in scenarios:
        if item.params is None:
            instances.append(ScenarioInstance(item))
            continue
        params = list(item.params(manifest))
        if item.profile_params is not None:
            params += [p for p in item.profile_params(provided) if p not in params]
        instances.extend(ScenarioInstance(item, param) for param in params)
    return instances
