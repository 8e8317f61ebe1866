"""Parent crash recovery: the parent (the CLI) is SIGKILLed mid-run, then `isolane recover`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from isolane.tracking.store import Store
from tests.helpers import alive

ROOT = Path(__file__).resolve().parent.parent


def _cli(*args: str, home: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "isolane.cli", *args, "--home", str(home)],
                          check=False, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _wait_for(predicate, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


def _spool_seqs(path: Path) -> list[int]:
    """The seqs of a spool's records (a worker killed mid-run leaves zeros allocated ahead)."""
    return [orjson.loads(line)["seq"] for line in path.read_bytes().rstrip(b"\0").splitlines()
            if line.strip()]


@pytest.mark.parametrize("worker", ["still running", "finished alone", "killed too"])
def test_parent_killed_mid_run_then_recover(tmp_path: Path, worker: str) -> None:
    """After the parent dies, `isolane recover --resume` completes the run with every event once."""
    home = tmp_path / "home"
    # Slow steps when the worker must still be running after the parent dies and `recover`
    # has started (a CLI start imports AG2, which takes seconds on a loaded machine).
    sleep = "2.0" if worker == "still running" else "0.4"
    parent = subprocess.Popen(
        [sys.executable, "-m", "isolane.cli", "run", "recover me", "-w", "tests.flows:durable",
         "-c", f"sleep={sleep}", "--home", str(home), "--json"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: (home / "isolane.db").exists())
        store = Store.open(None, home=home)
        _wait_for(lambda: bool(store.list_runs()) and any(
            n.node_id == "step_2" and n.status == "completed" for n in store.dag(store.list_runs()[0].id)[0]))
        row = store.list_runs()[0]
        assert row.worker_pid is not None
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        assert alive(row.worker_pid), "the worker must outlive its parent"
        if worker == "finished alone":
            _wait_for(lambda: not alive(row.worker_pid or 0), timeout=60)
        elif worker == "killed too":
            os.kill(row.worker_pid, signal.SIGKILL)
            _wait_for(lambda: not alive(row.worker_pid or 0))

        result = _cli("recover", "--resume", "--json", home=home)
        assert result.returncode == 0, result.stderr + result.stdout
        (report,) = [orjson.loads(line) for line in result.stdout.splitlines()]
        assert report["final_status"] == "completed"
        expected_action = {"still running": "adopted", "finished alone": "settled",
                           "killed too": "resumed"}[worker]
        assert report["action"] == expected_action

        final = store.get_run(row.id)
        assert final.status == "completed" and final.result is not None
        count, low, high = store.seq_stats(row.id)
        assert (low, count) == (1, high)
        spool = _spool_seqs(Path(final.work_dir).parent / "events.jsonl")
        assert sorted(set(spool)) == list(range(1, high + 1))  # every event the worker wrote, once
        store.close()
    finally:
        if parent.poll() is None:
            parent.kill()


def test_recover_with_nothing_to_do(tmp_path: Path) -> None:
    """Recover on a home with no interrupted runs says so and exits 0."""
    result = _cli("recover", home=tmp_path / "home")
    assert result.returncode == 0 and "no interrupted runs" in result.stdout
