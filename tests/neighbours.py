"""A parent process for the store-hardening tests: bad runs beside a well-behaved neighbour.

``python -m tests.neighbours DB_URL HOME FLOW...`` starts an executor and a neighbour
(``tests.flows:gated``); once the neighbour is half-way it starts one run of each
``tests.flows.hostile:FLOW`` at once. When every bad run has ended it lets the neighbour finish,
then prints ``{"neighbour": id, "bad": {FLOW: id}}`` as JSON.

A test runs this as a child process because a stalled store would hang any parent (its shutdown
waits for the writer): the test kills this process tree after its deadline and fails instead.
"""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import orjson

from isolane import Executor, RunSpec

#: The neighbour emits this many events, waits for its gate, then emits as many again.
NEIGHBOUR_EVENTS = 400


async def main(db_url: str, home: Path, flows: list[str]) -> None:
    async with Executor(home=home, db_url=db_url, max_workers=len(flows) + 1) as ex:
        neighbour = await ex.submit(RunSpec(workflow="tests.flows:gated",
                                            config={"n": NEIGHBOUR_EVENTS}))
        async for event in neighbour.events():
            if event.type == "custom" and event.data["i"] == NEIGHBOUR_EVENTS - 1:
                break  # half-way: its first events are stored, it waits for its gate
        bad = {flow: await ex.submit(RunSpec(workflow=f"tests.flows.hostile:{flow}"))
               for flow in flows}
        for handle in bad.values():
            await handle.wait()
        (Path(ex.store.get_run(neighbour.run_id).work_dir) / "go").touch()
        await neighbour.wait()
    sys.stdout.buffer.write(orjson.dumps(
        {"neighbour": neighbour.run_id, "bad": {flow: h.run_id for flow, h in bad.items()}}))


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], Path(sys.argv[2]), sys.argv[3:])
