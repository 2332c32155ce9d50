"""Run the chaos suite: `python -m chaos [--short] [--scenario NAME ...] [--kills N]`.

Prints one table per scenario (faults injected, invariant checks, violations) and a summary;
exits 1 when any invariant was violated. Logs of every process stay in the work directory.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import random
import sys
import time
from pathlib import Path

from chaos.profile import FULL, SETTINGS, SHORT, Profile
from chaos.report import ScenarioResult, render, render_summary
from chaos.scenarios import SCENARIOS
from chaos.stack import ROOT, ChaosStack


def parse(argv: list[str]) -> tuple[Profile, list[str], Path, Path | None]:
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__.split("\n")[0])
    parser.add_argument("--short", action="store_true", help="the CI version: a few faults each")
    parser.add_argument(
        "--scenario", action="append", choices=list(SCENARIOS), help="run only these (repeatable)"
    )
    parser.add_argument("--kills", type=int, help="worker SIGKILLs (full: 100)")
    parser.add_argument("--seed", type=int, help="random seed (default: the profile's)")
    parser.add_argument("--workdir", type=Path, help="logs and the SQLite file go here")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args(argv)
    profile = SHORT if args.short else FULL
    if args.kills is not None:
        if args.kills < 1:
            parser.error("--kills must be at least 1")
        profile = dataclasses.replace(profile, kills=args.kills)
    if args.seed is not None:
        profile = dataclasses.replace(profile, seed=args.seed)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    workdir = args.workdir or ROOT / ".warmpool" / "chaos" / f"{profile.name}-{stamp}"
    left_out = {"drain": not profile.drain, "two-worker-failover": not profile.failover}
    names = args.scenario or [n for n in SCENARIOS if not left_out.get(n, False)]
    return profile, names, workdir, args.json


async def run(profile: Profile, names: list[str], workdir: Path) -> list[ScenarioResult]:
    rng = random.Random(profile.seed)
    stack = ChaosStack(
        workdir, SETTINGS, sim_speed=profile.sim_speed, offers=150, seed=profile.seed
    )
    results: list[ScenarioResult] = []
    print(f"chaos ({profile.name}): logs in {workdir}", flush=True)
    try:
        await stack.start()
        for name in names:
            started = time.monotonic()
            try:
                result = await SCENARIOS[name](stack, profile, rng)
            except Exception as exc:  # a scenario that cannot finish is a violation
                result = ScenarioResult(name=name, title="did not finish")
                result.error = f"{type(exc).__name__}: {exc}"[:500]
            result.seconds = time.monotonic() - started
            results.append(result)
            print(render(result), flush=True)
    finally:
        await stack.close()
    return results


def main(argv: list[str] | None = None) -> int:
    profile, names, workdir, json_path = parse(sys.argv[1:] if argv is None else argv)
    results = asyncio.run(run(profile, names, workdir))
    summary = render_summary(results)
    print(summary, flush=True)
    tables = "\n".join(render(r) for r in results)
    (workdir / "report.txt").write_text(f"{tables}\n{summary}\n")
    if json_path is not None:
        json_path.write_text(json.dumps([r.model_dump() for r in results], indent=2))
    return 1 if any(r.violations for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
