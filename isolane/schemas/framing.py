"""Frames on a worker's event pipe: a 4-byte length, then that many bytes of JSON.

::

    worker Emitter ── FRAME_HEADER.pack(len(frame)) + frame ──▶ event pipe ──▶ parent FrameReader

A frame is one JSON array of envelopes (:func:`isolane.schemas.envelope.encode_batch`); the same
bytes, followed by a newline, are one line of the run's spool (:mod:`isolane.schemas.spool`).
A frame larger than :data:`~isolane.schemas.envelope.MAX_FRAME_BYTES` is refused by the parent.
"""

from __future__ import annotations

import struct
from typing import Final

from isolane.schemas.envelope import MAX_FRAME_BYTES

__all__ = ["FRAME_HEADER", "MAX_FRAME_BYTES"]

#: A 4-byte unsigned big-endian length, then that many bytes of JSON.
FRAME_HEADER: Final = struct.Struct("!I")
