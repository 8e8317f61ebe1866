"""Resource limits of a run: the :class:`Limits` value, validated when built, and how the parent
explains a worker the kernel ended at a limit (:func:`limit_crash`, :func:`crash_hint`).

A run carries its limits in ``RunSpec(limits=...)``; the worker enforces them
(:mod:`isolane.worker.enforcement`).
"""

from __future__ import annotations

import math
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from isolane.errors import ConfigError

__all__ = ["CPU_GRACE", "Limits", "crash_hint", "limit_crash"]

#: Seconds between the soft CPU limit (SIGXCPU, reported as a failure) and the hard one (SIGKILL).
CPU_GRACE: Final = 10


@dataclass(frozen=True, kw_only=True, slots=True)
class Limits:
    """Resource limits of one run; ``None`` lifts a limit. Keyword-only, validated here.

    The defaults suit a 2-core machine running a few workers at once: 2048 MB of memory, one hour
    of CPU time, 1024 open files, 64 processes, 64 MB of captured output and a 2048 MB event log
    per run.

    * ``memory_mb`` – data segment of each process (RLIMIT_DATA) and anonymous memory of the
      whole process tree (watched);
    * ``cpu_seconds`` – CPU time of the run's processes together (RLIMIT_CPU per process, the
      tree's total watched);
    * ``open_files`` – file descriptors per process (RLIMIT_NOFILE);
    * ``processes`` – processes in the run, the worker included (counted, see
      :mod:`isolane.worker.enforcement`);
    * ``output_mb`` – bytes the run may write to stdout and stderr together;
    * ``spool_mb`` – size of the run's event log (its spool), all attempts together.
    """

    memory_mb: int | None = 2048
    cpu_seconds: float | None = 3600.0
    open_files: int | None = 1024
    processes: int | None = 64
    output_mb: float | None = 64.0
    spool_mb: float | None = 2048.0

    def __post_init__(self) -> None:
        _check_int("memory_mb", self.memory_mb, 256,
                   "a worker with AG2 preloaded holds about 150 MB before the workflow starts")
        _check_number("cpu_seconds", self.cpu_seconds, 1)
        _check_int("open_files", self.open_files, 64, "the worker itself keeps about 20 open")
        _check_int("processes", self.processes, 1, "the worker counts as one")
        _check_number("output_mb", self.output_mb, 0.001)
        _check_number("spool_mb", self.spool_mb, 1)

    @classmethod
    def unlimited(cls) -> Limits:
        """No limit at all (trusted workflows, or limits enforced outside isolane)."""
        return cls(memory_mb=None, cpu_seconds=None, open_files=None, processes=None,
                   output_mb=None, spool_mb=None)

    def as_dict(self) -> dict[str, Any]:
        """The limits as JSON-able options (stored with a run so a resume keeps them)."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    @classmethod
    def coerce(cls, value: object) -> Limits:
        """``value`` as :class:`Limits`: itself, or built from a mapping of its fields."""
        if isinstance(value, Limits):
            return value
        if isinstance(value, Mapping):
            unknown = sorted(set(value) - set(cls.__dataclass_fields__))
            if unknown:
                raise ConfigError(f"unknown limit {', '.join(map(str, unknown))}; the limits are "
                                  f"{', '.join(cls.__dataclass_fields__)}")
            return cls(**value)
        raise ConfigError(f"limits must be isolane.Limits(...) or a mapping of its fields, "
                          f"got {type(value).__name__}")

    def describe(self) -> str:
        """The limits as people read them: ``memory 2048 MB, cpu 3600 s, …``."""
        parts = [f"memory {self.memory_mb} MB" if self.memory_mb else "memory unlimited",
                 f"cpu {self.cpu_seconds:g} s" if self.cpu_seconds else "cpu unlimited",
                 f"open files {self.open_files}" if self.open_files else "open files unlimited",
                 f"processes {self.processes}" if self.processes else "processes unlimited",
                 f"output {self.output_mb:g} MB" if self.output_mb else "output unlimited",
                 f"event log {self.spool_mb:g} MB" if self.spool_mb else "event log unlimited"]
        return ", ".join(parts)


def _check_int(name: str, value: object, minimum: int, why: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be a whole number or None, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum} ({why}), or None for no limit; "
                          f"got {value}")


def _check_number(name: str, value: object, minimum: float) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number or None, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum:g}, or None for no limit; got {value}")


# -- the parent's explanation of a worker the kernel ended -----------------------------------------


def limit_crash(exit_code: int | None, limits: Limits | None) -> str | None:
    """The message naming the limit when ``exit_code`` proves one ended the worker, else ``None``."""
    if limits is None or exit_code is None:
        return None
    if exit_code == -signal.SIGXCPU and limits.cpu_seconds:
        return (f"LimitExceeded: CPU time limit of {limits.cpu_seconds:g} s reached (the kernel "
                "ended the worker with SIGXCPU); if the run needs more, raise it with "
                "RunSpec(limits=Limits(cpu_seconds=...))")
    return None


def crash_hint(exit_code: int | None, limits: Limits | None) -> str:
    """Limits that may explain a crash with ``exit_code`` (text to append, or ``""``)."""
    if limits is None or exit_code is None:
        return ""
    hints = []
    if exit_code == -signal.SIGKILL and limits.cpu_seconds:
        hints.append(f"the hard CPU limit ({limits.cpu_seconds + CPU_GRACE:g} s)")
    if exit_code in (-signal.SIGKILL, -signal.SIGSEGV, -signal.SIGABRT) and limits.memory_mb:
        hints.append(f"the memory limit ({limits.memory_mb} MB, a native allocation failed)")
    return f"; possibly {' or '.join(hints)}" if hints else ""
