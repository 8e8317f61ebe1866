"""The service's limits against a hostile HTTP client: real uvicorn servers on 127.0.0.1.

A body over 1 MiB is refused while it streams in (the server's memory does not grow with it), junk
in ``since`` is a 400 on REST and a close frame with its reason on the WebSocket, and a body nested
too deep is a 400, never a 500.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import psutil
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from isolane.serve import BackgroundServer
from isolane.serve.http import MAX_BODY, MAX_JSON_DEPTH
from tests.helpers import serve_process
from tests.pgcluster import PgCluster

_MIB = 1024 * 1024
#: What the hostile client offers to send.
_HUGE = 300 * _MIB


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundServer]:
    with BackgroundServer(executor_options={"home": tmp_path_factory.mktemp("home")}) as srv:
        yield srv


@pytest.fixture
def client(server: BackgroundServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        yield http


@pytest.fixture
def run_id(client: httpx.Client) -> str:
    response = client.post("/api/runs", json={"workflow": "tests.flows:ok"})
    assert response.status_code == 201, response.text
    ran: str = response.json()["run_id"]
    return ran


def _stream_body(url: str, head: bytes, chunk: bytes, total: int, server_pid: int,
                 ) -> tuple[bytes, int, int]:
    """Send ``head``, then up to ``total`` bytes of body in ``chunk``s (as chunked transfer coding
    when the head says so) until the server answers or stops reading.

    Returns ``(the server's answer, body bytes sent, the server's peak RSS growth)``: RSS is
    sampled before and after every chunk the socket accepted.
    """
    parts = urlsplit(url)
    server = psutil.Process(server_pid)
    start = peak = server.memory_info().rss
    chunked = b"chunked" in head.lower()
    framed = (b"%x\r\n" % len(chunk) + chunk + b"\r\n") if chunked else chunk
    sent = 0
    answer = b""
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock, \
            selectors.DefaultSelector() as selector:
        sock.sendall(head)
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
        pending = memoryview(framed)
        stalled = 0
        while True:
            ready = selector.select(timeout=0.5)
            peak = max(peak, server.memory_info().rss)
            if not ready:
                stalled += 1  # the server stopped reading and has not answered (yet)
                if stalled > 60:
                    break
                continue
            events = ready[0][1]
            if events & selectors.EVENT_READ:
                with contextlib.suppress(BlockingIOError):
                    data = sock.recv(65536)
                    answer += data
                    if not data or b"\r\n\r\n" in answer:
                        break
            if events & selectors.EVENT_WRITE and sent < total:
                try:
                    written = sock.send(pending)
                except (BrokenPipeError, ConnectionResetError):
                    break  # refused: the answer, if any, was read above
                except BlockingIOError:
                    continue
                pending = pending[written:]
                if not pending:
                    sent += len(chunk)
                    pending = memoryview(framed)
        with contextlib.suppress(OSError):
            sock.setblocking(True)
            sock.settimeout(10)
            while not _complete(answer) and (data := sock.recv(65536)):
                answer += data
    return answer, sent, peak - start


def _complete(answer: bytes) -> bool:
    """Whether ``answer`` holds a whole response: its headers and the body they announce."""
    head, sep, body = answer.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip())
    return True


@pytest.mark.parametrize("coding", ["chunked", "content-length"])
def test_a_300_mb_body_is_refused_while_it_streams_in(tmp_path: Path, coding: str) -> None:
    """A 300 MB request body is answered 413 once it passes 1 MiB (at once when its declared
    length does), and the server's memory does not grow by the body's size."""
    with serve_process(tmp_path / "home") as (proc, url):
        length = (b"Transfer-Encoding: chunked\r\n" if coding == "chunked"
                  else b"Content-Length: %d\r\n" % _HUGE)
        head = (b"POST /api/runs HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\n" + length + b"\r\n")
        answer, sent, growth = _stream_body(url, head, b" " * _MIB, _HUGE, proc.pid)
    status_line = answer.split(b"\r\n", 1)[0]
    assert status_line.startswith(b"HTTP/1.1 413"), answer[:300]
    assert b"at most 1048576 bytes" in answer
    assert sent < 64 * _MIB, f"the server kept reading: {sent // _MIB} MB taken"
    assert growth < 64 * _MIB, f"the server grew by {growth // _MIB} MB"


def test_a_body_just_over_the_limit_is_refused_and_one_at_it_is_read(client: httpx.Client) -> None:
    """The limit is exact: a JSON body of MAX_BODY is parsed, one byte more is a 413."""
    def body(size: int) -> bytes:
        start = b'{"workflow": "no.such:flow", "task": "'
        return start + b"x" * (size - len(start) - 2) + b'"}'

    at_limit = client.post("/api/runs", content=body(MAX_BODY),
                           headers={"content-type": "application/json"})
    assert at_limit.status_code == 400 and "no.such" in at_limit.json()["error"]
    over = client.post("/api/runs", content=body(MAX_BODY + 1),
                       headers={"content-type": "application/json"})
    assert over.status_code == 413, over.text


JUNK_SINCE = ["1e23", "99999999999999999999999", "9223372036854775808", "-1", "0x10", "²",
              "١٢", "1.0", "", " 1", "nan"]


@pytest.mark.parametrize("since", JUNK_SINCE)
def test_junk_since_answers_400_with_the_rule(client: httpx.Client, run_id: str,
                                              since: str) -> None:
    """REST events with a ``since`` that is not a seq: 400 saying what a seq is."""
    response = client.get(f"/api/runs/{run_id}/events", params={"since": since})
    assert response.status_code == 400, response.text
    assert "since must be an integer from 0 to 9223372036854775807" in response.json()["error"]


def test_the_largest_seq_is_a_valid_since(client: httpx.Client, run_id: str) -> None:
    """``since`` = 2**63 - 1 is a seq like any other: nothing after it, and no error."""
    response = client.get(f"/api/runs/{run_id}/events", params={"since": str(2**63 - 1)})
    assert response.status_code == 200, response.text
    assert response.json()["events"] == []


@pytest.mark.parametrize("since", JUNK_SINCE)
def test_junk_since_closes_the_websocket_with_a_reason(server: BackgroundServer, run_id: str,
                                                       since: str) -> None:
    """A WebSocket with a ``since`` that is not a seq ends with a close frame (4400) that says
    why, not with a dropped connection."""
    ws_url = server.url.replace("http://", "ws://")
    code, reason = _close_frame(f"{ws_url}/ws/runs/{run_id}?since={quote(since)}")
    assert code == 4400
    assert "since must be an integer from 0" in reason


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"k": value}
    return value


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 300, 1000])
def test_a_config_nested_too_deep_answers_400(client: httpx.Client, depth: int) -> None:
    """A submitted body whose config nests past the limit is a 400 naming the limit, not a 500."""
    body = b'{"workflow": "tests.flows:ok", "config": ' + b'{"k": ' * (depth - 2) + b"{}" \
        + b"}" * (depth - 2) + b"}"
    response = client.post("/api/runs", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text[:300]
    assert f"nests deeper than {MAX_JSON_DEPTH} levels" in response.json()["error"]


def test_a_config_at_the_depth_limit_is_accepted(client: httpx.Client) -> None:
    """A body nested exactly MAX_JSON_DEPTH deep is submitted and its config stored as given."""
    config = _nested(MAX_JSON_DEPTH - 1)  # the body object itself is one level
    response = client.post("/api/runs", json={"workflow": "tests.flows:ok", "config": config})
    assert response.status_code == 201, response.text[:300]
    shown = client.get(f"/api/runs/{response.json()['run_id']}").json()
    assert shown["run"]["config"] == config


@pytest.mark.postgres
def test_a_store_that_is_down_is_a_503_and_a_close_frame(pg_cluster: PgCluster,
                                                          tmp_path: Path) -> None:
    """With its database stopped, the service answers REST with 503 saying what to check, and a
    WebSocket with a close frame 1011 and the reason, never a 500 or a dropped connection."""
    with BackgroundServer(executor_options={"home": tmp_path / "home",
                                            "db_url": pg_cluster.url}) as srv, \
            httpx.Client(base_url=srv.url, timeout=30) as http:
        submitted = http.post("/api/runs", json={"workflow": "tests.flows:ok"})
        assert submitted.status_code == 201, submitted.text
        run = submitted.json()["run_id"]
        with connect(f"{srv.url.replace('http://', 'ws://')}/ws/runs/{run}") as ws:
            while "end" not in str(ws.recv(timeout=60)):
                pass
        pg_cluster.stop()
        try:
            shown = http.get(f"/api/runs/{run}")
            assert shown.status_code == 503, shown.text
            assert "check that it is running" in shown.json()["error"]
            code, reason = _close_frame(f"{srv.url.replace('http://', 'ws://')}/ws/runs/{run}")
            assert code == 1011
            assert "cannot read the database" in reason
        finally:
            pg_cluster.start()


def _close_frame(url: str) -> tuple[int, str]:
    """The close frame a WebSocket at ``url`` ends with (a dropped connection fails the test)."""
    with connect(url) as ws, pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=30)
    assert closed.value.rcvd is not None, "no close frame: the connection was dropped"
    return closed.value.rcvd.code, closed.value.rcvd.reason
