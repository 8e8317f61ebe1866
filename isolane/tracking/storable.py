"""The stored form of text: one form every backend accepts, identical on SQLite and PostgreSQL.

PostgreSQL refuses the character U+0000 (NUL) everywhere: in a ``text`` value (psycopg raises
``DataError`` before sending it) and, written as the JSON escape ``\\u0000``, in ``jsonb``
(``UntranslatableCharacter``). SQLite would keep it. A workflow that prints ``"\\x00"`` or emits a
string holding one must neither stall the store nor be stored differently on each backend, so
isolane stores **U+FFFD (REPLACEMENT CHARACTER) in place of every U+0000**: in text columns, in
JSON data (keys and values) and in the event log, whoever writes them. U+FFFD is also what the
worker's output capture already stores for bytes that are not UTF-8, so a reader meets one
marker for "a character that could not be kept".

Cost: the hot path pays one C-level substring search per event row (:func:`storable_events`);
rows are rebuilt only when a NUL is found.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from operator import itemgetter
from typing import Any, Final

from isolane.schemas.envelope import EventRow

__all__ = ["NUL_REPLACEMENT", "storable_events", "storable_fields", "storable_json", "storable_text"]

#: What is stored in place of U+0000.
NUL_REPLACEMENT: Final = "\ufffd"

_NUL: Final = "\x00"
_NUL_ESCAPE: Final = "\\u0000"
# A JSON escape is a backslash and the character after it (``\\uXXXX`` continues with four hex
# digits, which hold no backslash), so scanning escape by escape from the left never mistakes an
# escaped backslash followed by "u0000" (``\\\\u0000``, the six characters ``\\u0000``) for NUL.
_ESCAPES: Final = re.compile(r"\\u0000|\\.", re.DOTALL)

_DATA: Final = itemgetter(5)
_NODE: Final = itemgetter(4)


def _stored_escape(match: re.Match[str]) -> str:
    escape = match.group()
    # The character itself, as orjson writes U+FFFD: the text is then what encoding the
    # replaced value gives.
    return NUL_REPLACEMENT if escape == _NUL_ESCAPE else escape


def storable_text(value: str) -> str:
    """``value`` with every U+0000 replaced by :data:`NUL_REPLACEMENT`."""
    return value.replace(_NUL, NUL_REPLACEMENT) if _NUL in value else value


def storable_json(text: str) -> str:
    """JSON ``text`` whose strings (keys included) hold no U+0000; otherwise unchanged, byte for
    byte. A raw NUL (invalid JSON, which no encoder writes) is replaced as well."""
    if _NUL_ESCAPE in text:
        text = _ESCAPES.sub(_stored_escape, text)
    return storable_text(text)


def storable_events(rows: Sequence[EventRow]) -> Sequence[EventRow]:
    """Event rows ``(run_id, seq, ts, type, node_id, data_json)`` in their stored form.

    Returns ``rows`` itself when no row holds a NUL (the common case: two substring searches
    over the batch), else a new list. ``run_id`` and ``type`` are not looked at: the parent
    checked both against its own values when it decoded the frame.
    """
    if not rows:
        return rows
    if _NUL_ESCAPE not in "".join(map(_DATA, rows)) and _NUL not in "".join(
            filter(None, map(_NODE, rows))):
        return rows
    return [_storable_row(row) for row in rows]


def _storable_row(row: EventRow) -> EventRow:
    run_id, seq, ts, type_, node_id, data = row
    return (run_id, seq, ts, type_, None if node_id is None else storable_text(node_id),
            storable_json(data))


def storable_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Column values with every ``str`` in its stored form (JSON columns are handled by the
    engine's JSON serializer, which applies :func:`storable_json`)."""
    return {name: storable_text(value) if isinstance(value, str) else value
            for name, value in fields.items()}
