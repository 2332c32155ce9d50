"""What does a chaos run print? Per scenario: faults injected, invariant checks, violations."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, Field

from chaos.invariants import Check


class ScenarioResult(BaseModel):
    name: str
    title: str
    faults: dict[str, int] = Field(default_factory=dict)
    """Faults injected, by kind (e.g. "worker SIGKILL": 100)."""
    figures: dict[str, str] = Field(default_factory=dict)
    """Measurements worth quoting (time to converge, share of failed calls...)."""
    checks: list[Check] = Field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None
    """The scenario could not finish (a timeout, a crash): counted as one violation."""

    @property
    def injected(self) -> int:
        return sum(self.faults.values())

    @property
    def checked(self) -> int:
        return sum(c.checked for c in self.checks)

    @property
    def violations(self) -> int:
        return sum(len(c.violations) for c in self.checks) + (1 if self.error else 0)


def _table(rows: Sequence[Sequence[str]], align: str) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        cells = [
            cell.rjust(w) if a == ">" else cell.ljust(w)
            for cell, w, a in zip(row, widths, align, strict=True)
        ]
        lines.append("  " + "  ".join(cells).rstrip())
        if n == 0:
            lines.append("  " + "  ".join("-" * w for w in widths))
    return lines


def render(result: ScenarioResult) -> str:
    lines = [f"== {result.name}: {result.title} ({result.seconds:.1f} s)"]
    faults = [("fault injected", "count")] + [(k, str(v)) for k, v in result.faults.items()]
    lines += _table(faults, "<>")
    checks = [("invariant", "checks", "violations")] + [
        (c.name, str(c.checked), str(len(c.violations))) for c in result.checks
    ]
    lines += _table(checks, "<>>")
    for name, value in result.figures.items():
        lines.append(f"  {name}: {value}")
    for c in result.checks:
        for violation in c.violations[:20]:
            lines.append(f"  VIOLATION {c.name}: {violation}")
    if result.error:
        lines.append(f"  ERROR: {result.error}")
    return "\n".join(lines)


def render_summary(results: list[ScenarioResult]) -> str:
    rows = [("scenario", "faults injected", "invariant checks", "violations", "seconds")]
    rows += [
        (r.name, str(r.injected), str(r.checked), str(r.violations), f"{r.seconds:.1f}")
        for r in results
    ]
    total = sum(r.violations for r in results)
    verdict = "PASS: 0 violations" if total == 0 else f"FAIL: {total} violation(s)"
    return "\n".join(["== summary", *_table(rows, "<>>>>"), f"  {verdict}"])
