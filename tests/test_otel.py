"""OpenTelemetry export: a run as one trace, read back from a real Arize Phoenix server.

Phoenix is installed as the separate server it is, in its own virtualenv under the user's cache
(``$ISOLANE_PHOENIX_VENV``, default ``~/.cache/isolane/phoenix-venv``), made once by the first
run of these tests; it is not one of isolane's extras (beside isolane's dependencies pip picks a
Phoenix that fails on Python 3.11). Without it the Phoenix tests skip, unless
``ISOLANE_REQUIRE_PHOENIX=1`` makes that a failure. Runs are planning-control on the offline
FakeLLM script, in real workers; the CLI runs as a subprocess.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from isolane import Executor, RunSpec, SyncExecutor
from isolane.errors import ConfigError
from isolane.telemetry import ids
from isolane.telemetry.live import SPAN_EVENT_TYPES, TelemetryExporter, start_live_export
from isolane.telemetry.otlp import traces_url
from isolane.telemetry.spans import SpanSpec, spans_of
from isolane.tracking.store import Store

TASK = "Add up the integers from 1 to 100."
REQUIRE_ENV = "ISOLANE_REQUIRE_PHOENIX"
PHOENIX_REQUIREMENT = "arize-phoenix>=20.26"

pytestmark = pytest.mark.timeout(1500)  # the first run installs Phoenix (minutes)


# -- runs ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Runs:
    home: Path
    planning: str
    marker: str


def _offline(workflow: str) -> RunSpec:
    return RunSpec(workflow=workflow, task=TASK, config={"llm": "offline"})


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    """A planning-control run and a one-shot run (the marker that shows Phoenix took a later
    request), on the offline FakeLLM script, in one home."""
    home = tmp_path_factory.mktemp("otel-runs")
    with SyncExecutor(home=home) as ex:
        planning = ex.run(_offline("planning-control"))
        marker = ex.run(_offline("one-shot"))
    assert planning.status == "completed", planning.error
    assert marker.status == "completed", marker.error
    return Runs(home, planning.run_id, marker.run_id)


def _stored(home: Path, run_id: str) -> tuple[Any, list[Any], list[Any]]:
    with Store.open(home=home) as store:
        return store.get_run(run_id), store.events(run_id), store.dag(run_id)[0]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    return subprocess.run([sys.executable, "-m", "isolane.cli", *args], capture_output=True, text=True,
                          env=env, timeout=120, check=False)


# -- the translation (no collector) ----------------------------------------------------------------


def test_spans_follow_the_run(runs: Runs) -> None:
    """spans_of gives one span per LLM call, tool call, code execution, DAG node, attempt and run,
    nested as the DAG nests, with the events' real times and ids derived from the run."""
    row, events, nodes = _stored(runs.home, runs.planning)
    specs = spans_of(row, events)
    count = collections.Counter(e.type for e in events)
    kinds = collections.Counter(s.kind for s in specs)
    assert kinds == {"run": 1, "attempt": count["run_started"], "node": len(nodes), "llm": count["llm_call"],
                     "tool": count["tool_call"], "code": count["code_execution"]}
    assert all(s.end is not None and s.end >= s.start for s in specs)
    assert spans_of(row, events) == specs, "the translation is deterministic"
    assert {s.trace_id for s in specs} == {ids.trace_id(row.id)}
    assert len({s.span_id for s in specs}) == len(specs)
    by_id = {s.span_id: s for s in specs}
    for node in nodes:
        span = by_id[ids.span_id(row.id, ids.node_key(node.node_id))]
        parent = by_id[span.parent_span_id]  # type: ignore[index]
        if node.parent_node_id is None:
            assert parent.kind == "attempt"
        else:
            assert parent.attributes["isolane.node.id"] == node.parent_node_id
    for event in events:
        if event.type in ("llm_call", "code_execution"):
            span = by_id[ids.span_id(row.id, ids.seq_key(event.seq))]
            assert span.end == event.ts
            assert span.start == pytest.approx(event.ts - event.data["duration_s"])
            assert event.data["duration_s"] > 0
            assert by_id[span.parent_span_id].attributes["isolane.node.id"] == event.node_id  # type: ignore[index]
    results = {e.data["call_id"]: e.ts for e in events if e.type == "tool_result"}
    for event in events:
        if event.type == "tool_call":
            span = by_id[ids.span_id(row.id, ids.seq_key(event.seq))]
            assert (span.start, span.end) == (event.ts, results[event.data["call_id"]])
            assert span.attributes["gen_ai.tool.name"] == event.data["tool"]


def test_a_branch_links_to_its_parent_trace(runs: Runs) -> None:
    """A branch's root span links to its branch point's span in the parent run's trace."""
    row, events, _ = _stored(runs.home, runs.planning)
    branch = dataclasses.replace(row, id="branch-of-planning", parent_run_id=row.id, branch_point_node="step_2")
    (root,) = [s for s in spans_of(branch, events) if s.kind == "run"]
    (link,) = root.links
    assert (link.trace_id, link.span_id) == (ids.trace_id(row.id), ids.span_id(row.id, ids.node_key("step_2")))
    parent_specs = {s.span_id for s in spans_of(row, events)}
    assert link.span_id in parent_specs
    assert root.trace_id != link.trace_id


def test_a_live_run_exports_only_ended_spans(runs: Runs) -> None:
    """Halfway through a run, the run, its attempt and running nodes have no end yet."""
    row, events, _ = _stored(runs.home, runs.planning)
    running = dataclasses.replace(row, status="running", ended_at=None)
    half = [e for e in events if e.seq <= len(events) // 2]
    specs = spans_of(running, half)
    open_kinds = {s.kind for s in specs if s.end is None}
    assert {"run", "attempt", "node"} <= open_kinds
    assert all(s.end is not None for s in specs if s.kind == "llm")


def test_telemetry_loads_no_opentelemetry_until_it_sends() -> None:
    """Importing isolane, isolane.telemetry and the translation loads none of OpenTelemetry."""
    code = ("import sys, isolane, isolane.telemetry, isolane.telemetry.spans, isolane.cli.app\n"
            "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    assert done.stdout.strip() == "[]"


def test_bad_endpoints_are_refused_with_the_fix() -> None:
    """An OTLP URL must be http(s) with a host; a base URL gets /v1/traces."""
    assert traces_url("http://127.0.0.1:6006") == "http://127.0.0.1:6006/v1/traces"
    assert traces_url("https://c.example/otlp/v1/traces") == "https://c.example/otlp/v1/traces"
    with pytest.raises(ConfigError, match="not an http"):
        traces_url("127.0.0.1:4318")


# -- Phoenix ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Phoenix:
    url: str

    def spans(self, project: str) -> list[dict[str, Any]]:
        """Every span of ``project`` (none if Phoenix does not know the project yet)."""
        found: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 1000, **({"cursor": cursor} if cursor else {})}
            answer = httpx.get(f"{self.url}/v1/projects/{project}/spans", params=params, timeout=30)
            if answer.status_code == 404:
                return []
            answer.raise_for_status()
            body = answer.json()
            found.extend(body["data"])
            cursor = body.get("next_cursor")
            if not cursor:
                return found

    def wait_for(self, project: str, trace_id: int, count: int) -> list[dict[str, Any]]:
        """The spans of ``project`` once trace ``trace_id`` has ``count`` of them (Phoenix inserts
        what it receives in the background)."""
        want = f"{trace_id:032x}"
        deadline = time.monotonic() + 60
        while True:
            spans = self.spans(project)
            have = sum(1 for s in spans if s["context"]["trace_id"] == want)
            if have >= count or time.monotonic() > deadline:
                assert have == count, f"Phoenix holds {have} spans of trace {want}, expected {count}"
                return spans
            time.sleep(0.25)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _phoenix_venv() -> Path | str:
    """Phoenix's own virtualenv (made once), or the reason it cannot be had."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    venv = Path(os.environ.get("ISOLANE_PHOENIX_VENV") or cache / "isolane" / "phoenix-venv")
    ready = venv / ".isolane-ready"
    if ready.is_file():
        return venv
    subprocess.run(["rm", "-rf", str(venv)], check=True)
    steps = [[sys.executable, "-m", "venv", str(venv)],
             [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", PHOENIX_REQUIREMENT]]
    for step in steps:
        try:
            done = subprocess.run(step, capture_output=True, text=True, timeout=1200, check=False)
        except subprocess.TimeoutExpired:
            return f"`{' '.join(step)}` took more than 20 minutes"
        if done.returncode != 0:
            return f"`{' '.join(step)}` failed: {(done.stderr or done.stdout)[-800:]}"
    ready.write_text(PHOENIX_REQUIREMENT + "\n")
    return venv


@pytest.fixture(scope="module")
def phoenix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Phoenix]:
    """`phoenix serve` on 127.0.0.1, its own ports and a temporary working directory."""
    venv = _phoenix_venv()
    if isinstance(venv, str):
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"Arize Phoenix could not be installed ({REQUIRE_ENV}=1): {venv}")
        pytest.skip(f"Arize Phoenix could not be installed in its own virtualenv: {venv}")
    work = tmp_path_factory.mktemp("phoenix")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "OTEL_", "PHOENIX_"))}
    env.update(PHOENIX_WORKING_DIR=str(work), PHOENIX_HOST="127.0.0.1", PHOENIX_PORT=str(port),
               PHOENIX_GRPC_PORT=str(_free_port()), PHOENIX_TELEMETRY_ENABLED="false")
    log = (work / "phoenix.log").open("wb")
    proc = subprocess.Popen([str(venv / "bin" / "phoenix"), "serve"], env=env, cwd=work, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"phoenix serve exited with {proc.returncode}: "
                            f"{(work / 'phoenix.log').read_text(errors='replace')[-2000:]}")
            try:
                if httpx.get(f"{url}/v1/projects", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "phoenix serve did not answer within 120 s"
            time.sleep(0.25)
        yield Phoenix(url)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def _check_against_the_store(spans: list[dict[str, Any]], home: Path, run_id: str) -> None:
    """Kinds, tokens and parent links of a run's spans in Phoenix, against what the store holds."""
    row, events, nodes = _stored(home, run_id)
    want = f"{ids.trace_id(run_id):032x}"
    mine = [s for s in spans if s["context"]["trace_id"] == want]
    count = collections.Counter(e.type for e in events)
    agents = sum(1 for n in nodes if n.node_type == "agent")
    assert collections.Counter(s["span_kind"] for s in mine) == {
        "LLM": count["llm_call"], "TOOL": count["tool_call"] + count["code_execution"], "AGENT": agents,
        "CHAIN": 1 + count["run_started"] + len(nodes) - agents}
    cost = json.loads(_cli("cost", run_id, "--home", str(home), "--json").stdout)["total"]
    llm = [s["attributes"] for s in mine if s["span_kind"] == "LLM"]
    assert sum(a["llm.token_count.prompt"] for a in llm) == cost["prompt_tokens"] > 0
    assert sum(a["llm.token_count.completion"] for a in llm) == cost["completion_tokens"] > 0
    assert sum(a["gen_ai.usage.input_tokens"] for a in llm) == cost["prompt_tokens"]
    by_id = {s["context"]["span_id"]: s for s in mine}
    (root,) = [s for s in mine if s["parent_id"] is None]
    assert root["attributes"]["isolane.run.id"] == row.id
    dag_parent = {n.node_id: n.parent_node_id for n in nodes}
    for span in mine:
        attrs = span["attributes"]
        kind = attrs["isolane.span.type"]
        parent = by_id.get(span["parent_id"]) if span["parent_id"] else None
        if kind == "attempt":
            assert parent is root
        elif kind == "node":
            assert parent is not None
            expected = dag_parent[attrs["isolane.node.id"]]
            if expected is None:
                assert parent["attributes"]["isolane.span.type"] == "attempt"
            else:
                assert parent["attributes"]["isolane.node.id"] == expected
        elif kind in ("llm", "tool", "code"):
            assert parent is not None and parent["attributes"]["isolane.span.type"] == "node"
            assert parent["attributes"]["isolane.node.id"] == attrs["isolane.node.id"]


def _export(phoenix: Phoenix, home: Path, run_id: str, project: str) -> dict[str, Any]:
    done = _cli("export", run_id, "--otlp", phoenix.url, "--project", project, "--home", str(home), "--json")
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _settled_twice(phoenix: Phoenix, project: str, home: Path, run_id: str, marker: str, count: int) -> None:
    """Export ``run_id`` again, then ``marker``: once the marker is in, the repeat was taken too,
    and it must have added nothing."""
    before = sorted(s["context"]["span_id"] for s in phoenix.spans(project))
    _export(phoenix, home, run_id, project)
    sent = _export(phoenix, home, marker, project)
    after = phoenix.wait_for(project, ids.trace_id(marker), sent["spans"])
    mine = [s["context"]["span_id"] for s in after if s["context"]["trace_id"] == f"{ids.trace_id(run_id):032x}"]
    assert sorted(mine) == before and len(mine) == count


def test_isolane_export_to_phoenix(phoenix: Phoenix, runs: Runs) -> None:
    """`isolane export` sends a planning-control run to Phoenix: spans by kind match its events,
    LLM tokens sum to `isolane cost`, parents follow the DAG, a second export adds no span."""
    sent = _export(phoenix, runs.home, runs.planning, "exported")
    assert sent["trace_id"] == f"{ids.trace_id(runs.planning):032x}"
    spans = phoenix.wait_for("exported", ids.trace_id(runs.planning), sent["spans"])
    _check_against_the_store(spans, runs.home, runs.planning)
    _settled_twice(phoenix, "exported", runs.home, runs.planning, runs.marker, sent["spans"])


@pytest.mark.anyio
async def test_live_export_to_phoenix(phoenix: Phoenix, tmp_path: Path) -> None:
    """The live exporter, following a run's committed events as they are stored, sends the same
    trace an export from the store would; exporting it afterwards adds nothing."""
    async with Executor(home=tmp_path) as ex:
        handle = await ex.submit(_offline("planning-control"))
        exporter = TelemetryExporter(handle.events(types=SPAN_EVENT_TYPES), run_of=ex.store.get_run,
                                     endpoint=phoenix.url, project="live", interval=0.2)
        await exporter.run()
        outcome = await handle.wait()
        marker = await ex.run(_offline("one-shot"))
    assert outcome.status == "completed", outcome.error
    row, events, _ = _stored(tmp_path, outcome.run_id)
    expected: list[SpanSpec] = spans_of(row, events)
    assert exporter.spans_sent == len(expected) and exporter.failures == 0
    spans = phoenix.wait_for("live", ids.trace_id(outcome.run_id), len(expected))
    assert {(s["context"]["span_id"], s["parent_id"], s["name"]) for s in spans} == {
        (f"{s.span_id:016x}", None if s.parent_span_id is None else f"{s.parent_span_id:016x}", s.name)
        for s in expected}
    _check_against_the_store(spans, tmp_path, outcome.run_id)
    _settled_twice(phoenix, "live", tmp_path, outcome.run_id, marker.run_id, len(expected))


@pytest.mark.anyio
async def test_start_live_export_needs_an_endpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without OTEL_EXPORTER_OTLP_ENDPOINT or an endpoint, no live exporter starts."""
    import anyio

    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    async with Executor(home=tmp_path) as ex, anyio.create_task_group() as tg:
        assert start_live_export(ex, task_group=tg) is None  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_executor_feed_exports_live(phoenix: Phoenix, tmp_path: Path) -> None:
    """start_live_export follows the executor's own feed: every run it runs lands in Phoenix."""
    import anyio

    async with Executor(home=tmp_path) as ex, anyio.create_task_group() as tg:
        exporter = start_live_export(ex, task_group=tg, endpoint=phoenix.url, project="feed")  # type: ignore[arg-type]
        assert exporter is not None
        outcome = await ex.run(_offline("planning-control"))
        row, events, _ = _stored(tmp_path, outcome.run_id)
        phoenix.wait_for("feed", ids.trace_id(outcome.run_id), len(spans_of(row, events)))
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_executor_telemetry_option_exports_every_run(phoenix: Phoenix, tmp_path: Path) -> None:
    """``Executor(telemetry=URL)`` is the one line: runs land in Phoenix's default project, and
    the executor closes once the last spans are sent."""
    async with Executor(home=tmp_path / "a", telemetry=phoenix.url) as ex:
        assert ex.telemetry is not None
        outcome = await ex.run(_offline("planning-control"))
    row, events, _ = _stored(tmp_path / "a", outcome.run_id)
    phoenix.wait_for("default", ids.trace_id(outcome.run_id), len(spans_of(row, events)))


def test_a_bad_telemetry_endpoint_fails_when_the_executor_is_made(tmp_path: Path) -> None:
    """A URL that is not http(s) is a ConfigError at construction, saying what to give."""
    with pytest.raises(ConfigError, match="not an http"):
        Executor(home=tmp_path, telemetry="localhost:4318")


def test_span_events_are_bounded(runs: Runs) -> None:
    """A run with thousands of agent messages gives spans of at most 128 events each, the rest
    counted in isolane.dropped_events; custom events (emitted by the million) are not span events."""
    import msgspec

    from isolane.schemas.envelope import Event
    from isolane.telemetry.spans import MAX_SPAN_EVENTS

    row, events, _ = _stored(runs.home, runs.planning)
    (before,) = [s for s in spans_of(row, events) if s.kind == "attempt"]
    assert "isolane.dropped_events" not in before.attributes
    last = events[-1]
    extra = [Event(run_id=row.id, seq=last.seq + i, ts=last.ts, type=kind,
                   data={"name": "tick", "sender": "user", "content": f"message {i}"})
             for i in range(1, 601) for kind in ["agent_message" if i <= 300 else "custom"]]
    specs = spans_of(row, [*events[:-1], *extra, msgspec.structs.replace(last, seq=last.seq + 601)])
    (attempt,) = [s for s in specs if s.kind == "attempt"]
    assert len(attempt.events) == MAX_SPAN_EVENTS
    assert attempt.attributes["isolane.dropped_events"] == len(before.events) + 300 - MAX_SPAN_EVENTS


def test_a_restarted_then_crashed_run_is_still_a_whole_trace(tmp_path: Path) -> None:
    """A worker that dies and is restarted gives one attempt span each, the first ending where the
    second starts; a run that crashes for good (no terminal event) still ends, as an error."""
    with SyncExecutor(home=tmp_path) as ex:
        restarted = ex.run(RunSpec(workflow="tests.flows.files:crash_after_files", max_restarts=1,
                                   restart_backoff=0.0))
        crashed = ex.run(RunSpec(workflow="tests.flows:exits"))
    assert (restarted.status, crashed.status) == ("completed", "crashed")
    row, events, _ = _stored(tmp_path, restarted.run_id)
    specs = spans_of(row, events)
    first, second = sorted((s for s in specs if s.kind == "attempt"), key=lambda s: s.start)
    starts = [e.ts for e in events if e.type == "run_started"]
    assert (first.start, first.end, second.start) == (starts[0], starts[1], starts[1])
    by_id = {s.span_id: s for s in specs}
    nodes = {s.attributes["isolane.node.id"]: by_id[s.parent_span_id] for s in specs  # type: ignore[index]
             if s.kind == "node"}
    assert nodes["step_1"] is first and nodes["step_2"] is second
    row, events, _ = _stored(tmp_path, crashed.run_id)
    specs = spans_of(row, events)
    (root,) = [s for s in specs if s.kind == "run"]
    assert root.end == row.ended_at and root.error
    assert all(s.end is not None for s in specs)


@pytest.mark.anyio
async def test_a_dead_collector_costs_spans_not_the_run(tmp_path: Path) -> None:
    """With no collector listening, the live exporter counts failed flushes and ends quietly; the
    run and every stored event are unaffected."""
    from isolane.telemetry.otlp import OtlpSink

    async with Executor(home=tmp_path) as ex:
        handle = await ex.submit(_offline("one-shot"))
        exporter = TelemetryExporter(handle.events(), run_of=ex.store.get_run,
                                     sink=OtlpSink(f"http://127.0.0.1:{_free_port()}", timeout=1), interval=0.5)
        await exporter.run()
        outcome = await handle.wait()
        stored = ex.store.count_events(outcome.run_id)
    assert outcome.status == "completed", outcome.error
    assert exporter.failures >= 1 and exporter.spans_sent == 0
    assert stored == _gapless_last_seq(tmp_path, outcome.run_id)


def _gapless_last_seq(home: Path, run_id: str) -> int:
    row, events, _ = _stored(home, run_id)
    assert [e.seq for e in events] == list(range(1, row.last_seq + 1))
    return row.last_seq
