"""The chaos suite's short version, as CI runs it: one command, real processes, 0 violations.

`python -m chaos --short` starts its own dev server (SQLite file), simulator and worker
processes, kills and restarts them, injects API and ComfyUI faults, and exits 1 on any
violated invariant. The full run (100 worker kills) is `python -m chaos`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.chaos, pytest.mark.integration]


@pytest.mark.timeout(400)
def test_short_chaos_run_injects_faults_and_violates_nothing(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    run = subprocess.run(
        [sys.executable, "-m", "chaos", "--short", "--workdir", str(tmp_path / "run")]
        + ["--json", str(results)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=380,
    )
    assert run.returncode == 0, f"{run.stdout}\n{run.stderr}"
    scenarios = {r["name"]: r for r in json.loads(results.read_text())}
    assert set(scenarios) == {"worker-kills", "server-restart", "api-faults", "comfy-flapping"}
    for name, result in scenarios.items():
        assert result["error"] is None, name
        assert sum(result["faults"].values()) > 0, f"{name} injected nothing"
        assert sum(c["checked"] for c in result["checks"]) > 0, f"{name} checked nothing"
        assert all(c["violations"] == [] for c in result["checks"]), name
    assert "PASS: 0 violations" in run.stdout
