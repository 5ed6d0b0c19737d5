"""The runner: plan a run from the manifest, run each scenario, judge coverage and leaks.

``ConformanceRun`` is used by the CLI (``run_all``) and by the pytest plugin (one ``run_one``
per test item, ``finish`` at the end)::

    run = ConformanceRun(RunConfig(connector="sandbox"))
    await run.start()               # simulator/proxy up, or live preflight
    for planned in run.plan:
        result = await run.run_one(planned)
    report = run.finish()           # coverage and leaks judged
    await run.close()

Planning: the profile's scenarios (the manifest's category, or ``--profile``) are expanded for
the manifest; each is runnable, or skipped with its reason (not declared, needs ``--faults``,
needs the simulator, skipped by the sandbox profile, no cassette). A scenario fails on a failed
expectation, a contract violation (``--openapi``), a leaked canary, or an unexpected exception;
its scrubbed exchanges are kept in the report then, and so is the traceback of any exception the
connector's verbs raised (which the runtime reports only as an outcome), redacted.
"""

from __future__ import annotations

import asyncio
import fnmatch
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from conformance.capabilities import compute_coverage, declared_capabilities
from conformance.environment import Mode, RunConfig, RunEnvironment, SetupError, record_command
from conformance.expectations import flatten
from conformance.harness import ExpectationFailed, ScenarioContext, ScenarioSkipped
from conformance.inputs import MissingInputError
from conformance.leaks import transcript_items
from conformance.polling import PollTimeoutError
from conformance.results import ExchangeView, RunReport, ScenarioResult, Verdict
from conformance.scenarios import (
    CATALOGUE,
    ScenarioInstance,
    all_scenario_ids,
    expand,
    profile_scenarios,
)
from sdk.testing.cassettes import CassetteMismatchError

__all__ = ["ConformanceRun", "Planned", "ProgressCallback"]

ProgressCallback = Callable[[ScenarioResult, int, int], None]
_MAX_EXCHANGES_SHOWN = 12
#: Tracebacks of connector exceptions kept for one failed scenario (the first ones: later ones
#: usually repeat the first, as in a retried or concurrent call).
_MAX_CRASHES_SHOWN = 3


def _baseline_assertions() -> dict[str, frozenset[str]]:
    """Every scenario id's baseline assertion paths (``authorize.status``), for refusing a
    sandbox profile that removes one the scenario does not have."""
    paths: dict[str, set[str]] = {}
    for scenarios in CATALOGUE.values():
        for item in scenarios:
            paths.setdefault(item.id, set()).update(path for path, _ in flatten(item.expect))
    return {scenario_id: frozenset(found) for scenario_id, found in paths.items()}


@dataclass(frozen=True)
class Planned:
    instance: ScenarioInstance
    skip: str | None = None


def _fill(value: Any, param: str) -> Any:
    if isinstance(value, str):
        return value.replace("{param}", param)
    if isinstance(value, dict):
        return {k: _fill(v, param) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, param) for v in value]
    return value


class ConformanceRun:
    """One conformance run; see the module docstring."""

    def __init__(self, config: RunConfig, *, progress: ProgressCallback | None = None) -> None:
        self.config = config
        self.env = RunEnvironment(
            config, known_scenarios=all_scenario_ids(), known_assertions=_baseline_assertions()
        )
        self.progress = progress
        manifest = self.env.manifest
        self.report = RunReport(
            connector=manifest.id,
            display_name=manifest.display_name,
            profile=self.env.profile.value,
            mode=self.env.mode.value,
            environment=self.env.mode.value,
            base_url="",
            started_at=datetime.now(UTC).isoformat(timespec="seconds"),
            sandbox_files=list(self.env.sandbox.files),
            openapi=str(config.openapi) if config.openapi else None,
            faults=config.faults,
        )
        self.plan = self._plan()
        self._started = time.perf_counter()

    # -- planning -------------------------------------------------------------------------------

    def _plan(self) -> list[Planned]:
        manifest, mode = self.env.manifest, self.env.mode
        instances = expand(
            profile_scenarios(self.env.profile), manifest, self.env.sandbox.inputs.keys()
        )
        if self.config.select:
            instances = [
                i
                for i in instances
                if any(
                    pattern in (i.id, i.scenario.id)
                    or fnmatch.fnmatchcase(i.id, pattern)
                    or fnmatch.fnmatchcase(i.scenario.id, pattern)
                    for pattern in self.config.select
                )
            ]
            if not instances:
                patterns = ", ".join(self.config.select)
                raise SetupError(
                    f"{self.config.option('select')} {patterns}: no scenario of the "
                    f"{self.env.profile.value} profile "
                    f"matches (scenario ids look like card.authorize.approved or "
                    f"card.currency.roundtrip[JPY])."
                )
        planned: list[Planned] = []
        for instance in instances:
            requires = instance.scenario.requires
            reason = requires.unmet(manifest)
            if reason is None and requires.faults and not self.config.faults:
                reason = f"fault scenarios run with {self.config.option('faults')}"
            if reason is None and requires.faults and mode is not Mode.SIMULATOR:
                reason = f"fault injection needs simulator mode (this run is {mode.value})"
            if reason is None and requires.simulator and mode is Mode.LIVE:
                reason = "needs the simulator, or a recording of it (not live mode)"
            planned.append(Planned(instance, reason))
        return planned

    # -- running --------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.env.start()
        self.report.base_url = self.env.base_url
        if self.env.contract is not None:
            self.report.openapi_defects = [str(d) for d in self.env.contract.defects]
        self.report.skip_reason = await self.env.preflight()

    async def close(self) -> None:
        await self.env.close()

    async def run_all(self) -> RunReport:
        try:
            await self.start()
            for index, planned in enumerate(self.plan):
                result = await self.run_one(planned)
                if self.progress is not None:
                    self.progress(result, index + 1, len(self.plan))
        finally:
            await self.close()
        return self.finish()

    def _skipped(self, instance: ScenarioInstance, reason: str) -> ScenarioResult:
        return ScenarioResult(
            scenario_id=instance.id,
            title=instance.title,
            profile=instance.scenario.profile.value,
            covers=instance.covers,
            verdict=Verdict.SKIPPED,
            reason=reason,
        )

    async def run_one(self, planned: Planned) -> ScenarioResult:
        """Run (or skip) one planned scenario and add its result to the report."""
        result = await self._run(planned)
        self.report.scenarios.append(result)
        return result

    async def _run(self, planned: Planned) -> ScenarioResult:
        instance, env = planned.instance, self.env
        if self.report.skip_reason is not None:
            return self._skipped(instance, self.report.skip_reason)
        if planned.skip is not None:
            return self._skipped(instance, planned.skip)
        scenario = instance.scenario
        expectation, skip, removed = env.sandbox.patched(scenario.id, instance.id, scenario.expect)
        if skip is not None:
            return self._skipped(instance, f"skipped by the sandbox profile: {skip}")
        recording = env.recording(instance.id)
        if env.mode is Mode.REPLAY and recording is None:
            return self._skipped(
                instance,
                f"no cassette recorded in {env.cassette_dir} (record it with: "
                f"{record_command(env.manifest.id, env.cassette_dir, instance.id)})",
            )
        ctx = ScenarioContext(env, instance, _fill(expectation, instance.param or ""), recording)
        result = self._skipped(instance, "")
        result.removed = list(removed)
        error_text: str | None = None
        env.logs.current = instance.id
        started = time.perf_counter()
        try:
            await scenario.run(ctx)
            result.verdict = Verdict.PASSED
        except ScenarioSkipped as exc:
            result.verdict, result.reason = Verdict.SKIPPED, str(exc)
        except MissingInputError as exc:
            result.verdict, result.reason = Verdict.SKIPPED, str(exc)
            result.missing_input = exc.name
        except (ExpectationFailed, PollTimeoutError) as exc:
            result.verdict, result.reason = Verdict.FAILED, str(exc)
        except CassetteMismatchError as exc:
            # Name the cassette this replay read, and the command that re-records it there.
            cassette = env.cassettes.path(instance.id) if env.cassettes else env.cassette_dir
            command = record_command(env.manifest.id, env.cassette_dir, instance.id)
            result.verdict, result.reason = (
                Verdict.FAILED,
                f"replay: {exc} (re-record the cassette {cassette} with: {command})",
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a scenario's crash is its failure, reported
            result.verdict = Verdict.FAILED
            result.reason = f"unexpected {type(exc).__name__}: {exc}"
            error_text = "".join(traceback.format_exception(exc))
        finally:
            await ctx.close()
            env.logs.current = "-"
        result.duration_s = round(time.perf_counter() - started, 3)
        result.assertions = ctx.assertions
        self._judge_contract(ctx, result)
        self._judge_leaks(ctx, result, error_text)
        if error_text is None and result.verdict is Verdict.FAILED and ctx.crashes:
            # The runtime made the connector's exception an outcome (``unknown`` after the
            # request went out) and dropped it; its traceback is what the author needs to see.
            # (Scanned for leaks already, with the context's texts.)
            error_text = "\n".join(
                f"the connector's {crash.operation} raised (the runtime reported the call's "
                f"outcome, not the exception):\n{crash.traceback}"
                for crash in ctx.crashes[:_MAX_CRASHES_SHOWN]
            )
        scanner = env.scanner
        result.reason = scanner.redact(result.reason)
        result.error = ctx.safe_text(error_text) if error_text else None
        if result.verdict is Verdict.FAILED:
            result.exchanges = [
                ExchangeView(
                    operation=e.operation,
                    method=e.method,
                    url=scanner.redact(e.url),
                    request_body=scanner.redact(e.request_body),
                    status_code=e.status_code,
                    response_body=scanner.redact(e.response_body),
                    error=e.error,
                    elapsed_ms=e.elapsed_ms,
                )
                for e in ctx.transcript.exchanges[-_MAX_EXCHANGES_SHOWN:]
            ]
        recordable = result.verdict is Verdict.PASSED and not scenario.requires.faults
        if self.config.record and recordable and env.cassettes and env.proxy:
            env.cassettes.save(
                instance.id,
                ctx.transcript,
                customer=ctx.customer,
                webhooks=ctx.deliveries,
                base_url=env.proxy.url,
            )
        return result

    def _judge_contract(self, ctx: ScenarioContext, result: ScenarioResult) -> None:
        contract = self.env.contract
        if contract is None:
            return
        for exchange in ctx.exchanges:
            result.violations.extend(contract.validate(exchange, self.env.base_url))
        if result.violations and result.verdict is not Verdict.SKIPPED:
            first = result.violations[0]
            summary = (
                f"{len(result.violations)} contract violation(s), first: {first.direction} "
                f"{first.method} {first.path} at {first.json_path}: {first.message}"
            )
            result.reason = f"{result.reason}; {summary}" if result.reason else summary
            result.verdict = Verdict.FAILED

    def _judge_leaks(
        self, ctx: ScenarioContext, result: ScenarioResult, error_text: str | None
    ) -> None:
        scanner, instance_id = self.env.scanner, ctx.instance.id
        findings = scanner.scan("transcript", transcript_items(instance_id, ctx.transcript))
        lines = [item for item in self.env.logs.items() if item[0].startswith(f"{instance_id} (")]
        findings += scanner.scan("log", lines)
        texts = [*ctx.texts, *([error_text] if error_text else [])]
        findings += scanner.scan("exception or result text", [(instance_id, t) for t in texts])
        if not findings:
            return
        self.report.leaks.extend(findings)
        summary = "; ".join(
            f"{f.secret} ({f.encoding}) in {f.source} at {f.location}" for f in findings
        )
        result.reason = f"{result.reason}; leak: {summary}" if result.reason else f"leak: {summary}"
        result.verdict = Verdict.FAILED

    def finish(self) -> RunReport:
        """Judge coverage (once every scenario ran) and close the report."""
        env = self.env
        faults_on = self.config.faults and env.mode is Mode.SIMULATOR
        declared = declared_capabilities(
            env.manifest, faults=faults_on, webhooks=env.mode is not Mode.LIVE
        )
        not_run = len(self.plan) - len(self.report.scenarios)
        if self.config.select:
            self.report.coverage_skip = "not judged: --select ran part of the profile"
        elif not_run > 0:
            self.report.coverage_skip = (
                f"not judged: {not_run} planned scenario(s) did not run (deselected or stopped)"
            )
        elif self.report.skip_reason is not None:
            self.report.coverage_skip = f"not judged: {self.report.skip_reason}"
        if self.report.coverage_skip is None:
            self.report.coverage = compute_coverage(declared, self.report.scenarios)
        self.report.duration_s = round(time.perf_counter() - self._started, 3)
        return self.report
