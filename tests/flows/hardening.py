"""Workflows for the worker-hardening tests (``tests/test_worker_hardening.py``): long lines
with secrets at the 64 KiB cut, detached processes of a worker that dies, descriptors held to
the limit, credentials of other shapes in the environment."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

from isolane.worker.context import RunContext

LINE_MAX = 64 * 1024


def prints_split_secrets(ctx: RunContext, task: str, config: dict[str, Any]) -> str:
    """Prints one over-long line per secret in ``secrets``, each secret lying across the 64 KiB
    cut (starting ``before`` bytes ahead of it), on stdout and stderr."""
    for secret in config["secrets"]:
        before = int(config.get("before", 10))
        line = "x" * (LINE_MAX - before) + secret + "y" * int(config.get("after", 20_000))
        for stream in (sys.stdout, sys.stderr):
            stream.write(line + "\n")
            stream.flush()
    return "printed"


def detaches_then_dies(ctx: RunContext, task: str, config: dict[str, Any]) -> None:
    """Starts ``sleep 300`` in a session of its own (and one inside its own process group),
    waits ``wait`` seconds, then dies without cleaning up: ``os._exit(3)``, SIGSEGV or SIGKILL."""
    detached = subprocess.Popen(["sleep", "300"], start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    grouped = subprocess.Popen(["sleep", "301"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ctx.emit("detached", pids=[detached.pid, grouped.pid])
    ctx._emitter.flush()
    time.sleep(float(config.get("wait", 1.0)))
    if config.get("how") in ("segfault", "sigkill"):
        os.kill(os.getpid(), signal.SIGSEGV if config["how"] == "segfault" else signal.SIGKILL)
        time.sleep(5)
    os._exit(3)


def holds_descriptors(ctx: RunContext, task: str, config: dict[str, Any]) -> str:
    """Opens raw descriptors until the kernel refuses (EMFILE) and keeps every one of them open,
    then does what ``then`` says: ``raise`` the error, ``swallow`` it and return, or ``write`` a
    file in its work directory (tracked at the end)."""
    held = []
    try:
        while len(held) < 100_000:
            held.append(os.open(os.devnull, os.O_RDONLY))
    except OSError as exc:
        if config.get("then") == "raise":
            raise
        failure = exc
    if config.get("then") == "write":
        (ctx.work_dir / "after.txt").write_text("written with no descriptor to spare\n")
    return f"held {len(held)} descriptors ({failure.strerror})"


def prints_environment(ctx: RunContext, task: str, config: dict[str, Any]) -> dict[str, str]:
    """Prints, emits and returns the values of the environment variables named in ``names``."""
    values = {name: os.environ.get(name, "") for name in config["names"]}
    for name, value in values.items():
        print(f"{name}={value}", flush=True)
        ctx.emit("seen", variable=name, value=value)
    return values


def saves_in_steps(ctx: RunContext, task: str, config: dict[str, Any]) -> int:
    """Three steps, each saving a context variable of its own (``k<i>``) inside the step."""
    def body(i: int) -> int:
        ctx.state[f"k{i}"] = i
        return i

    return sum(ctx.step(f"s{i}", body, i) for i in range(3))
