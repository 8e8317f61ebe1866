"""The worker process: the child side of a run.

::

    forkserver (autogen, openai, this module preloaded)
        └─ fork ─▶ worker_main(spec, event_conn, control_conn)
                     setsid · subreaper · limits (enforcement.py) · scrubbed env · chdir(work_dir)
                     fds 1/2 → output events (output.py; counted against the output limit)
                     Emitter ──frames (secrets redacted)──▶ event pipe ──▶ parent Monitor
                            └─lines──▶ <run dir>/events.jsonl (spool)
                     control thread ◀── control pipe ◀── parent (cancel, …)
                     run_started → [dag_created] → workflow(ctx, task, config) → run_completed |
                     run_failed | run_cancelled; then every descendant is killed and the process exits

Nothing here talks to the database: the worker never receives its URL. Parent → worker data may be
pickled (this module unpickles it); worker → parent data is JSON bytes only.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import inspect
import logging
import os
import signal
import socket
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Final

import orjson

from isolane.schemas.redaction import Redactor, secret_values
from isolane.schemas.spec import (
    EXIT_CODES,
    FILES_RESUME_KEY,
    HUMAN_RESUME_KEY,
    SPOOL_REFUSED_EXIT,
    WorkerSpec,
)
from isolane.schemas.spool import SpoolError
from isolane.worker.context import RunContext, runtime_emit
from isolane.worker.emitter import Emitter
from isolane.worker.enforcement import LimitEnforcer
from isolane.worker.files import final_scan, track_files
from isolane.worker.offline_llm import serving_offline_script
from isolane.worker.output import OutputPump, pump_std_streams
from isolane.worker.proctree import descendants, kill_until_gone
from isolane.worker.session import ResumeInfo
from isolane.worker.spool_writer import SpoolWriter
from isolane.workflow import WorkflowFn, resolve_workflow

__all__ = ["worker_main"]

log = logging.getLogger(__name__)

_PR_SET_CHILD_SUBREAPER: Final = 36
_PR_SET_PDEATHSIG: Final = 1


class _CancelRequested(BaseException):
    """Raised in the workflow's thread when the parent asked the run to stop."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise _CancelRequested("cancel requested")


def _die_with_parent() -> None:
    """SIGKILL this process when the process that forked it ends (Linux only)."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        log.debug("could not set a parent-death signal")
        return
    if os.getppid() != parent or parent == 1:  # it died before the prctl took effect
        os._exit(EXIT_CODES["failed"])


def _become_session_leader() -> None:
    try:
        os.setsid()
    except PermissionError:  # already a session leader
        pass
    if sys.platform.startswith("linux"):
        # Orphaned grandchildren (daemonised agent code) re-parent to us, so we can reap them.
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        except (OSError, AttributeError):
            log.debug("could not become a child subreaper")


def _control_loop(control: Any, ctx: RunContext) -> None:
    while True:
        try:
            message = control.recv()
        except (EOFError, OSError):
            ctx.human.disconnect()  # nobody can answer a question any more
            return  # the parent is gone: keep running into the spool
        op = message.get("op") if isinstance(message, dict) else None
        if op == "cancel":
            ctx.cancelled.set()
            os.kill(os.getpid(), signal.SIGTERM)
        elif op == "answer":
            ctx.human.deliver_message(message)


def _kill_descendants() -> None:
    """End every process the workflow started (detached ones too: the worker is their subreaper)."""
    pid = os.getpid()
    kill_until_gone(lambda: descendants(pid))


def _json_result(value: Any) -> Any:
    try:
        return orjson.loads(orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY))
    except TypeError:
        return {"repr": repr(value)[:10_000], "note": "the workflow returned a non-JSON value"}


class _NodeSink:
    """The capture sink: typed events into the emitter, attributed to the current node."""

    def __init__(self, ctx: RunContext) -> None:
        # Through the file tracker: it notes who acts and scans after code or tools ran.
        emit = runtime_emit(ctx)
        self.emit = ctx.files.observing(emit) if ctx.files is not None else emit


def _capture(ctx: RunContext, config: dict[str, Any]) -> contextlib.AbstractContextManager[Any]:
    """AG2 capture for the whole run when AG2 is installed (``config["capture_ag2"]=False`` opts out)."""
    if not config.get("capture_ag2", True) or importlib.util.find_spec("autogen") is None:
        return contextlib.nullcontext()
    from isolane.capture import capture_ag2

    prices = config.get("prices")
    return capture_ag2(_NodeSink(ctx), prices={m: tuple(p) for m, p in prices.items()} if prices else None)


def _call(func: WorkflowFn, ctx: RunContext, task: str, config: dict[str, Any]) -> Any:
    if inspect.iscoroutinefunction(func):
        import anyio

        return anyio.run(func, ctx, task, config)
    result = func(ctx, task, config)
    if inspect.isawaitable(result):
        import anyio

        async def _await() -> Any:
            return await result

        return anyio.run(_await)
    return result


def worker_main(spec: WorkerSpec, event_conn: Any, control_conn: Any) -> None:
    """Entry point of a worker process; never returns (exits with :data:`EXIT_CODES`)."""
    preloaded = "autogen" in sys.modules
    started = time.monotonic()
    if spec.die_with_parent:
        _die_with_parent()
    _become_session_leader()
    enforcer = LimitEnforcer(spec.limits, cgroup=spec.cgroup)
    enforcer.apply()  # before anything can fork: joins the run's cgroup, sets the rlimits
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.clear()
    os.environ.update(spec.env)
    work_dir = Path(spec.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    os.chdir(work_dir)
    for entry in reversed(spec.sys_path):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)

    pipe_fd = os.dup(event_conn.fileno())
    event_conn.close()
    # The run's secrets, plus every credential-like value of the worker's own environment
    # (RunSpec.env and the inherited allow-list alike), whatever the parent computed.
    redactor = Redactor((*spec.secrets, *secret_values(spec.env)))
    # The spool first, before any workflow code: from here on an event is durable when emit()
    # returns, and the writer lock tells recovery this run has a live worker.
    try:
        spool = SpoolWriter(spec.spool_path, identity=spec.spool_identity,
                            max_bytes=enforcer.spool_bytes)
    except SpoolError as exc:  # another live worker of this run writes it, or it was replaced
        sys.stderr.write(f"isolane worker of run {spec.run_id}: {exc}\n")
        os._exit(SPOOL_REFUSED_EXIT)
    emitter = Emitter(
        spec.run_id,
        spool=spool,
        pipe_fd=pipe_fd,
        start_seq=spec.start_seq,
        linger=spec.flush_interval,
        heartbeat_interval=spec.heartbeat_interval,
        redactor=redactor,
        on_full=enforcer.spool_full,
    )
    enforcer.start(emitter, exit_code=EXIT_CODES["failed"])
    outcome = "failed"
    pumps: list[OutputPump] = []
    ctx: RunContext | None = None
    try:
        if spec.workflow_pickle is not None:
            import dill

            # Parent -> worker is the trusted direction: the parent pickled its own callable.
            wf = resolve_workflow(dill.loads(spec.workflow_pickle))
        else:
            wf = resolve_workflow(spec.workflow)
        known = {n.id: n.parent_node_id for n in wf.template.nodes} if wf.template else {}
        resume = ResumeInfo(spec.resume) if spec.resume is not None else None
        if spec.resume is not None:
            known.update(spec.resume.get("nodes", {}))
        ctx = RunContext(run_id=spec.run_id, work_dir=work_dir, task=spec.task,
                         config={**wf.defaults, **spec.config}, emitter=emitter,
                         attempt=spec.attempt, known_nodes=known, resume=resume)
        ctx.human.configure(timeout=spec.human_timeout,
                            answers=(spec.resume or {}).get(HUMAN_RESUME_KEY))
        track_files(ctx, blob_dir=spec.blob_dir, max_blob_bytes=spec.max_blob_bytes,
                    baseline=(spec.resume or {}).get(FILES_RESUME_KEY))
        if spec.snapshot_interval:
            _start_snapshot_timer(ctx, spec.snapshot_interval)
        threading.Thread(target=_control_loop, args=(control_conn, ctx), name="isolane-control",
                         daemon=True).start()
        if spec.capture_output:
            pumps = pump_std_streams(emitter, ctx, enforcer.take_output, redactor=redactor)
        emitter.emit("run_started", {"workflow": wf.name, "task": spec.task, "attempt": spec.attempt,
                                     "pid": os.getpid(), "host": socket.gethostname(),
                                     "preloaded": preloaded,
                                     "resumed_from_seq": spec.start_seq})
        if not preloaded:
            log.info("worker of run %s started without AG2 preloaded (spawn fallback)", spec.run_id)
        if wf.template is not None and spec.start_seq == 0:
            emitter.emit("dag_created", wf.template.as_payload())
        with _capture(ctx, ctx.config) as capture, enforcer.armed():
            ctx.capture = capture
            if capture is not None and capture.iostream is not None:
                capture.iostream.human = ctx.human.ask_ag2  # AG2 asks through the control pipe
            with serving_offline_script(wf.func, ctx.config):  # a user module's script: served here
                result = _call(wf.func, ctx, spec.task, ctx.config)
        final_scan(ctx)
        ctx.snapshot(reason="end")
        _drain_output(pumps)
        emitter.emit("run_completed", {"result": _json_result(result),
                                       "duration_s": round(time.monotonic() - started, 6)})
        outcome = "completed"
    except _CancelRequested:
        _save_state(ctx)
        _drain_output(pumps)
        emitter.emit("run_cancelled", {"reason": "cancel requested by the parent"})
        outcome = "cancelled"
    except BaseException as exc:  # noqa: BLE001 - the workflow's failure is the run's outcome, whatever it is
        # The limit first: naming it releases the headroom (descriptors, memory) that saving
        # the state and draining the output need when the workflow still holds everything.
        failure = enforcer.failure(exc) or {
            "error": "".join(traceback.format_exception_only(exc)).strip(),
            "error_type": f"{type(exc).__module__}.{type(exc).__qualname__}",
            "traceback": "".join(traceback.format_exception(exc)),
        }
        _save_state(ctx)
        _drain_output(pumps)
        emitter.emit("run_failed", failure)
        outcome = "failed"
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        enforcer.stop()
        _kill_descendants()
        _drain_output(pumps)
        emitter.close()
    os._exit(EXIT_CODES[outcome])


def _save_state(ctx: RunContext | None) -> None:
    """Keep what the workflow had saved even when it failed: a resume starts from there."""
    try:
        final_scan(ctx)
    except Exception:  # e.g. no descriptor left: the failure itself is what must be reported
        log.exception("could not record the final state of the run's files")
    if ctx is not None:
        try:
            ctx.snapshot(reason="end")
        except Exception:
            log.exception("could not save the final state snapshot")


def _start_snapshot_timer(ctx: RunContext, interval: float) -> None:
    def tick() -> None:
        while not stop.wait(interval):
            try:
                ctx.snapshot(reason="timer")
            except Exception:  # noqa: BLE001 - e.g. the emitter closed at exit
                return

    stop = threading.Event()
    threading.Thread(target=tick, name="isolane-snapshots", daemon=True).start()


def _drain_output(pumps: list[OutputPump]) -> None:
    """Flush Python's buffers and turn all captured output into events, before the outcome."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    if pumps:
        # A process the workflow started (a daemon) may hold stdout open: the drain would wait
        # for it. Every descendant is killed at the end anyway; do it before the drain.
        _kill_descendants()
    for pump in pumps:
        pump.close()
    pumps.clear()
