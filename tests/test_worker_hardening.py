"""Worker hardening with real workers: secrets across the 64 KiB output cut, processes a crashed
worker leaves behind, the cgroup sweep of several parents, descriptor exhaustion, credentials of
every shape in the environment, the state-before-node order, hostile frames through Ray.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest

from isolane import Executor, Limits, Outcome, RunSpec
from isolane.schemas.redaction import REDACTED, Redactor
from isolane.tracking import Store
from isolane.worker import cgroup as cgroups
from isolane.worker import proctree
from tests.helpers import alive, executor_on
from tests.test_hardening_store import BAD_INPUTS, Evidence

pytestmark = pytest.mark.anyio

LINE_MAX = 64 * 1024


async def _run(home: Path, db_url: str | None = None, **spec: Any) -> tuple[Outcome, Store, str]:
    """Run one spec to its end on a fresh executor; the store stays open for the checks."""
    async with Executor(home=home, db_url=db_url) as ex:
        run = await ex.submit(RunSpec(**spec))
        with anyio.fail_after(120):
            outcome = await run.wait()
    return outcome, Store.open(db_url or f"sqlite:///{home / 'isolane.db'}"), run.run_id


def _fragments(secret: str, size: int = 6) -> list[str]:
    return [secret[i:i + size] for i in range(len(secret) - size + 1)]


# -- 1. a secret across the 64 KiB cut of a long output line ------------------------------------

CONFIGURED = "QZJ1-b0undary-5ecr3t-9PLM"
OPENAI_KEY = "sk-proj-Q7w9Lm2Nc4Vb8Kz1Rp6Tt3Hs"
BEARER = "Wd5Jq8Fg2Mh6Cs9Pn3Vk7Ur1Ze"


@pytest.mark.parametrize("before", [1, 10, 20])
async def test_a_secret_across_the_output_cut_is_never_stored_in_halves(
        home: Path, before: int) -> None:
    """A >64 KiB line with a secret lying across the 64 KiB cut: the cut moves before the
    secret, which is redacted whole; no piece of it reaches the store or the spool."""
    secrets = [CONFIGURED, OPENAI_KEY, f"Bearer {BEARER}"]
    outcome, store, run_id = await _run(
        home, workflow="tests.flows.hardening:prints_split_secrets", secrets=[CONFIGURED],
        config={"secrets": secrets, "before": before})
    with store:
        assert outcome.status == "completed", outcome
        outputs = store.events(run_id, types=["output"])
        spool = (Path(store.get_run(run_id).work_dir).parent / "events.jsonl").read_bytes()
    texts = [e.data["text"] for e in outputs]
    assert max(len(t.encode()) for t in texts) <= LINE_MAX
    for stream in ("stdout", "stderr"):
        pieces = [e.data["text"] for e in outputs if e.data["stream"] == stream]
        assert len(pieces) >= 2 * len(secrets), pieces  # every line was cut
        assert sum(REDACTED in p for p in pieces) == len(secrets)
    for secret in (CONFIGURED, OPENAI_KEY, BEARER):
        for fragment in _fragments(secret):
            assert not any(fragment in t for t in texts), fragment
            assert fragment.encode() not in spool, fragment


def test_safe_cut_moves_before_every_kind_of_secret() -> None:
    """The cut falls before a configured secret, a key or a bearer token across it, and stays
    where it is when nothing lies across it."""
    redactor = Redactor([CONFIGURED])
    for secret in (CONFIGURED, OPENAI_KEY, f"Bearer {BEARER}"):
        for before in (1, 5, len(secret) - 1):
            data = b"x" * (LINE_MAX - before) + secret.encode() + b" " * 100
            assert redactor.safe_cut(data, LINE_MAX) == LINE_MAX - before, (secret, before)
    plain = b"x" * (LINE_MAX + 100)
    assert redactor.safe_cut(plain, LINE_MAX) == LINE_MAX


# -- 2. processes a crashed worker leaves behind ---------------------------------------------------


@pytest.mark.parametrize("cgroup", [False, True], ids=["no-cgroup", "cgroup"])
@pytest.mark.parametrize("how", ["exit", "segfault", "sigkill"])
async def test_processes_of_a_crashed_worker_are_killed(
        home: Path, how: str, cgroup: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker that starts ``sleep`` in a session of its own (and one in its group), then dies
    by ``os._exit(3)``, SIGSEGV or SIGKILL: once the run has ended, neither process is left, with or
    without a cgroup (without, the parent's last scan of the worker's tree finds them)."""
    if cgroup:
        probe = cgroups.ProcessCgroup.create(f"probe-{os.getpid()}", processes=1)
        if probe is None:
            pytest.skip("no writable pids cgroup on this machine")
        probe.remove()
    else:  # a machine without cgroups
        monkeypatch.setattr(cgroups.ProcessCgroup, "create",
                            classmethod(lambda cls, *a, **k: None))
    outcome, store, run_id = await _run(
        home, workflow="tests.flows.hardening:detaches_then_dies",
        config={"how": how, "wait": 4 * proctree.SCAN_INTERVAL})
    with store:
        [detached] = [e for e in store.events(run_id, types=["custom"])
                      if e.data["name"] == "detached"]
    pids = detached.data["pids"]
    try:
        assert outcome.status == "crashed", outcome
        assert outcome.exit_code == {"exit": 3, "segfault": -11, "sigkill": -9}[how]
        assert not [p for p in pids if alive(p)], "a process of the crashed worker survived"
    finally:
        for pid in pids:  # a failure must not leave them running for 300 s
            if alive(pid):
                os.kill(pid, 9)


async def test_processes_of_a_crashed_worker_are_killed_on_each_backend(
        home: Path, tmp_path: Path, backend_name: str) -> None:
    """The same through a Ray relay (which launches the worker and keeps its tree scan on the
    worker's node) as locally: nothing the crashed worker started is left."""
    async with executor_on(backend_name, home, db_url=f"sqlite:///{tmp_path / 'i.db'}") as ex:
        run = await ex.submit(RunSpec(workflow="tests.flows.hardening:detaches_then_dies",
                                      config={"how": "exit", "wait": 4 * proctree.SCAN_INTERVAL}))
        with anyio.fail_after(120):
            outcome = await run.wait()
        [detached] = [e for e in ex.store.events(run.run_id, types=["custom"])
                      if e.data["name"] == "detached"]
    pids = detached.data["pids"]
    try:
        assert (outcome.status, outcome.exit_code) == ("crashed", 3), outcome
        assert not [p for p in pids if alive(p)], "a process of the crashed worker survived"
    finally:
        for pid in pids:
            if alive(pid):
                os.kill(pid, 9)


def test_a_tree_scan_forgets_nothing_a_dying_worker_had() -> None:
    """The scan remembers a detached process by pid and create time and kills it after its
    parent is gone; a process it never saw is not touched."""
    code = ("import subprocess,sys,time;"
            "p=subprocess.Popen(['sleep','300'],start_new_session=True);"
            "print(p.pid,flush=True);time.sleep(300)")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    bystander = subprocess.Popen(["sleep", "300"])
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        scan = proctree.TreeScan(parent.pid)
        scan.scan()
        assert set(scan.known()) == {child}
        parent.kill()
        parent.wait()
        assert alive(child)  # re-parented, out of any walk from the dead parent
        assert scan.kill() == 1
        deadline = time.monotonic() + 5
        while alive(child) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not alive(child) and alive(bystander.pid)
    finally:
        parent.kill()
        parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()
        bystander.kill()
        bystander.wait()
        if alive(child):
            os.kill(child, 9)


# -- 2b. the cgroup sweep of several parents -------------------------------------------------------


def test_another_parents_sweep_spares_a_fresh_cgroup() -> None:
    """A parent's start-up sweep (another process) leaves an empty cgroup alone while the parent
    that made it lives; only one whose owner is gone, and older than a minute, is removed."""
    fresh = cgroups.ProcessCgroup.create(f"sweep-{os.getpid()}", processes=1)
    if fresh is None:
        pytest.skip("no writable pids cgroup on this machine")
    dead = subprocess.Popen(["true"])
    dead.wait()
    orphan = fresh.path.parent / f"isolane-sweep-orphan-{os.getpid()}.{dead.pid}"
    orphan.mkdir()
    try:
        code = "from isolane.worker.cgroup import remove_stale_cgroups; remove_stale_cgroups()"
        sweep = subprocess.run(
            [sys.executable, "-c", code], cwd=Path(__file__).resolve().parent.parent, check=True, capture_output=True)
        assert sweep.returncode == 0
        assert fresh.path.is_dir(), "another parent's sweep removed a live parent's cgroup"
        assert orphan.is_dir(), "a cgroup younger than a minute was swept"
        assert fresh.path.name.endswith(f".{os.getpid()}")
        try:
            os.utime(orphan, (time.time() - 120, time.time() - 120))
        except OSError:
            pytest.skip("cgroupfs here does not let a test age a cgroup")
        if time.time() - orphan.stat().st_mtime < 60:
            pytest.skip("cgroupfs here does not keep a cgroup's times")
        assert cgroups.remove_stale_cgroups(fresh.path.parent) >= 1
        assert not orphan.exists() and fresh.path.is_dir()
    finally:
        fresh.remove()
        if orphan.exists():
            orphan.rmdir()


# -- 3. descriptor exhaustion ----------------------------------------------------------------------


@pytest.mark.parametrize("then", ["raise", "write"])
async def test_descriptor_exhaustion_fails_with_the_limit_named(home: Path, then: str) -> None:
    """A workflow that holds every descriptor ``open_files`` allows (and then raises, or writes
    a file) ends ``failed`` with ``LimitExceeded`` naming the limit, not ``crashed``."""
    outcome, store, run_id = await _run(
        home, workflow="tests.flows.hardening:holds_descriptors", config={"then": then},
        limits=Limits(open_files=64))
    with store:
        [failed] = store.events(run_id, types=["run_failed"])
    assert (outcome.status, outcome.error_type, outcome.exit_code) == \
        ("failed", "LimitExceeded", 1), outcome
    assert "open files limit of 64 reached" in (outcome.error or "")
    assert "Limits(open_files=...)" in (outcome.error or "")
    assert failed.data["limit"] == "open_files"


# -- 4. credentials of other shapes, from RunSpec.env and the inherited environment --------------

GITHUB = "ghp_R8s2XwQ4nT7vY1bK9mZ3cL6pD0fH5jA2eG4u"
AWS_ID = "AKIAQ4XZ7T2NB6MRW3PL"
AWS_SECRET = "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"
DB_PASSWORD = "c0rrect-h0rse-batt3ry"
INHERITED = "glpat-Zq8Xw2Vn5Rt7Ym1Kp4Ls"


async def test_credentials_of_every_shape_are_redacted(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """GitHub and AWS keys, a database password inside a URL and an inherited token reach the
    worker and are used by it, yet never reach the spool or the store (no ``sk-`` among them)."""
    monkeypatch.setenv("GITLAB_TOKEN", INHERITED)
    env = {"GITHUB_TOKEN": GITHUB, "AWS_ACCESS_KEY_ID": AWS_ID, "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
           "APP_DB_URL": f"postgresql://app:{DB_PASSWORD}@db.internal:5432/app",
           "WAREHOUSE_PASSWORD": DB_PASSWORD + "-2"}
    names = [*env, "GITLAB_TOKEN"]
    async with Executor(home=home, env_allow={"PATH", "HOME", "GITLAB_TOKEN"}) as ex:
        run = await ex.submit(RunSpec(workflow="tests.flows.hardening:prints_environment",
                                      env=env, config={"names": names}))
        with anyio.fail_after(120):
            outcome = await run.wait()
        events = ex.store.events(run.run_id)
        stored = b"\n".join(orjson.dumps(e.data) for e in events)
        stored += orjson.dumps(ex.store.get_run(run.run_id).result)
        spool = (Path(ex.store.get_run(run.run_id).work_dir).parent / "events.jsonl").read_bytes()
    assert outcome.status == "completed", outcome
    seen = {e.data["variable"]: e.data["value"] for e in events if e.type == "custom"}
    assert set(seen) == set(names) and all(REDACTED in v for v in seen.values()), seen
    for secret in (GITHUB, AWS_ID, AWS_SECRET, DB_PASSWORD, INHERITED):
        assert secret.encode() not in stored, secret
        assert secret.encode() not in spool, secret
    assert outcome.result["APP_DB_URL"] == REDACTED


# -- 4b. state first, then the node completed ------------------------------------------------------


async def test_a_steps_state_is_saved_before_it_is_completed(home: Path) -> None:
    """``ctx.step``: the state_snapshot holding what the step saved precedes the node's
    ``completed`` update, so a resume that sees the node done also sees its state."""
    outcome, store, run_id = await _run(home, workflow="tests.flows.hardening:saves_in_steps")
    with store:
        events = store.events(run_id, types=["state_snapshot", "dag_node_update"])
    assert outcome.status == "completed", outcome
    completed = [e for e in events if e.type == "dag_node_update"
                 and e.data.get("status") == "completed"]
    assert [e.node_id for e in completed] == ["s0", "s1", "s2"]
    for done in completed:
        before = [e for e in events if e.seq < done.seq]
        snapshots = [e for e in before if e.type == "state_snapshot"
                     and e.data.get("reason") == "node" and e.node_id == done.node_id]
        assert snapshots, f"node {done.node_id} completed before its state was saved"
        assert f"k{done.node_id[1]}" in snapshots[-1].data["context"]
        running = max(e.seq for e in before if e.type == "dag_node_update"
                      and e.node_id == done.node_id)
        assert running < snapshots[-1].seq < done.seq


# -- 4c. hostile frames through the Ray relay ------------------------------------------------------


@pytest.mark.parametrize(("flow", "check"), BAD_INPUTS)
async def test_hostile_frames_through_each_backend(
        home: Path, tmp_path: Path, backend_name: str, flow: str, check: Any) -> None:
    """The frames a hostile worker writes (NUL, raw bytes, huge seqs, unstorable values) end
    the same way through the Ray relay as through the local backend."""
    db_url = f"sqlite:///{tmp_path / 'isolane.db'}"
    async with executor_on(backend_name, home, db_url=db_url) as ex:
        run = await ex.submit(RunSpec(workflow=f"tests.flows.hostile:{flow}"))
        with anyio.fail_after(120):
            await run.wait()
    with Store.open(db_url) as store:
        check(Evidence(store, run.run_id))
