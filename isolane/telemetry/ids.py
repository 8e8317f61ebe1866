"""Trace and span ids derived from a run's own ids, so that exporting a run twice gives the same
spans (a backend that keys spans by id, as Phoenix does, keeps one copy).

::

    trace_id(run_id)       = the first 128 bits of sha256("isolane.trace" NUL run_id)
    span_id(run_id, key)   = the first  64 bits of sha256("isolane.span" NUL run_id NUL key)

``key`` names the span within its run: ``run``, ``attempt:N``, ``node:NODE_ID`` or ``seq:SEQ``
(the event that makes the span). An all-zero id is invalid in OpenTelemetry; the hash gives one
with probability 2**-64, and it is then replaced by 1.
"""

from __future__ import annotations

import hashlib

__all__ = ["attempt_key", "node_key", "seq_key", "span_id", "trace_id"]

RUN_KEY = "run"


def _bits(*parts: str, size: int) -> int:
    digest = hashlib.sha256("\0".join(parts).encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:size], "big") or 1


def trace_id(run_id: str) -> int:
    """The 128-bit trace id of a run (one run, one trace)."""
    return _bits("isolane.trace", run_id, size=16)


def span_id(run_id: str, key: str) -> int:
    """The 64-bit id of the span ``key`` names in run ``run_id``."""
    return _bits("isolane.span", run_id, key, size=8)


def attempt_key(attempt: int) -> str:
    return f"attempt:{attempt}"


def node_key(node_id: str) -> str:
    return f"node:{node_id}"


def seq_key(seq: int) -> str:
    return f"seq:{seq}"
