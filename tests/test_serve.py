"""The service end to end: real uvicorn on 127.0.0.1, real WebSocket clients, real workers."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
import psutil
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Origin

import isolane.serve
from isolane.executor.hub import Batch, Hub
from isolane.schemas.envelope import decode_lines, encode_event, event_from_row
from isolane.serve import BackgroundServer
from isolane.tracking.branching import racing_group
from isolane.tracking.store import Store
from isolane.workflow import registered_workflows
from tests.cdp import Chromium
from tests.helpers import alive, serve_process

with warnings.catch_warnings():
    # Importing AG2 (through the workflow registry) can warn about optional third-party extras
    # installed in the environment; do it once here, outside every test's strict filter.
    warnings.simplefilter("ignore")
    registered_workflows()

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[BackgroundServer]:
    with BackgroundServer(executor_options={"home": tmp_path / "home"}) as srv:
        yield srv


@pytest.fixture
def client(server: BackgroundServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        yield http


_open_clients: list[httpx.Client] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _open_clients:
        _open_clients.pop().close()


def _closing(http: httpx.Client) -> httpx.Client:
    """Close ``http`` when the test ends (an open client is a ResourceWarning, an error here)."""
    _open_clients.append(http)
    return http


def _ws_url(srv_url: str, run_id: str, since: int = 0, **query: str) -> str:
    extra = "".join(f"&{k}={v}" for k, v in query.items())
    return f"{srv_url.replace('http://', 'ws://')}/ws/runs/{run_id}?since={since}{extra}"


def _submit(client: httpx.Client, workflow: str, **fields: Any) -> str:
    response = client.post("/api/runs", json={"workflow": workflow, **fields})
    assert response.status_code == 201, response.text
    run_id: str = response.json()["run_id"]
    return run_id


def _frames(ws: ClientConnection, timeout: float = 60) -> Iterator[dict[str, Any]]:
    """Every message the server sends (a frame holds one or more, one per line) until ``end``."""
    while True:
        for line in str(ws.recv(timeout=timeout)).split("\n"):
            frame: dict[str, Any] = json.loads(line)
            yield frame
            if frame.get("type") == "end":
                return


def _stored_seqs(client: httpx.Client, run_id: str) -> list[int]:
    seqs: list[int] = []
    since = 0
    while True:
        page = client.get(f"/api/runs/{run_id}/events", params={"since": since, "limit": 10_000}).json()
        seqs += [e["seq"] for e in page["events"]]
        since = page["next_since"]
        if not page["more"]:
            return seqs


def test_public_names() -> None:
    """isolane.serve exports exactly its documented names."""
    assert sorted(isolane.serve.__all__) == sorted([
        "COOKIE_NAME", "CONTROL_FRAMES", "DEFAULT_QUEUE_SIZE", "LOOPBACK_HOSTS", "STATIC_DIR",
        "TOKEN_ENV", "BackgroundServer", "GuardPolicy", "Server", "cancel_live_runs", "create_app",
        "make_server", "serve"])
    assert all(hasattr(isolane.serve, name) for name in isolane.serve.__all__)


def test_hub_builds_each_view_of_a_published_batch_once_for_every_subscriber() -> None:
    """Subscribers share one batch of stored rows, its JSON lines and its Events, each built once;
    an overflowing subscriber is marked lagged."""

    async def main() -> None:
        hub = Hub(max_events_per_subscriber=3)
        first, second = hub.subscribe("r1"), hub.subscribe("r1")
        rows = [("r1", seq, 1.0, "custom", None, '{"name":"tick"}') for seq in (1, 2)]
        events = [event_from_row(*row) for row in rows]
        hub.publish_write([("r1", rows)])
        (a,), (b,) = first.take_batches(), second.take_batches()
        assert a is b and a.rows is rows and a.lines() is b.lines() and a.events() is b.events()
        assert a.lines() == [e.to_json().decode() for e in events]
        hub.publish_write([("r1", rows)])
        taken = first.take()  # event readers are served from the same batches, decoded once
        assert taken == events and all(x is y for x, y in zip(taken, second.take(), strict=True))
        hub.publish_write([("r1", rows)])  # first now holds 2 + 2 > 3 events: dropped, told to catch up
        hub.publish_write([("r1", rows)])
        assert first.lagged and first.take_batches() == []

    anyio.run(main)


#: Payloads whose wire text must not change: unicode (BMP, astral, combining), escapes, control
#: characters, nesting, numbers at the edges of their ranges, empty containers, non-string keys.
_AWKWARD_DATA: list[dict[Any, Any]] = [
    {"name": "tick", "value": {"text": "héllo — 日本語 👋🏽 e\u0301", "q": '"quoted" \\ /'}},
    {"name": "ctl", "value": "tab\tnl\ncr\rnul\u0000bell\u0007\u001f del\u007f \u2028\u2029"},
    {"name": "nested", "value": {"a": [1, [2, [3, {"b": None, "c": [True, False]}]]], "e": {}, "f": []}},
    {"name": "numbers", "value": [0, -1, 2**63 - 1, -(2**63), 1.5, -0.0, 1e-7, 1e16, 1.7976931348623157e308,
                                  5e-324, 0.1 + 0.2, 123456789.123456789]},
    {"name": "keys", "value": {1: "int key", "ключ": "cyrillic key", "": "empty key"}},
    {"name": "", "value": None, "extra": {"🔑": ["ü" * 3]}},
]


def test_websocket_lines_from_stored_rows_equal_the_events_encoded_the_old_way() -> None:
    """A batch's wire text, spliced from the stored data text, is byte for byte what encoding
    each decoded Event gave before (store rows built exactly as the parent builds them)."""
    buffered = [(seq, 1_712_345_678.123456 + seq / 7, "custom", None if seq % 2 else f"nöde-{seq}", data)
                for seq, data in enumerate(_AWKWARD_DATA, start=1)]
    records = b"".join(encode_event("r1", *event) + b"\n" for event in buffered)  # a worker's
    decoded = decode_lines(records, "r1")
    assert not decoded.problems
    rows = [("r1", e.seq, e.ts, e.type, e.node_id, bytes(e.data).decode()) for e in decoded.events]
    batch = Batch(rows)
    old = [event_from_row(*row).to_json().decode() for row in rows]  # writer, then Event.to_json
    assert batch.lines() == old
    assert "\n".join(batch.lines()).count("\n") == len(rows) - 1  # one message per line
    assert [orjson.loads(line) for line in batch.lines()] == [orjson.loads(e.to_json()) for e in batch.events()]
    # A page read back from the store (already decoded) encodes the same way.
    assert Batch.of_events(batch.events()).lines() == old


def test_websocket_wire_text_is_unchanged_live_and_replayed(server: BackgroundServer,
                                                            client: httpx.Client) -> None:
    """Live and replayed socket messages are exactly the stored events' envelopes, unicode kept."""
    prompt = "Résumé? 日本語 👋🏽 \"quoted\" \\ tab\t"
    run_id = _submit(client, "tests.flows.human:asks", config={"prompt": prompt})

    def lines(since: int = 0, *, answer: bool = False) -> list[str]:
        out: list[str] = []
        with connect(_ws_url(server.url, run_id, since=since)) as ws:
            while not out or not out[-1].startswith('{"type":"end"'):
                for line in str(ws.recv(timeout=60)).split("\n"):
                    out.append(line)
                    if answer and '"human_input_request"' in line:
                        ws.send(json.dumps({"op": "answer", "request_id": "review:1",
                                            "text": "ship it ✓ — ünïcode 🚢"}))
        return [line for line in out if line.startswith('{"v":')]  # events, not control messages

    live = lines(answer=True)
    stored = server.executor.store.events(run_id)  # type: ignore[union-attr]
    assert live == [e.to_json().decode() for e in stored]
    assert any(prompt in json.loads(line)["data"].get("prompt", "") for line in live)
    assert lines() == live
    assert lines(since=2) == live[2:]


def test_reconnect_with_since_receives_every_event_exactly_once(
        server: BackgroundServer, client: httpx.Client) -> None:
    """Connect, drop mid-run, reconnect with since=<last seq>: every event once, in order."""
    run_id = _submit(client, "tests.flows.human:ticks",
                     config={"n": 3000, "bursts": 30, "pause": 0.01, "gate_at": 10})
    seqs: list[int] = []
    with connect(_ws_url(server.url, run_id)) as ws:
        for frame in _frames(ws):
            assert "seq" in frame, frame
            seqs.append(frame["seq"])
            if frame["type"] == "human_input_request":
                break  # drop the connection mid-run (the run waits for a person here)
    assert client.get(f"/api/runs/{run_id}").json()["run"]["status"] == "running"
    # While nobody listens the run goes on: answered, it streams the rest.
    assert client.post(f"/api/runs/{run_id}/answer",
                       json={"request_id": "run:1", "text": "go"}).status_code == 202
    with connect(_ws_url(server.url, run_id, since=seqs[-1])) as ws:
        frames = list(_frames(ws))
    end = frames.pop()
    assert end["type"] == "end" and end["status"] == "completed"
    seqs += [f["seq"] for f in frames if "seq" in f]
    assert seqs == list(range(1, end["last_seq"] + 1))
    assert seqs == _stored_seqs(client, run_id)


def test_many_clients_joining_a_live_run_each_get_every_event_in_order(
        server: BackgroundServer, client: httpx.Client) -> None:
    """Clients that join while events are committing see no gap at the replay/live seam."""
    run_id = _submit(client, "tests.flows.human:ticks", config={"n": 3000, "bursts": 60, "pause": 0.02})

    def follow(results: list[list[int]], join_after: int) -> None:
        with connect(_ws_url(server.url, run_id)) as ws:  # wait until the stream is that far
            next(f for f in _frames(ws) if f.get("seq", 0) >= join_after or f.get("type") == "end")
        with connect(_ws_url(server.url, run_id)) as ws:  # then join: replay + live, mid-stream
            results.append([f["seq"] for f in _frames(ws) if "seq" in f])

    results: list[list[int]] = []
    threads = [threading.Thread(target=follow, args=(results, 120 * i)) for i in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    expected = _stored_seqs(client, run_id)
    assert len(results) == 24 and expected == list(range(1, len(expected) + 1))
    assert all(seqs == expected for seqs in results)


def test_slow_client_is_told_it_lagged_and_catches_up_from_the_store(tmp_path: Path) -> None:
    """A client that stops reading overflows its bounded queue, gets 'lagged', then the rest in order."""
    with BackgroundServer(executor_options={"home": tmp_path / "home"}, client_queue=8) as srv:
        client = _closing(httpx.Client(base_url=srv.url, timeout=30))
        run_id = _submit(client, "tests.flows.human:ticks",
                         config={"n": 6000, "bursts": 6, "pause": 0.0, "pad": 1000})
        sock = socket.create_connection(("127.0.0.1", int(srv.url.rsplit(":", 1)[1])))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        with connect(_ws_url(srv.url, run_id), sock=sock, max_queue=1, max_size=None) as ws:
            stream = _frames(ws)
            first = next(stream)
            # Read nothing more until the whole run is stored: the server must not wait for us.
            outcome = srv.call(srv.executor.get(run_id).wait)  # type: ignore[union-attr]
            assert outcome.status == "completed"
            frames = [first, *stream]
    end = frames.pop()
    lagged = [f for f in frames if f.get("type") == "lagged"]
    seqs = [f["seq"] for f in frames if "seq" in f]
    assert lagged, "the client was never told it lagged"
    assert seqs == list(range(1, end["last_seq"] + 1))
    for i, frame in enumerate(frames):
        if frame.get("type") == "lagged":  # says exactly where the catch-up starts
            assert frames[i - 1]["seq"] == frame["last_seq"] and frames[i + 1]["seq"] == frame["last_seq"] + 1


def test_answer_over_the_websocket_reaches_the_workflow(server: BackgroundServer,
                                                       client: httpx.Client) -> None:
    """A human_input_request seen on the socket is answered on the socket; the run completes."""
    run_id = _submit(client, "tests.flows.human:asks")
    replies: list[dict[str, Any]] = []
    with connect(_ws_url(server.url, run_id)) as ws:
        for frame in _frames(ws):
            if frame.get("type") == "human_input_request":
                (pending,) = client.get(f"/api/runs/{run_id}/requests").json()["pending_requests"]
                assert pending["request_id"] == frame["data"]["request_id"] == "review:1"
                ws.send(json.dumps({"op": "answer", "request_id": "nope", "text": "x"}))
                ws.send(json.dumps({"op": "answer", "request_id": "review:1", "text": "ship it"}))
            elif frame.get("type", "").startswith("answer_"):
                replies.append(frame)
    assert [r["type"] for r in replies] == ["answer_refused", "answer_ok"]
    assert "no pending human-input request 'nope'" in replies[0]["error"]
    run = client.get(f"/api/runs/{run_id}").json()["run"]
    assert run["status"] == "completed" and run["result"] == {"answer": "ship it"}


def test_rest_routes(server: BackgroundServer, client: httpx.Client) -> None:
    """Submit, list, show, events, DAG, cost, files, cancel, branch; clear errors for bad input."""
    assert client.get("/api/runs/nope1234").status_code == 404
    bad = client.post("/api/runs", json={"workflow": "tests.flows.human:asks", "colour": "red"})
    assert bad.status_code == 400 and "unknown field 'colour'" in bad.json()["error"]
    assert client.post("/api/runs", content=b"{}", headers={"content-type": "text/plain"}).status_code == 400
    missing = client.post("/api/runs", json={"workflow": "no.such.module:main"})
    assert missing.status_code == 400 and "cannot import" in missing.json()["error"]

    run_id = _submit(client, "tests.flows:sleeps", config={"seconds": 60}, name="sleeper")
    with connect(_ws_url(server.url, run_id)) as ws:
        next(f for f in _frames(ws) if f.get("type") == "custom")
        listed = client.get("/api/runs").json()["runs"]
        assert [(r["id"], r["name"], r["live"]) for r in listed] == [(run_id, "sleeper", True)]
        cancel = client.post(f"/api/runs/{run_id}/cancel")
        assert cancel.status_code == 202
        end = list(_frames(ws))[-1]
    assert end["status"] == "cancelled"
    assert client.post(f"/api/runs/{run_id}/cancel").status_code == 409
    assert client.post(f"/api/runs/{run_id}/answer", json={"request_id": "x", "text": "y"}).status_code == 409
    assert client.post(f"/api/runs/{run_id}/race", json={}).status_code == 400
    assert client.post(f"/api/runs/{run_id}/branch", json={}).status_code == 400

    done = _submit(client, "tests.flows:ok", task="hi")
    with connect(_ws_url(server.url, done)) as ws:
        assert list(_frames(ws))[-1]["status"] == "completed"
    show = client.get(f"/api/runs/{done[:8]}").json()
    assert show["run"]["id"] == done and show["pending_requests"] == []
    dag = client.get(f"/api/runs/{done}/dag").json()
    assert {(n["node_id"], n["status"]) for n in dag["nodes"]} == {("step_1", "completed"), ("step_1/sub", "completed")}
    page = client.get(f"/api/runs/{done}/events", params={"since": 2, "limit": 3}).json()
    assert [e["seq"] for e in page["events"]] == [3, 4, 5] and page["more"] and page["next_since"] == 5
    assert client.get(f"/api/runs/{done}/events", params={"since": "x"}).status_code == 400
    assert client.get(f"/api/runs/{done}/cost").json()["calls"] == 0
    assert client.get(f"/api/runs/{done}/files").json()["files"] == []
    branched = client.post(f"/api/runs/{done}/branch", json={"from_node": "step_1", "name": "again"})
    assert branched.status_code == 201, branched.text
    child = branched.json()["run_id"]
    with connect(_ws_url(server.url, child)) as ws:
        assert list(_frames(ws))[-1]["status"] == "completed"
    assert client.get(f"/api/runs/{child}").json()["run"]["parent_run_id"] == done
    page_html = client.get("/")
    assert page_html.status_code == 200 and "cytoscape.min.js" in page_html.text
    assert client.get("/static/vendor/cytoscape.min.js").status_code == 200


def test_race_answers_at_once_and_the_verdict_is_settled_in_the_background(tmp_path: Path) -> None:
    """POST race is 202 with the group and racers while they run; the first to complete wins, the other is cancelled."""
    home = tmp_path / "home"
    with BackgroundServer(executor_options={"home": home, "max_workers": 3}) as srv:
        client = _closing(httpx.Client(base_url=srv.url, timeout=30))
        parent = _submit(client, "tests.flows:race_flow", config={"delay": 0.0})
        with connect(_ws_url(srv.url, parent)) as ws:
            assert list(_frames(ws))[-1]["status"] == "completed"
        started = client.post(f"/api/runs/{parent[:8]}/race", json={
            "from_node": "work", "variants": [{"delay": 60}, {"delay": 0.2}], "timeout": 120})
        assert started.status_code == 202, started.text
        race = started.json()
        assert (race["parent_run_id"], race["from_node"], race["strategy"], race["status"]) == (
            parent, "work", "first_complete", "racing")
        slow, fast = race["run_ids"]
        runs = {r["id"]: r for r in client.get("/api/runs").json()["runs"]}
        assert runs[slow]["parent_run_id"] == runs[fast]["parent_run_id"] == parent
        assert runs[slow]["live"], "the answer waited for the race instead of starting it"
        ends: dict[str, str] = {}
        for run_id in (fast, slow):
            with connect(_ws_url(srv.url, run_id)) as ws:
                ends[run_id] = list(_frames(ws))[-1]["status"]
        assert ends == {fast: "completed", slow: "cancelled"}
        slow_pid = client.get(f"/api/runs/{slow}").json()["run"]["worker_pid"]
        assert slow_pid is None or not alive(slow_pid)

        verdict = client.get(f"/api/races/{race['racing_group_id']}")
        assert verdict.status_code == 200, verdict.text
        assert verdict.json()["parent_run_id"] == parent
        assert {r["run_id"] for r in verdict.json()["racers"]} == {slow, fast}
        missing = client.get("/api/races/nope")
        assert missing.status_code == 404 and "no race 'nope'" in missing.json()["error"]

        scored = client.post(f"/api/runs/{parent}/race", json={
            "from_node": "work", "strategy": "best_score", "scorer": "tests.flows:score_quality",
            "variants": [{"quality": 1.0}, {"quality": 9.0, "delay": 0.3}]})
        assert scored.status_code == 202, scored.text
        for run_id in scored.json()["run_ids"]:
            with connect(_ws_url(srv.url, run_id)) as ws:
                assert list(_frames(ws))[-1]["status"] == "completed"
        # The scorer runs in a scoring worker after the racers end; stopping the server would
        # cancel it, so wait for the verdict here.
        deadline = time.monotonic() + 60
        while client.get(f"/api/races/{scored.json()['racing_group_id']}").json()["status"] == "running":
            assert time.monotonic() < deadline, "the best_score verdict never came"
            time.sleep(0.05)
    # The verdicts are settled by tasks of the executor's task group, which closing it awaits.
    with Store.open(None, home=home) as store:
        first = racing_group(store, race["racing_group_id"])
        assert (first["status"], first["winner_run_id"]) == ("finished", fast)
        assert (store.get_run(fast).status, store.get_run(slow).status) == ("won", "lost")
        best = racing_group(store, scored.json()["racing_group_id"])
        assert best["winner_run_id"] == scored.json()["run_ids"][1]


#: Bad race requests on a completed ``race_flow`` run: (body, status, what the error says).
_BAD_RACES: list[tuple[dict[str, Any], int, str]] = [
    ({}, 400, "'from_node' is required"),
    ({"from_node": "work"}, 400, "'variants' is required: a list of at least two objects"),
    ({"from_node": "work", "variants": [{}]}, 400, "at least two"),
    ({"from_node": "work", "variants": [{}, 3]}, 400, "each variant must be a JSON object"),
    ({"from_node": "work", "variants": [{}] * 33}, 400, "at most 32 variants"),
    ({"from_node": "work", "variants": [{}, {}], "strategy": "fastest"}, 400,
     "unknown strategy 'fastest'; use one of best_score, first_complete"),
    ({"from_node": "work", "variants": [{}, {}], "strategy": "best_score"}, 400, "needs a scorer"),
    ({"from_node": "work", "variants": [{}, {}], "strategy": "best_score", "scorer": "no.such.mod:f"},
     400, "cannot load scorer 'no.such.mod:f'"),
    ({"from_node": "work", "variants": [{}, {}], "budget_usd": 0}, 400, "budget_usd must be positive"),
    ({"from_node": "work", "variants": [{}, {}], "timeout": -1}, 400, "timeout must be positive"),
    ({"from_node": "work", "variants": [{}, {}], "timeout": "soon"}, 400, "field 'timeout' has the wrong type"),
    ({"from_node": "work", "variants": [{}, {}], "colour": "red"}, 400, "unknown field 'colour'"),
    ({"from_node": "step_9", "variants": [{}, {}]}, 400, "never ran in run"),
]


def test_race_refuses_bad_requests_with_the_rule_and_starts_nothing(
        server: BackgroundServer, client: httpx.Client) -> None:
    """Each bad race body gets its 4xx and a message saying what to send; no racer starts."""
    parent = _submit(client, "tests.flows:race_flow")
    with connect(_ws_url(server.url, parent)) as ws:
        assert list(_frames(ws))[-1]["status"] == "completed"
    for body, status, message in _BAD_RACES:
        response = client.post(f"/api/runs/{parent}/race", json=body)
        assert (response.status_code, message in response.json()["error"]) == (status, True), (
            body, response.text)
    unknown = client.post("/api/runs/0000ffff/race", json={"from_node": "work", "variants": [{}, {}]})
    assert unknown.status_code == 404 and "0000ffff" in unknown.json()["error"]
    text = client.post(f"/api/runs/{parent}/race", content=b"{}", headers={"content-type": "text/plain"})
    assert text.status_code == 400 and "Content-Type: application/json" in text.json()["error"]
    assert [r["id"] for r in client.get("/api/runs").json()["runs"]] == [parent]


def test_token_guards_every_route_and_socket(tmp_path: Path) -> None:
    """With a token, requests and sockets without it are refused; header, cookie or ?token= pass."""
    with BackgroundServer(executor_options={"home": tmp_path / "home"}, token="s3cret") as srv:
        anonymous = _closing(httpx.Client(base_url=srv.url, timeout=30))
        refused = anonymous.get("/api/runs")
        assert refused.status_code == 401 and "Authorization: Bearer" in refused.json()["error"]
        assert anonymous.get("/").status_code == 401
        assert anonymous.get("/static/app.js").status_code == 401
        authed = _closing(httpx.Client(base_url=srv.url, timeout=30, headers={"authorization": "Bearer s3cret"}))
        run_id = _submit(authed, "tests.flows:ok")
        with pytest.raises(InvalidStatus) as info, connect(_ws_url(srv.url, run_id)):
            pass
        assert info.value.response.status_code == 403
        with connect(_ws_url(srv.url, run_id, token="s3cret")) as ws:
            assert list(_frames(ws))[-1]["status"] == "completed"
        page = anonymous.get("/", params={"token": "s3cret"})
        assert page.status_code == 200 and "HttpOnly" in page.headers["set-cookie"]
        assert anonymous.get("/api/runs").status_code == 200  # the cookie from the page
        assert httpx.get(f"{srv.url}/api/runs", headers={"authorization": "Bearer wrong"}).status_code == 401


def test_origin_host_and_workflow_allow_lists(tmp_path: Path) -> None:
    """Sockets and writes from other origins, foreign Host headers and unlisted workflows are refused."""
    with BackgroundServer(executor_options={"home": tmp_path / "home"},
                          allowed_origins=["http://app.example:3000"], workflows=["tests.flows:ok"]) as srv:
        client = _closing(httpx.Client(base_url=srv.url, timeout=30))
        run_id = _submit(client, "tests.flows:ok")
        other = client.post("/api/runs", json={"workflow": "tests.flows:sleeps"})
        assert other.status_code == 400 and "may not be submitted here" in other.json()["error"]
        with pytest.raises(InvalidStatus), \
                connect(_ws_url(srv.url, run_id), origin=Origin("http://evil.example")):
            pass
        for origin in (srv.url, "http://app.example:3000"):
            with connect(_ws_url(srv.url, run_id), origin=Origin(origin)) as ws:
                assert list(_frames(ws))[-1]["type"] == "end"
        # A scorer is imported in the service's process: the allow-list covers it too.
        scored = client.post(f"/api/runs/{run_id}/race", json={
            "from_node": "step_1", "variants": [{}, {}], "strategy": "best_score",
            "scorer": "tests.flows:score_quality"})
        assert scored.status_code == 400 and "may not be used here" in scored.json()["error"]
        evil_post = client.post("/api/runs", json={"workflow": "tests.flows:ok"},
                                headers={"origin": "http://evil.example"})
        assert evil_post.status_code == 403
        rebinding = client.get("/api/runs", headers={"host": "attacker.example:80"})
        assert rebinding.status_code == 400 and "not served here" in rebinding.json()["error"]


# -- a parent restarted while a question is pending -------------------------------------------------


def test_parent_restarted_while_a_question_is_pending_re_asks_it(tmp_path: Path) -> None:
    """The parent dies with a question pending; a new parent still lists it, resumes, re-asks; the run completes."""
    home = tmp_path / "home"
    with serve_process(home) as (first, url):
        client = _closing(httpx.Client(base_url=url, timeout=30))
        run_id = _submit(client, "tests.flows.human:asks")
        with connect(_ws_url(url, run_id)) as ws:
            asked = next(f for f in _frames(ws) if f.get("type") == "human_input_request")
        worker_pid = client.get(f"/api/runs/{run_id}").json()["run"]["worker_pid"]
        first.kill()  # SIGKILL: no clean-up of any kind
        first.wait(10)
    # Nobody can answer the orphaned worker: it stops asking and leaves the request in its spool.
    with contextlib.suppress(psutil.NoSuchProcess):
        psutil.Process(worker_pid).wait(30)

    with serve_process(home) as (_second, url):
        client = _closing(httpx.Client(base_url=url, timeout=30))
        shown = client.get(f"/api/runs/{run_id}").json()
        assert [p["request_id"] for p in shown["pending_requests"]] == [asked["data"]["request_id"]]
        assert shown["run"]["error_type"].endswith("HumanInputUnavailable")
        assert client.post(f"/api/runs/{run_id}/resume").status_code == 202
        with connect(_ws_url(url, run_id, since=asked["seq"])) as ws:
            frames = []
            for frame in _frames(ws):
                frames.append(frame)
                if frame.get("type") == "human_input_request":  # asked again, same request id
                    assert frame["data"]["request_id"] == asked["data"]["request_id"]
                    answer = client.post(f"/api/runs/{run_id}/answer",
                                         json={"request_id": frame["data"]["request_id"], "text": "resumed"})
                    assert answer.status_code == 202, answer.text
        assert frames[-1]["status"] == "completed"
        run = client.get(f"/api/runs/{run_id}").json()["run"]
        assert run["result"] == {"answer": "resumed"} and run["attempt"] == 2
        seqs = _stored_seqs(client, run_id)
        assert seqs == list(range(1, len(seqs) + 1))


# -- the page in a real browser ---------------------------------------------------------------------


def test_page_shows_the_dag_live_and_a_node_completes_without_reload(
        server: BackgroundServer, client: httpx.Client, chromium: Chromium) -> None:
    """The page draws a running run's DAG; answering its question turns 'review' completed live."""
    run_id = _submit(client, "tests.flows.human:gated_steps", task="release 1.0")
    chromium.navigate(f"{server.url}/runs/{run_id}")
    chromium.wait_for("document.querySelector('[data-request-id]')")
    assert chromium.evaluate(
        "[...document.querySelectorAll('#nodes li')].map(n => n.dataset.nodeId + ':' + n.dataset.status)"
    ) == ["build:completed", "review:running"]
    assert chromium.evaluate("window.isolanePage.graph.nodes().length") == 2
    assert chromium.evaluate("document.querySelector('#runs [data-run-id]') !== null")
    chromium.screenshot(ARTIFACTS / "serve-page-waiting.png")
    marker = chromium.evaluate("window.__sameDocument = Math.random()")
    # A person answers on the page: type, click; the page posts the answer to the API.
    chromium.evaluate("document.querySelector('[data-request-id] textarea').value = 'yes, ship';"
                      "document.querySelector('[data-request-id] button.primary').click(); true")
    chromium.wait_for("document.querySelector('[data-node-id=\"review\"]').dataset.status === 'completed'")
    chromium.wait_for("document.querySelector('#run-status').dataset.status === 'completed'")
    assert chromium.evaluate("window.__sameDocument") == marker  # no reload happened
    statuses = chromium.evaluate(
        "Object.fromEntries(window.isolanePage.graph.nodes().map(n => [n.id(), n.data('status')]))")
    assert statuses == {"build": "completed", "review": "completed", "ship": "completed"}
    chromium.screenshot(ARTIFACTS / "serve-page-completed.png")
    run = client.get(f"/api/runs/{run_id}").json()["run"]
    assert run["status"] == "completed" and run["result"] == "yes, ship"
