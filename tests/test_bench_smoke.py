"""Smoke test of the benchmark harness: ``bench/compare.py --quick`` runs end to end.

Only that it completes and writes the expected JSON; benchmarks are not tests, so nothing
here looks at a number.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import service_missing

ROOT = Path(__file__).resolve().parent.parent
PHASES = ("echo", "http", "static", "stream", "push", "broadcast", "memory", "churn")
COMPARE = (sys.executable, str(ROOT / "bench" / "compare.py"))


def run_compare(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """``compare.py args``; past ``timeout`` it is interrupted (SIGINT), so that it stops the
    servers it started in their own sessions instead of leaving them running, and fails."""
    with subprocess.Popen(
        [*COMPARE, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT
    ) as process:
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGINT)
            out, err = process.communicate(timeout=30)
            pytest.fail(f"compare.py took over {timeout} s:\n{out[-3000:]}{err[-3000:]}")
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


@pytest.mark.timeout(90)
def test_compare_quick_runs_end_to_end(tmp_path: Path, redis_url: str) -> None:
    output = tmp_path / "compare.json"
    done = run_compare(["--quick", "--redis-url", redis_url, "--output", str(output)], 60)
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


@pytest.mark.timeout(90)
def test_compare_quick_runs_the_uvicorn_and_socketio_baselines(tmp_path: Path) -> None:
    """FastAPI, Starlette and python-socketio on uvicorn (not in --quick's default set, to keep
    the test above short); socketio through the generator's Socket.IO client."""
    output = tmp_path / "compare.json"
    done = run_compare(
        [
            *("--quick", "--servers", "laf-py,fastapi,starlette,socketio"),
            *("--only", "echo,http,broadcast,memory", "--output", str(output)),
        ],
        75,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(output.read_text())
    assert set(report["results"]) == {"laf-py", "fastapi", "starlette", "socketio"}
    for name, phases in report["results"].items():
        for phase in ("echo", "http", "broadcast", "memory"):
            if name == "socketio" and phase == "http":
                assert phases[phase] is None  # Socket.IO only: no /hello
                continue
            assert "error" not in phases[phase], (name, phase, phases[phase])
        assert phases["echo"]["msgs_per_s"] > 0, name  # the echoes came back
        assert phases["broadcast"]["connections"] == 50, name
        assert "kib_per_connection" in phases["memory"]
    assert set(report["ratios"]) == {"laf-py/fastapi", "laf-py/starlette", "laf-py/socketio"}
    assert "laf-py/socketio" in done.stdout


@pytest.mark.timeout(420)  # valgrind's start-up is slow, and slower on a busy machine
def test_compare_counts_instructions_under_callgrind(tmp_path: Path) -> None:
    if shutil.which("valgrind") is None:
        service_missing("valgrind is not installed (apt-get install valgrind)")
    output = tmp_path / "compare.json"
    done = run_compare(
        ["--quick", "--only", "instructions", "--servers", "laf-py", "--output", str(output)], 400
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    counted = json.loads(output.read_text())["results"]["laf-py"]["instructions"]
    assert counted["per_http_request"] > 0
    assert counted["per_echo"] > 0
