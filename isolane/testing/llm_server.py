"""``python -m isolane.testing.llm_server``: the fake LLM as a standalone server.

::

    $ python -m isolane.testing.llm_server --port 0 [--script script.json] [--reply TEXT] [--latency S]
    http://127.0.0.1:41234/v1        <- the one line it prints; point OpenAI clients or AG2 there

It serves until SIGINT or SIGTERM and exits 0. ``--script`` takes the JSON form of
:meth:`~isolane.testing.Script.from_dict`; without it every request is answered with ``--reply``.
The server itself is :class:`~isolane.testing.FakeLLM` (re-exported here).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from isolane.offline.script import Script
from isolane.offline.server import FakeLLM, ModelUsage, Served

__all__ = ["FakeLLM", "ModelUsage", "Served", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m isolane.testing.llm_server``: serve until SIGINT/SIGTERM; prints the base URL."""
    parser = argparse.ArgumentParser(prog="python -m isolane.testing.llm_server",
                                     description="Serve a scripted OpenAI-compatible endpoint on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=0, help="port to bind (0: any free port)")
    parser.add_argument("--script", type=Path, help="JSON script file (see Script.from_dict)")
    parser.add_argument("--reply", default="TERMINATE", help="the answer when no script is given")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds to wait before each answer")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    script = Script.from_dict(json.loads(args.script.read_text())) if args.script else Script(default=args.reply)
    done = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    with FakeLLM(script, port=args.port, latency_s=args.latency) as llm:
        sys.stdout.write(f"{llm.base_url}\n")  # the one line the CLI prints: where to point clients
        sys.stdout.flush()
        done.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
