"""Benchmark (not a test): how long the conformance kit takes on the sandbox connector.

Target (issue 6): the card-acquirer profile against the sandbox connector in simulator mode
completes in <= 20 s. Runs the profile without and with fault injection, ``--repeat`` times
each, in this process, and prints the wall time of each run (kit start-up, simulator, every
scenario, coverage and leak judgement; report rendering included) and the slowest scenarios.

    python bench/conformance.py [--repeat 3]
"""

from __future__ import annotations

import os
import sys

# Run as a script, bench/ is first on sys.path and this file would shadow the ``conformance``
# package it measures: take the directory off (nothing here imports a sibling).
_BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _BENCH]

import argparse  # noqa: E402
import asyncio  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import structlog  # noqa: E402

from conformance.environment import Mode, RunConfig  # noqa: E402
from conformance.reports import render_reports  # noqa: E402
from conformance.results import RunReport  # noqa: E402
from conformance.runner import ConformanceRun  # noqa: E402

TARGET_SECONDS = 20.0


async def one_run(faults: bool) -> tuple[float, RunReport]:
    started = time.perf_counter()
    run = ConformanceRun(
        RunConfig(connector="sandbox", profile="card-acquirer", mode=Mode.SIMULATOR, faults=faults)
    )
    report = await run.run_all()
    render_reports(report, run.env.scanner, ["junit", "json", "html"])
    return time.perf_counter() - started, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    # Log output would dominate the measurement; events are still produced and captured.
    structlog.configure(logger_factory=structlog.ReturnLoggerFactory())
    print(
        f"card-acquirer profile, sandbox connector, simulator mode (target <= {TARGET_SECONDS:g} s)"
    )
    for faults in (False, True):
        times: list[float] = []
        last: RunReport | None = None
        for _ in range(args.repeat):
            seconds, last = asyncio.run(one_run(faults))
            times.append(seconds)
        assert last is not None
        counts = last.counts()
        label = "with --faults   " if faults else "without --faults"
        verdict = "OK" if max(times) <= TARGET_SECONDS else "OVER TARGET"
        print(
            f"  {label}: wall {statistics.median(times):.2f} s median, {max(times):.2f} s max "
            f"over {len(times)} runs; {counts['passed']} passed, {counts['failed']} failed, "
            f"{counts['skipped']} skipped; status {last.status.value} [{verdict}]"
        )
        slowest = sorted(last.scenarios, key=lambda r: r.duration_s, reverse=True)[:5]
        print("    slowest: " + ", ".join(f"{r.scenario_id} {r.duration_s:.2f}s" for r in slowest))


if __name__ == "__main__":
    main()
