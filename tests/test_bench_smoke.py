"""Smoke test of the benchmark harness: ``bench/compare.py --quick`` runs end to end.

Only that it completes and writes the expected JSON; benchmarks are not tests, so nothing
here looks at a number.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import service_missing

ROOT = Path(__file__).resolve().parent.parent
PHASES = ("echo", "http", "static", "stream", "push", "broadcast", "memory", "churn")


@pytest.mark.timeout(90)
def test_compare_quick_runs_end_to_end(tmp_path: Path, redis_url: str) -> None:
    output = tmp_path / "compare.json"
    compare = [sys.executable, str(ROOT / "bench" / "compare.py"), "--quick"]
    done = subprocess.run(
        [*compare, "--redis-url", redis_url, "--output", str(output)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(output.read_text())
    assert set(report) >= {"meta", "results", "ratios", "table"}
    assert set(report["results"]) == {"tornado", "websockets", "laf-py"}
    for name, phases in report["results"].items():
        for phase in PHASES:
            if name == "websockets" and phase in ("http", "static", "stream", "push"):
                assert phases[phase] is None  # not an HTTP framework
                continue
            assert "error" not in phases[phase], (name, phase, phases[phase])
    laf = report["results"]["laf-py"]
    assert {"msgs_per_s", "p50_ms", "p99_ms", "server_cpu_pct", "generator_cpu_pct"} <= set(
        laf["echo"]
    )
    for phase in ("http", "static", "stream"):
        assert {"requests_per_s", "p50_ms", "p99_ms"} <= set(laf[phase])
    assert {"median_ms", "connections"} <= set(laf["broadcast"])
    assert {"p50_ms", "p99_ms"} <= set(laf["push"])
    cluster = laf["cluster"]
    assert "error" not in cluster, cluster
    assert {"push_p50_ms", "push_p99_ms", "broadcast_median_ms"} <= set(cluster)
    assert "kib_per_connection" in laf["memory"]
    assert len(laf["churn"]["rss_after_each_round_mib"]) == laf["churn"]["rounds"]
    assert {"laf-py/tornado", "laf-py/websockets"} == set(report["ratios"])
    assert "laf-py" in done.stdout and "laf-py/tornado" in done.stdout


@pytest.mark.timeout(420)  # valgrind's start-up is slow, and slower on a busy machine
def test_compare_counts_instructions_under_callgrind(tmp_path: Path) -> None:
    if shutil.which("valgrind") is None:
        service_missing("valgrind is not installed (apt-get install valgrind)")
    output = tmp_path / "compare.json"
    compare = [sys.executable, str(ROOT / "bench" / "compare.py"), "--quick"]
    done = subprocess.run(
        [*compare, "--only", "instructions", "--servers", "laf-py", "--output", str(output)],
        capture_output=True,
        text=True,
        timeout=400,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    counted = json.loads(output.read_text())["results"]["laf-py"]["instructions"]
    assert counted["per_http_request"] > 0
    assert counted["per_echo"] > 0
