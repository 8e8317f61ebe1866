"""The ``serve`` benchmark: WebSocket streaming and fan-out beside the store's own event rate.

A real ``isolane serve`` subprocess on 127.0.0.1 (the service as deployed) and clients in this
process on one asyncio loop. Figures, all from the same server and run:

* ``store_events_per_s``: a run with no client, events persisted per second (the baseline);
* ``ws_events_per_s``: the same run with one client connected from the start, events received
  per second by the client (live); ``ws_replay_events_per_s``: a stored run replayed to one client;
* ``fanout``: a run emitting at a fixed rate, with K clients each: every event received once in
  order, latency (receive time − the worker's emit time) p50/p99 over all clients;
  ``fanout_clients`` is the largest K whose clients all got everything with p99 ≤ 0.5 s.

Used by ``python scripts/bench.py serve --json``.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
from websockets.asyncio.client import connect

__all__ = ["run_serve_benchmark"]

ROOT = Path(__file__).resolve().parent.parent
BENCH_FILE = Path(__file__).resolve()
_P99_LIMIT_S = 0.5


def paced(ctx: Any, task: str, config: dict[str, Any]) -> int:
    """Emit ``rate`` events per second for ``seconds`` (in 20 ms slices); ``0`` rate: flat out."""
    n, rate = int(config["n"]), float(config.get("rate", 0))
    emit = ctx.emit
    if rate <= 0:
        for i in range(n):
            emit("tick", i=i)
        return n
    per_slice = max(1, int(rate * 0.02))
    start = time.monotonic()
    for i in range(0, n, per_slice):
        for j in range(i, min(n, i + per_slice)):
            emit("tick", i=j)
        ahead = start + (i + per_slice) / rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
    return n


class _Service:
    """``isolane serve --port 0`` in a subprocess."""

    def __init__(self, home: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "isolane.cli", "serve", "--port", "0", "--home", str(home),
             "--no-recover"],
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True, env={k: v for k, v in os.environ.items() if k != "ISOLANE_TOKEN"})
        found: list[str] = []
        ready = threading.Event()

        def read() -> None:
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                match = re.search(r"http://127\.0\.0\.1:\d+", line)
                if match and not found:
                    found.append(match.group(0))
                    ready.set()
            ready.set()

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()
        if not ready.wait(60) or not found:
            self.close()
            raise RuntimeError("isolane serve did not start")
        self.url = found[0]
        self.ws = self.url.replace("http://", "ws://")
        self.http = httpx.Client(base_url=self.url, timeout=120)

    def submit(self, config: dict[str, Any]) -> str:
        response = self.http.post("/api/runs", json={"workflow": f"{BENCH_FILE}:paced", "config": config})
        response.raise_for_status()
        run_id: str = response.json()["run_id"]
        return run_id

    def run_row(self, run_id: str) -> dict[str, Any]:
        row: dict[str, Any] = self.http.get(f"/api/runs/{run_id}").json()["run"]
        return row

    def close(self) -> None:
        if hasattr(self, "http"):
            self.http.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._reader.join(10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


async def _client(url: str, latencies: list[float] | None = None) -> dict[str, Any]:
    """Read one run's socket to the end; count events, check order, note latencies."""
    count, last, ordered, lagged = 0, 0, True, 0
    first_at = end_at = 0.0
    async with connect(url, max_size=None) as ws:
        async for raw in ws:
            now = time.time()
            for line in str(raw).split("\n"):
                frame = orjson.loads(line)
                seq = frame.get("seq")
                if seq is not None:
                    if count == 0:
                        first_at = time.perf_counter()
                    ordered = ordered and seq == last + 1
                    last = seq
                    count += 1
                    if latencies is not None and frame["type"] == "custom":
                        latencies.append(now - frame["ts"])
                elif frame.get("type") == "lagged":
                    lagged += 1
                elif frame.get("type") == "end":
                    end_at = time.perf_counter()
            if end_at:
                break
    return {"count": count, "last": last, "ordered": ordered, "lagged": lagged,
            "seconds": max(end_at - first_at, 1e-9)}


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def _fanout(service: _Service, clients: int, rate: float, seconds: float) -> dict[str, Any]:
    n = int(rate * seconds)
    run_id = service.submit({"n": n, "rate": rate})
    url = f"{service.ws}/ws/runs/{run_id}?since=0"
    latencies: list[list[float]] = [[] for _ in range(clients)]
    results = await asyncio.gather(*(_client(url, latencies[i]) for i in range(clients)))
    flat = [x for per in latencies for x in per]
    per_client_p99 = [_pct(per, 0.99) for per in latencies]
    complete = all(r["ordered"] and r["last"] == results[0]["last"] for r in results)
    return {"clients": clients, "events": n, "complete": complete,
            "latency_ms_p50": round(_pct(flat, 0.5) * 1000, 1),
            "latency_ms_p99": round(_pct(flat, 0.99) * 1000, 1),
            "worst_client_p99_ms": round(max(per_client_p99) * 1000, 1),
            "lagged_clients": sum(1 for r in results if r["lagged"])}


async def _measure(service: _Service, events: int, fanouts: tuple[int, ...], rate: float,
                   seconds: float) -> dict[str, Any]:
    # Warm the forkserver (AG2 import) so figures are about streaming.
    warm = service.submit({"n": 10})
    await _client(f"{service.ws}/ws/runs/{warm}?since=0")

    alone = service.submit({"n": events})
    row = service.run_row(alone)
    while row["ended_at"] is None:  # no client at all: poll the run's row (a benchmark may)
        await asyncio.sleep(0.05)
        row = service.run_row(alone)
    store_rate = events / (row["ended_at"] - row["started_at"])

    live_id = service.submit({"n": events})
    live = await _client(f"{service.ws}/ws/runs/{live_id}?since=0")
    replay = await _client(f"{service.ws}/ws/runs/{live_id}?since=0")

    fanout = [await _fanout(service, k, rate, seconds) for k in fanouts]
    sustained = max((f["clients"] for f in fanout
                     if f["complete"] and f["worst_client_p99_ms"] <= _P99_LIMIT_S * 1000), default=0)
    return {
        "events": events,
        "store_events_per_s": round(store_rate),
        "ws_events_per_s": round(live["count"] / live["seconds"]),
        "ws_live_complete": live["ordered"] and live["last"] == live["count"],
        "ws_vs_store": round(live["count"] / live["seconds"] / store_rate, 3),
        "ws_replay_events_per_s": round(replay["count"] / replay["seconds"]),
        "fanout_rate_events_per_s": rate,
        "fanout_clients": sustained,
        "fanout_p99_limit_ms": _P99_LIMIT_S * 1000,
        "fanout": fanout,
    }


def run_serve_benchmark(*, events: int = 100_000, fanouts: tuple[int, ...] = (1, 10, 50, 100),
                        rate: float = 1000.0, seconds: float = 3.0) -> dict[str, Any]:
    """Start a service, measure, stop it; return the figures."""
    with tempfile.TemporaryDirectory() as d:
        service = _Service(Path(d) / "home")
        try:
            return asyncio.run(_measure(service, events, fanouts, rate, seconds))
        finally:
            service.close()
