"""Isolation and safety with real workers: hostile workflows, limits, process trees, secrets, paths.

The table ``CASES`` runs each workflow of :mod:`tests.flows.hostile` in a real worker and pins
down how its run ends (status and a message that names what happened) plus the evidence that
the parent, the store and the machine came through unharmed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import orjson
import psutil
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from isolane import Executor, Limits, Outcome, RunSpec
from isolane.backends.environment import worker_environment
from isolane.errors import ConfigError, PathEscape
from isolane.schemas import decode_lines, encode_event
from isolane.schemas.paths import open_inside, resolve_inside, walk_files
from isolane.schemas.redaction import REDACTED, Redactor, secret_values
from isolane.worker import cgroup as cgroups
from tests.helpers import RssPeak, alive

pytestmark = pytest.mark.anyio

_MIB = 1024 * 1024
KEYS = ["sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789", "sk-ant-api03-ZyXwVuTsRqPoNmLkJiHgFeDcBa-98765",
        "configured-secret-value-42"]
ENV_KEY = "sk-envkey-0123456789abcdefABCDEF"


async def _gone(pids: list[int], seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        await anyio.sleep(0.05)
    return not any(alive(p) for p in pids)


@dataclass
class Evidence:
    """What a hostile run left behind, for the per-case checks."""

    outcome: Outcome
    run_id: str
    home: Path
    events: list[Any]
    diagnostics: list[Any]
    spool: bytes
    rss_growth: int
    db_url: str
    ready: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Case:
    flow: str
    status: str
    match: str
    spec: dict[str, Any] = field(default_factory=dict)
    cancel_on: str | None = None
    check: Callable[[Evidence], None] | None = None


def _no_store_url(ev: Evidence) -> None:
    env = ev.outcome.result
    assert "ISOLANE_DB_URL" not in env and "SOME_PASSWORD" not in env
    assert "isolane-store-secret" not in env["/proc/self/environ"]
    assert "hunter2-password" not in env["/proc/self/environ"]
    assert env["OPENAI_API_KEY"] == REDACTED and "PATH" in env  # given to the worker, never stored


def _bounded_parent(ev: Evidence) -> None:
    assert ev.rss_growth < 128 * _MIB, f"parent grew by {ev.rss_growth // _MIB} MB"
    output = sum(len(e.data["text"]) for e in ev.events if e.type == "output")
    assert output <= 8 * _MIB


def _pickle_rejected(ev: Evidence) -> None:
    marker = ev.home / "pwned"
    assert not marker.exists()
    invalid = [d for d in ev.diagnostics if d.kind == "invalid_event"]
    assert len(invalid) >= 7, [d.reason for d in invalid]  # random bytes hold newlines too
    assert any("after_garbage" == e.data.get("name") for e in ev.events)


def _lie_harmless(ev: Evidence) -> None:
    names = [e.data.get("name") for e in ev.events if e.type == "custom"]
    assert names == ["before_the_lie", *["after_the_lie"] * 2000]
    assert ev.diagnostics == []


def _tree_gone(ev: Evidence) -> None:
    pids = ev.ready["pids"]
    assert pids and not any(alive(p) for p in pids), "a detached process survived its run"


def _bomb_defused(ev: Evidence) -> None:
    started = next(e for e in ev.events if e.type == "custom" and e.data.get("name") == "forking")
    assert not [p for p in psutil.pids() if _in_session(p, started.data["pid"])]
    killed = [e for e in ev.events if e.type == "error" and e.data.get("limit") == "processes"]
    assert killed and killed[0].data["killed_processes"] >= 20


def _redacted_everywhere(ev: Evidence) -> None:
    stored = b"\n".join(e.to_json() for e in ev.events)
    command = [sys.executable, "-m", "isolane.cli", "events", ev.run_id, "--db", ev.db_url]
    cli_json = subprocess.run([*command, "--json"], capture_output=True, check=True,
                              env=_cli_env()).stdout
    cli_text = subprocess.run(command, capture_output=True, check=True, env=_cli_env()).stdout
    for where, blob in [("store", stored), ("spool", ev.spool), ("isolane events --json", cli_json),
                        ("isolane events", cli_text),
                        ("run error", (ev.outcome.error or "").encode())]:
        for key in [*KEYS, ENV_KEY]:
            assert key.encode() not in blob, f"{key} leaked into the {where}"
    assert REDACTED.encode() in stored and REDACTED.encode() in ev.spool
    for line in ev.spool.splitlines():
        orjson.loads(line)  # redaction kept every spool line valid JSON


CASES = [
    pytest.param(Case("reads_environment", "completed", "", spec={"env": {"OPENAI_API_KEY": ENV_KEY}},
                      check=_no_store_url), id="reads-environment"),
    pytest.param(Case("allocates", "failed", "memory limit of 256 MB reached",
                      spec={"config": {"mb": 1024}, "limits": Limits(memory_mb=256)}), id="memory"),
    pytest.param(Case("fork_bomb", "failed", "process limit of 20 reached",
                      spec={"limits": Limits(processes=20)}, check=_bomb_defused), id="fork-bomb"),
    pytest.param(Case("burns_cpu", "failed", "CPU time limit of 1 s reached",
                      spec={"limits": Limits(cpu_seconds=1)}), id="cpu"),
    pytest.param(Case("opens_files", "failed", "open files limit of 64 reached",
                      spec={"limits": Limits(open_files=64)}), id="open-files"),
    pytest.param(Case("detached_sleep", "cancelled", "cancelled by request", cancel_on="detached",
                      check=_tree_gone), id="detached-sleep-cancelled"),
    pytest.param(Case("detached_sleep", "cancelled", "cancelled by request", cancel_on="detached",
                      spec={"config": {"stubborn": True}, "cancel_grace": 0.5}, check=_tree_gone),
                 id="detached-sleep-ignores-cancel"),
    pytest.param(Case("prints_gigabyte", "failed", "output limit of 8 MB reached",
                      spec={"limits": Limits(output_mb=8)}, check=_bounded_parent), id="prints-1GB"),
    pytest.param(Case("swallows_limits", "failed", "output limit of 1 MB reached",
                      spec={"limits": Limits(output_mb=1)}), id="swallows-the-limit"),
    pytest.param(Case("writes_garbage", "completed", "survived", check=_pickle_rejected),
                 id="pickle-and-random-bytes"),
    pytest.param(Case("lies_about_its_tail", "completed", "lied", check=_lie_harmless),
                 id="lying-doorbell"),
    pytest.param(Case("leaks_keys", "failed", "RuntimeError: request failed with key [REDACTED]",
                      spec={"config": {"keys": KEYS}, "secrets": [KEYS[2]],
                            "env": {"OPENAI_API_KEY": ENV_KEY}},
                      check=_redacted_everywhere), id="leaks-keys"),
]


def _cli_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("ISOLANE_DB_URL", "ISOLANE_HOME")}


async def _run_case(case: Case, home: Path, db_url: str) -> Evidence:
    spec = dict(case.spec)
    config = dict(spec.pop("config", {}))
    config.setdefault("marker", str(home / "pwned"))
    ready: dict[str, Any] = {}
    async with Executor(home=home, db_url=db_url) as ex:
        run = await ex.submit(RunSpec(workflow=f"tests.flows.hostile:{case.flow}", config=config,
                                      **spec))
        # From here on, what the parent holds comes from serving this run (imports done, store open).
        async with RssPeak() as rss:
            if case.cancel_on is not None:
                async for event in run.events():
                    if event.type == "custom" and event.data.get("name") == case.cancel_on:
                        ready = event.data
                        break
                await run.cancel()
            with anyio.fail_after(90):
                outcome = await run.wait()
        events = ex.store.events(run.run_id)
        diagnostics = ex.store.diagnostics(run.run_id)
    spool = (home / "runs" / run.run_id / "events.jsonl").read_bytes()
    return Evidence(outcome, run.run_id, home, events, diagnostics, spool, rss.growth, db_url,
                    ready)


@pytest.mark.parametrize("case", CASES)
async def test_hostile_workflow(case: Case, home: Path, tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Each hostile workflow ends with the expected status, a message naming what happened, and
    the parent, store and machine unharmed."""
    monkeypatch.setenv("ISOLANE_DB_URL", "postgresql://isolane:isolane-store-secret@db/x")
    monkeypatch.setenv("SOME_PASSWORD", "hunter2-password")
    ev = await _run_case(case, home, f"sqlite:///{tmp_path / 'isolane.db'}")
    text = f"{ev.outcome.error or ''} {ev.outcome.result!r}"
    assert ev.outcome.status == case.status, ev.outcome
    assert case.match in text, ev.outcome
    if case.status == "failed" and "limit" in case.match:
        assert ev.outcome.error_type == "LimitExceeded"
        assert any(e.type == "run_failed" and e.data.get("limit") for e in ev.events)
    if case.check is not None:
        case.check(ev)


async def test_fork_bomb_is_stopped_without_a_cgroup(home: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Where no cgroup can be made, counting the worker's descendants still stops a fork bomb."""
    monkeypatch.setattr(cgroups.ProcessCgroup, "create", classmethod(lambda cls, *a, **k: None))
    case = Case("fork_bomb", "failed", "process limit of 20 reached",
                spec={"limits": Limits(processes=20)})
    ev = await _run_case(case, home, f"sqlite:///{tmp_path / 'isolane.db'}")
    assert ev.outcome.status == "failed" and case.match in (ev.outcome.error or "")
    _bomb_defused(ev)


def _in_session(pid: int, sid: int) -> bool:
    try:
        return os.getsid(pid) == sid and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except (OSError, psutil.Error):
        return False


async def test_cgroup_holds_the_run_and_is_removed(home: Path) -> None:
    """Where cgroups are writable, the worker runs in a pids cgroup of its own, removed at the end."""
    cgroup = cgroups.ProcessCgroup.create(f"probe-{os.getpid()}", processes=1)
    if cgroup is None:
        pytest.skip("no writable pids cgroup on this machine")
    cgroup.remove()
    async with Executor(home=home) as ex:
        run = await ex.submit(RunSpec(workflow="tests.flows:sleeps", config={"seconds": 30}))
        async for event in run.events():
            if event.type == "custom" and event.data.get("name") == "sleeping":
                break
        memberships = Path(f"/proc/{event.data['pid']}/cgroup").read_text()
        await run.cancel()
        await run.wait()
    # Named with its owner, this parent: another parent's sweep leaves it alone.
    name = f"isolane-{run.run_id}.{os.getpid()}"
    assert f"/{name}\n" in memberships
    base = cgroup.path.parent
    assert not (base / name).exists()


async def test_flood_is_stopped_and_other_runs_keep_flowing(home: Path, tmp_path: Path) -> None:
    """A worker flooding its spool with garbage records is stopped after the invalid-record
    cap; a run beside it stores all its events; the parent's memory stays bounded."""
    async with Executor(home=home, db_url=f"sqlite:///{tmp_path / 'isolane.db'}") as ex:
        flood = await ex.submit(RunSpec(workflow="tests.flows.hostile:floods", config={"seconds": 20}))
        calm = await ex.submit(RunSpec(workflow="tests.flows:emit_many", config={"n": 50_000}))
        async with RssPeak() as rss:
            with anyio.fail_after(60):
                flood_outcome, calm_outcome = await flood.wait(), await calm.wait()
        diagnostics = ex.store.diagnostics(flood.run_id)
        calm_count = ex.store.count_events(calm.run_id, types=["custom"])
    assert flood_outcome.status == "failed" and flood_outcome.error_type == "InvalidEvent"
    assert "more than 1000 invalid records" in (flood_outcome.error or "")
    assert len(diagnostics) == 1001
    assert calm_outcome.status == "completed" and calm_count == 50_000
    assert rss.growth < 128 * _MIB


def test_invalid_utf8_inside_a_json_string_is_a_problem() -> None:
    """Bytes that are not UTF-8 inside a JSON string are rejected, never stored."""
    record = (b'{"v":1,"run_id":"r","seq":1,"ts":1.0,"type":"custom","node_id":null,'
              b'"data":{"name":"\xff\xfe"}}\n')
    decoded = decode_lines(record, "r")
    assert not decoded.events and decoded.problems


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=1, max_size=64), st.sampled_from(["custom", "output", "agent_message"]))
def test_any_bytes_inside_a_json_string_never_raise(raw: bytes, type_: str) -> None:
    """Arbitrary bytes (invalid UTF-8 included) inside a payload string yield a problem or an
    event whose text is valid UTF-8, never an exception."""
    inner = raw.replace(b"\\", b"").replace(b'"', b"")
    inner = inner.replace(b"\n", b"")  # a raw newline ends a record: then two bad lines
    record = (b'{"v":1,"run_id":"r","seq":1,"ts":1.0,"type":"' + type_.encode() + b'","node_id":null,'
              b'"data":{"name":"' + inner + b'","stream":"stdout","text":"' + inner + b'",'
              b'"sender":"' + inner + b'"}}\n')
    decoded = decode_lines(record, "r")
    assert len(decoded.events) + len(decoded.problems) == 1
    for event in decoded.events:
        event.data_json()


# -- limits: values ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"memory_mb": 16}, "memory_mb must be at least 256"),
        ({"cpu_seconds": 0}, "cpu_seconds must be at least 1"),
        ({"open_files": 3}, "open_files must be at least 64"),
        ({"processes": 0}, "processes must be at least 1"),
        ({"output_mb": -1}, "output_mb must be at least"),
        ({"processes": True}, "processes must be a whole number"),
        ({"cpu_seconds": float("nan")}, "cpu_seconds must be a finite number"),
    ],
)
def test_bad_limits_fail_with_the_rule(kwargs: dict[str, Any], match: str) -> None:
    """A bad limit fails at construction with a message stating the rule."""
    with pytest.raises(ConfigError, match=match):
        Limits(**kwargs)


def test_limits_are_keyword_only_and_round_trip() -> None:
    """Limits are keyword-only, frozen, default safe, and survive storage as a dict."""
    with pytest.raises(TypeError):
        Limits(512)  # type: ignore[misc]
    default = RunSpec(workflow="x").limits
    assert default == Limits() and default.memory_mb == 2048 and default.processes == 64
    assert Limits.coerce(Limits(memory_mb=512).as_dict()) == Limits(memory_mb=512)
    assert RunSpec(workflow="x", limits={"cpu_seconds": 5}).limits.cpu_seconds == 5  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown limit gpu"):
        Limits.coerce({"gpu": 1})
    assert "memory unlimited" in Limits.unlimited().describe()


# -- environment -----------------------------------------------------------------------------------


def test_store_url_is_never_passed_even_if_allowed() -> None:
    """The store URL is dropped even when allow-listed, and refused as an explicit run variable."""
    base = {"ISOLANE_DB_URL": "postgresql://u:p@h/d", "PATH": "/bin", "MY_VAR": "1"}
    env = worker_environment({}, allow={"ISOLANE_DB_URL", "PATH", "MY_VAR"}, base=base)
    assert env == {"PATH": "/bin", "MY_VAR": "1"}
    with pytest.raises(ConfigError, match="never receive the store's URL"):
        worker_environment({"ISOLANE_DB_URL": "x"}, base=base)


async def test_run_allow_list_replaces_the_executors(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``RunSpec(env_allow=...)`` chooses what this run inherits from the parent."""
    monkeypatch.setenv("ISOLANE_EXTRA_SETTING", "visible")
    async with Executor(home=home) as ex:
        default = await ex.run(RunSpec(workflow="tests.flows.hostile:reads_environment"))
        chosen = await ex.run(RunSpec(workflow="tests.flows.hostile:reads_environment",
                                      env_allow={"ISOLANE_EXTRA_SETTING"}))
    assert "ISOLANE_EXTRA_SETTING" not in default.result and "PATH" in default.result
    assert chosen.result["ISOLANE_EXTRA_SETTING"] == "visible" and "PATH" not in chosen.result


# -- secrets ---------------------------------------------------------------------------------------


def test_redactor_keeps_json_valid_and_spares_ordinary_text() -> None:
    """Keys, bearer tokens and configured values are replaced; look-alikes and JSON stay intact."""
    redact = Redactor(secret_values({"OPENAI_API_KEY": ENV_KEY, "THREADS": "12345678",
                                     "ROUTER_TOKEN": "nightly-token-123"}, ["hunter2-password"]))
    data = {
        "key": f"use {KEYS[0]} now", "escaped": f"line\n{KEYS[1]}", "env": f"[{ENV_KEY}]",
        "bearer": "Authorization: Bearer abc.def-ghi_jkl", "lower": "bearer\tabcdefghijkl",
        "configured": "pw=hunter2-password;", "task_id": "task-abcdefghijklmnopqrstuvwxyz",
        "threads": "12345678", "escape_trap": "x\nightly-token-123", KEYS[0]: "as a key",
    }
    frame = redact(encode_event("r", 1, 1.0, "custom", None, {"name": "n", **data}))
    event = orjson.loads(frame)
    out = event["data"]
    assert out["key"] == f"use {REDACTED} now" and out["escaped"] == f"line\n{REDACTED}"
    assert out["env"] == f"[{REDACTED}]" and out["configured"] == f"pw={REDACTED};"
    assert out["bearer"] == f"Authorization: Bearer {REDACTED}"
    assert out["lower"] == f"bearer\t{REDACTED}"
    assert out["task_id"] == data["task_id"] and out["threads"] == "12345678"
    assert out["escape_trap"] == data["escape_trap"]  # "\n" + "ightly…" is not the secret
    assert REDACTED in out and KEYS[0] not in frame.decode()


@pytest.mark.parametrize("text", [
    f"{KEYS[0]}", f"Authorization: Bearer {'t' * 20}", f"BeArEr\t{'t' * 20}", "hunter2-password",
    "hunter2password",
], ids=["key", "bearer", "mixed-case-bearer-tab", "configured", "configured-no-dash"])
def test_each_secret_is_caught_alone_in_a_record_of_digits(text: str) -> None:
    """The redactor's screen (a character test before each search) lets no secret through when
    it is the only thing in a record, around numbers only."""
    redact = Redactor(["hunter2-password", "hunter2password"])
    frame = redact(encode_event("0123456789abcdef", 12345, 1733480000.25, "custom", "step_1",
                                {"name": "n", "i": 1234567890, "v": text}))
    assert orjson.loads(frame)["data"]["v"] != text
    assert REDACTED in orjson.loads(frame)["data"]["v"]


def test_short_configured_secrets_are_refused() -> None:
    """A configured secret under 8 characters is refused: it would rewrite ordinary words."""
    with pytest.raises(ConfigError, match="at least 8 characters"):
        RunSpec(workflow="x", secrets=["abc"])


# -- paths -----------------------------------------------------------------------------------------


async def test_links_planted_by_a_workflow_are_not_followed(home: Path) -> None:
    """A workflow links /etc into its directory: resolving, opening and walking refuse to follow."""
    async with Executor(home=home) as ex:
        run = await ex.submit(RunSpec(workflow="tests.flows.hostile:links_etc"))
        outcome = await run.wait()
        work_dir = Path(ex.store.get_run(run.run_id).work_dir)
    assert outcome.status == "completed"
    (work_dir / "notes.txt").write_text("mine")
    for path in ("etc/passwd", "passwd", "etc"):
        with pytest.raises(PathEscape, match="symbolic link"):
            resolve_inside(work_dir, path)
        with pytest.raises(PathEscape, match="symbolic link"):
            os.close(open_inside(work_dir, path))
    assert list(walk_files(work_dir)) == [Path("notes.txt")]


def test_resolve_inside_rules(tmp_path: Path) -> None:
    """``..``, absolute paths elsewhere and hard links are refused; plain paths resolve inside."""
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.txt").write_text("a")
    assert resolve_inside(root, "sub/a.txt") == (root / "sub" / "a.txt").resolve()
    assert resolve_inside(root, root / "sub" / "new.txt").name == "new.txt"
    with pytest.raises(PathEscape, match=r"contains '\.\.'"):
        resolve_inside(root, "sub/../../x")
    with pytest.raises(PathEscape, match="is outside"):
        resolve_inside(root, "/etc/passwd")
    os.link(root / "sub" / "a.txt", root / "hard.txt")
    with pytest.raises(PathEscape, match="hard links"):
        resolve_inside(root, "hard.txt")
    with pytest.raises(FileNotFoundError):
        resolve_inside(root, "missing.txt", must_exist=True)
    fd = open_inside(root, "sub/new.txt", os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    os.close(fd)
    assert (root / "sub" / "new.txt").exists()
