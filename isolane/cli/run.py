"""``run-isolated TASK --workflow W``: run one workflow in its own worker and follow it.

::

    Executor.submit(RunSpec) ──▶ RunHandle.events() ──▶ sink.event()   (live view | JSON | text)
          ▲                                              sink.tick()    (redraw / flush, 10 Hz)
    a question on a TTY ──▶ Prompter: pause the view, read the answer, RunHandle.answer()
    SIGINT/SIGTERM ──▶ RunHandle.cancel() ──▶ the run ends ``cancelled`` ──▶ exit code 5

The process exits with the code of the run's final status (:data:`~isolane.cli.codes.EXIT_CODES`).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Final, NoReturn, Protocol, TextIO

import anyio
import orjson
import typer
from rich.text import Text

from isolane.backends.registry import BACKENDS
from isolane.cli.codes import EXIT_CODES_HELP, exit_code_for
from isolane.cli.console import CliApp, err, out
from isolane.cli.llm import BaseUrlOption, LlmOption, ModelOption, llm_for_run
from isolane.cli.options import DbOption, HomeOption, JsonOption, Location, parse_config
from isolane.cli.render import error_text, event_line, format_duration, short

if TYPE_CHECKING:
    from rich.live import Live

    from isolane.cli.live import RunView
    from isolane.cli.prompt import Prompter
    from isolane.executor.executor import Executor
    from isolane.executor.run import Outcome, RunHandle
    from isolane.schemas.envelope import Event

__all__ = ["RUN_HELP", "follow", "make_sink", "run_command", "run_isolated_app", "run_isolated_main"]

_TICK: Final = 0.1

RUN_HELP: Final = f"""Run TASK with workflow W in its own worker process and follow it.

On a terminal a live view shows the run's status, phase, DAG nodes, last lines and cost. \
With --json, stdout carries one JSON event per line and a final {{"outcome": {{...}}}} line; \
otherwise one text line per event. Ctrl-C cancels the run.

{EXIT_CODES_HELP}
"""


class _Sink(Protocol):
    """Where a followed run's events go."""

    def start(self, run_id: str) -> None: ...
    def event(self, event: Event) -> None: ...
    def tick(self) -> None: ...
    def finish(self, outcome: Outcome) -> None: ...
    def note(self, text: str) -> None: ...
    def close(self) -> None: ...


class _Stream:
    """A stdout that survives its reader going away (``| head``): later writes are dropped."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._dirty = False
        self.closed = False

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            self._stream.buffer.write(data)
            self._dirty = True
        except BrokenPipeError:
            self._close()

    def flush(self) -> None:
        if self.closed or not self._dirty:
            return
        try:
            self._stream.flush()
            self._dirty = False
        except BrokenPipeError:
            self._close()

    def _close(self) -> None:
        # Point the descriptor at /dev/null so the interpreter's final flush does not complain.
        self.closed = True
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self._stream.fileno())
        os.close(devnull)


def outcome_json(outcome: Outcome) -> bytes:
    return orjson.dumps({"outcome": dataclasses.asdict(outcome)}, default=repr)


class _JsonSink:
    """``--json``: nothing but JSON lines on stdout."""

    def __init__(self) -> None:
        self._out = _Stream(sys.stdout)

    def start(self, run_id: str) -> None:
        pass

    def event(self, event: Event) -> None:
        self._out.write(event.to_json() + b"\n")

    def tick(self) -> None:
        self._out.flush()

    def finish(self, outcome: Outcome) -> None:
        self._out.write(outcome_json(outcome) + b"\n")
        self._out.flush()

    def note(self, text: str) -> None:
        err.print(text, markup=False)

    def close(self) -> None:
        self._out.flush()


class _TextSink:
    """Not a terminal and no ``--json``: one plain line per event."""

    def __init__(self, workflow: str) -> None:
        self._out = _Stream(sys.stdout)
        self._workflow = workflow
        self._started = time.monotonic()

    def _line(self, text: str) -> None:
        self._out.write(text.encode("utf-8", "replace") + b"\n")

    def start(self, run_id: str) -> None:
        self._line(f"run {run_id} submitted (workflow {self._workflow})")

    def event(self, event: Event) -> None:
        self._line(event_line(event))

    def tick(self) -> None:
        self._out.flush()

    def finish(self, outcome: Outcome) -> None:
        took = format_duration(time.monotonic() - self._started)
        self._line(f"run {outcome.run_id} {outcome.status} after {took}")
        for line in _outcome_lines(outcome):
            self._line(line)
        self._out.flush()

    def note(self, text: str) -> None:
        err.print(text, markup=False)

    def close(self) -> None:
        self._out.flush()


class _LiveSink:
    """A terminal: a live view redrawn at most every tick."""

    def __init__(self, workflow: str, task: str) -> None:
        self._workflow = workflow
        self._task = task
        self._view: RunView | None = None
        self._live: Live | None = None

    def start(self, run_id: str) -> None:
        from isolane.cli.live import RunView

        self._view = RunView(run_id, workflow=self._workflow, task=self._task)
        self.resume()

    def pause(self) -> None:
        """Give the terminal up (a person is typing an answer); events still fold in."""
        self.close()

    def resume(self) -> None:
        """Draw the live view again, below whatever was printed meanwhile."""
        if self._view is not None and self._live is None:
            from rich.live import Live

            self._live = Live(self._view, console=out, auto_refresh=False, transient=False,
                              redirect_stdout=False, redirect_stderr=False)
            self._live.start(refresh=True)

    def event(self, event: Event) -> None:
        assert self._view is not None
        self._view.apply(event)

    def tick(self) -> None:
        # Redraw every tick: the elapsed time moves even when no event arrives.
        if self._live is not None:
            self._live.refresh()

    def finish(self, outcome: Outcome) -> None:
        if self._view is not None:
            self._view.finish(outcome.status)
            self.close()
        for line in _outcome_lines(outcome):
            out.print(Text(line, style="red" if not outcome.ok else ""))
        if outcome.traceback and not outcome.ok:
            out.print(Text(outcome.traceback.rstrip(), style="dim"))

    def note(self, text: str) -> None:
        if self._live is not None:
            self._live.console.print(Text(text, style="yellow"))
        else:
            err.print(text, markup=False)

    def close(self) -> None:
        """Draw the last frame and give the terminal back (cursor shown); idempotent."""
        if self._live is not None:
            self._live.refresh()
            self._live.stop()
            self._live = None


def _outcome_lines(outcome: Outcome) -> list[str]:
    lines = []
    if outcome.ok:
        lines.append(f"result: {short(outcome.result, 500)}")
    else:
        lines.append(f"{outcome.status}: {error_text(outcome.error_type, outcome.error)}")
        if outcome.exit_code is not None and outcome.status == "crashed":
            lines.append(f"worker exit code {outcome.exit_code}")
    return lines


async def _cancel_on_signal(executor: Executor, run_id: str, sink: _Sink) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            sink.note(f"{signal.Signals(signum).name}: cancelling run {run_id} …")
            await executor.get(run_id).cancel(f"cancelled from the terminal ({signal.Signals(signum).name})")


async def _ticker(sink: _Sink) -> None:
    while True:  # a redraw cadence, not a poll: events arrive through the handle
        await anyio.sleep(_TICK)
        sink.tick()


Starter = Callable[["Executor"], Awaitable["RunHandle"]]


def _prompter(handle: RunHandle, sink: _Sink) -> Prompter | None:
    """A live view on a terminal with a person at it asks them the run's questions."""
    from isolane.cli.prompt import Prompter

    if not isinstance(sink, _LiveSink) or not Prompter.possible(out):
        return None
    return Prompter(lambda request_id, text: handle.answer(request_id, text, source="terminal"),
                    sink, out)


async def follow(start: Starter, location: Location, sink: _Sink, *,
                 backend: str | None = None) -> Outcome:
    """Open an executor, start a run with ``start`` (submit, resume, …) and show it to the end.

    ``backend`` names the worker backend (None: ``ISOLANE_BACKEND``, else ``local``).
    """
    from isolane.executor.executor import Executor

    try:
        async with Executor(db_url=location.db, home=location.home, backend=backend) as executor:
            handle = await start(executor)
            sink.start(handle.run_id)
            prompter = _prompter(handle, sink)
            async with anyio.create_task_group() as tg:
                tg.start_soon(_cancel_on_signal, executor, handle.run_id, sink)
                tg.start_soon(_ticker, sink)
                if prompter is not None:
                    tg.start_soon(prompter.run)
                async for event in handle.events():
                    sink.event(event)
                    if prompter is not None:
                        prompter.see(event)
                    elif event.type == "human_input_request" and isinstance(sink, _LiveSink):
                        sink.note(f"answer with: isolane answer {handle.run_id[:12]} "
                                  f"{event.data.get('request_id')} TEXT")
                outcome = await handle.wait()
                tg.cancel_scope.cancel()
        sink.finish(outcome)
        return outcome
    finally:
        sink.close()


def run_command(
    task: Annotated[str, typer.Argument(metavar="TASK", help="What the workflow should do (passed as `task`).")],
    workflow: Annotated[str, typer.Option(
        "--workflow", "-w", metavar="W",
        help="A registered name, 'package.module:function' or 'path/to/file.py:function'.")],
    config: Annotated[list[str] | None, typer.Option(
        "--config", "-c", metavar="K=V",
        help="Workflow option (repeatable). V is JSON when it parses (3, true, [1,2]), else a "
             "string; k.sub=v nests.")] = None,
    name: Annotated[str | None, typer.Option("--name", help="A name for the run.")] = None,
    timeout: Annotated[float | None, typer.Option(
        "--timeout", metavar="S", help="Stop the run after S seconds (status timed_out).")] = None,
    llm: LlmOption = None,
    model: ModelOption = None,
    base_url: BaseUrlOption = None,
    db: DbOption = None,
    home: HomeOption = None,
    json_: JsonOption = False,
    backend: Annotated[str | None, typer.Option(
        "--backend", metavar="B",
        help=f"Where the worker runs: {' | '.join(BACKENDS)} (default: $ISOLANE_BACKEND, else "
             "local). ray joins $ISOLANE_RAY_ADDRESS, or starts a local Ray cluster.")] = None,
) -> None:
    if backend is not None and backend not in BACKENDS:
        raise typer.BadParameter(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}",
                                 param_hint="--backend")
    location = Location.of(db, home)
    parsed = parse_config(config or ())
    from isolane.executor.run import RunSpec
    from isolane.tracking.urls import resolve_url

    resolve_url(location.db, home=location.home)  # a bad --db fails now, before a worker starts
    # A bad reference fails now, before a worker starts; the module is imported by the worker only.
    from isolane.references import check_workflow_ref

    wf = check_workflow_ref(workflow)
    with llm_for_run(wf, parsed, llm=llm, model=model, base_url=base_url) as (run_config, llm_env):
        spec = RunSpec(workflow=workflow, task=task, config=run_config, name=name, timeout=timeout,
                       env=llm_env)
        sink = make_sink(json_=json_, workflow=wf.name, task=task)
        outcome = anyio.run(lambda: follow(lambda ex: ex.submit(spec), location, sink,
                                           backend=backend))
    raise typer.Exit(exit_code_for(outcome.status))


def make_sink(*, json_: bool, workflow: str, task: str) -> _Sink:
    """JSON lines with ``--json``, a live view on a terminal, plain lines otherwise."""
    if json_:
        return _JsonSink()
    if out.is_terminal:
        return _LiveSink(workflow, task)
    return _TextSink(workflow)


run_command.__doc__ = RUN_HELP

#: The ``run-isolated`` program: one command, no subcommands.
run_isolated_app: Final = CliApp(name="run-isolated", rich_markup_mode="rich",
                                 context_settings={"help_option_names": ["-h", "--help"]})
run_isolated_app.command(help=RUN_HELP)(run_command)


def run_isolated_main(argv: list[str] | None = None) -> NoReturn:
    """Console-script entry of ``run-isolated``."""
    sys.exit(run_isolated_app.main(argv, prog_name="run-isolated"))
