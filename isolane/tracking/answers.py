"""Posted answers: the durable hand-over of an answer to the process that drives the run.

::

    isolane answer / a second service          the run's owner (run-isolated, serve, a script)
    ─────────────────────────────────          ────────────────────────────────────────────────
    post(run, request, text) ── INSERT ──▶ posted_answers ──▶ unsettled(owned runs)   (polled)
                                                                 │ deliver to the worker
    settlement(id) ◀── SELECT ◀── settled_at, refused ◀── settle(id, refused=None | reason)

Only the owner's control pipe reaches a worker, so an answer from anywhere else is written here
and the owner delivers it. Settling erases the text: an answer to a ``password`` question is kept
no longer than it takes to deliver it (the worker records it hidden).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import insert, select, update

from isolane.tracking.models import ANSWERS_TABLE
from isolane.tracking.store import Store

__all__ = ["PostedAnswer", "Settlement", "abandon", "post", "settle", "settlement", "unsettled"]


@dataclass(frozen=True, slots=True)
class PostedAnswer:
    """An answer waiting for the run's owner to deliver it."""

    id: int
    run_id: str
    request_id: str
    text: str
    source: str


@dataclass(frozen=True, slots=True)
class Settlement:
    """What became of a posted answer: ``settled`` is False while the owner has not taken it;
    ``refused`` says why it was not delivered (``None``: delivered)."""

    settled: bool
    refused: str | None


def post(store: Store, run_id: str, request_id: str, text: str, *, source: str) -> int:
    """Keep ``text`` as the answer to ``request_id`` of ``run_id`` for its owner; the row's id."""
    with store.transaction(write=True) as conn:
        result = conn.execute(insert(ANSWERS_TABLE).values(
            run_id=run_id, request_id=request_id, text=text, source=source, posted_at=time.time()))
        key = result.inserted_primary_key
        assert key is not None
        return int(key[0])


def unsettled(store: Store, run_ids: Sequence[str]) -> list[PostedAnswer]:
    """Answers posted for ``run_ids`` and not settled yet, oldest first."""
    if not run_ids:
        return []
    table = ANSWERS_TABLE
    stmt = (select(table.c.id, table.c.run_id, table.c.request_id, table.c.text, table.c.source)
            .where(table.c.run_id.in_(list(run_ids)), table.c.settled_at.is_(None))
            .order_by(table.c.id))
    with store.transaction(write=False) as conn:
        return [PostedAnswer(id=int(row.id), run_id=row.run_id, request_id=row.request_id,
                             text=row.text, source=row.source) for row in conn.execute(stmt)]


def settle(store: Store, answer_id: int, *, refused: str | None = None) -> None:
    """Mark the posted answer delivered (``refused=None``) or refused, and erase its text."""
    with store.transaction(write=True) as conn:
        conn.execute(update(ANSWERS_TABLE).where(ANSWERS_TABLE.c.id == answer_id).values(
            settled_at=time.time(), refused=refused, text=""))


def abandon(store: Store, run_id: str, *, reason: str) -> int:
    """Refuse every answer still waiting for ``run_id`` (it ended), erasing their text; how many."""
    with store.transaction(write=True) as conn:
        result = conn.execute(update(ANSWERS_TABLE).where(
            ANSWERS_TABLE.c.run_id == run_id, ANSWERS_TABLE.c.settled_at.is_(None)).values(
            settled_at=time.time(), refused=reason, text=""))
        return int(result.rowcount or 0)


def settlement(store: Store, answer_id: int) -> Settlement:
    """What became of the posted answer ``answer_id`` so far."""
    stmt = select(ANSWERS_TABLE.c.settled_at, ANSWERS_TABLE.c.refused).where(
        ANSWERS_TABLE.c.id == answer_id)
    with store.transaction(write=False) as conn:
        row = conn.execute(stmt).first()
    if row is None:
        return Settlement(settled=True, refused="the posted answer is gone (its run was deleted)")
    return Settlement(settled=row.settled_at is not None, refused=row.refused)
