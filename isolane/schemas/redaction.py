"""Secret redaction: API keys, bearer tokens and configured secret values never leave the worker.

::

    Emitter.emit(): data encoded ──▶ journal: screen (may_hold_secret) ──▶ spool
                                          └─ may hold one: Redactor.redact_json(data),
                                             redact_text(type, node_id) ──▶ spool

The emitter redacts each event in ``emit()``, before it is written to the spool; the parent reads
nothing else, so the spool, the store, ``isolane events`` and every reader after them only ever
see redacted bytes. The common case is a screen of a few substring searches over the event's
encoded pieces (:func:`may_hold_secret`); a regular expression runs only on a piece that may hold
a secret. What is redacted, replaced by ``[REDACTED]``:

* OpenAI and Anthropic style keys: ``sk-…``, ``sk-proj-…``, ``sk-ant-api03-…`` (``sk-`` followed by
  at least 16 key characters, not preceded by a letter or digit);
* bearer tokens: the token after ``Bearer`` (any case), as in ``Authorization: Bearer …``;
* configured secret values: every value given in ``RunSpec(secrets=[...])``, and the values of
  the worker's environment variables (``RunSpec.env`` and the inherited allow-list alike) whose
  names look like credentials (``…KEY``, ``…TOKEN``, ``…SECRET…``, ``…PASSWORD…``,
  ``…CREDENTIAL…``, ``…AUTH…``), at least 8 characters long, whatever their shape (``ghp_…``,
  ``AKIA…``, a password); and any environment value that is a URL with a password, whatever
  its name: the whole URL and the password (as written and percent-decoded).

A line of output longer than 64 KiB is cut into several events; :meth:`Redactor.safe_cut` keeps
every cut outside a secret, so that each piece holds a secret whole or not at all.

The replacement has no quote and no backslash, and the patterns cannot span one, so the record
stays valid JSON; a replacement that would cut a JSON escape in two (a secret starting right after
a ``\\n``) is detected and that record is redacted value by value instead.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final
from urllib.parse import unquote

import orjson

from isolane.errors import ConfigError

__all__ = ["MIN_SECRET_LENGTH", "REDACTED", "Redactor", "may_hold_secret", "secret_values"]

log = logging.getLogger(__name__)

REDACTED: Final = "[REDACTED]"
#: Shorter configured secrets would redact ordinary words; they are refused (or skipped in env).
MIN_SECRET_LENGTH: Final = 8

_CREDENTIAL_NAME: Final = re.compile(
    r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH|PRIVATE)", re.IGNORECASE)
#: ``scheme://user:password@host...``: the password group.
_URL_PASSWORD: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^/?#@:\s]*:([^/?#@\s]+)@")

# The lookbehinds sit after the literal "sk-" so the engine can search for the literal first.
_KEY: Final = r"sk-(?:(?<![A-Za-z0-9]sk-)|(?<=\\[nrt]sk-))[A-Za-z0-9_\-]{16,}"
_BEARER: Final = r"((?i:bearer)(?: |\\t)+)[A-Za-z0-9._~+/=\-]{8,}"
_KEY_B: Final = re.compile(_KEY.encode())
_BEARER_B: Final = re.compile(_BEARER.encode())
_KEY_S: Final = re.compile(_KEY.replace(r"(?<=\\[nrt]sk-)", r"(?<=[\n\r\t]sk-)"))
_BEARER_S: Final = re.compile(_BEARER.replace(r"(?: |\\t)+", r"[ \t]+"))
_REDACTED_B: Final = REDACTED.encode()
# Where a pattern secret may lie in raw text, drawn wider than the patterns (no minimum length,
# no lookbehind): a cut must stay out of anything that could become a key once it is whole.
_KEY_RUN: Final = re.compile(rb"sk-[A-Za-z0-9_\-]*")
_BEARER_RUN: Final = re.compile(rb"(?i:bearer)[ \t]*[A-Za-z0-9._~+/=\-]*")


def secret_values(env: Mapping[str, str] | None = None, secrets: Iterable[str] = ()) -> tuple[str, ...]:
    """The values to redact for a run: ``secrets`` plus the credential-like values of ``env``.

    Raises :class:`ConfigError` for an explicit secret shorter than :data:`MIN_SECRET_LENGTH`.
    """
    values: list[str] = []
    for secret in secrets:
        if not isinstance(secret, str):
            raise ConfigError(f"secrets must be strings, got {type(secret).__name__}")
        if len(secret) < MIN_SECRET_LENGTH:
            raise ConfigError(f"a secret must be at least {MIN_SECRET_LENGTH} characters long, or "
                              f"redacting it would rewrite ordinary text; got one of {len(secret)}")
        values.append(secret)
    for name, value in (env or {}).items():
        if _CREDENTIAL_NAME.search(name) and len(value) >= MIN_SECRET_LENGTH:
            values.append(value)
        # A URL with a password, whatever its variable is called (APP_DB_URL, BROKER, ...).
        if (url := _URL_PASSWORD.match(value)) is not None:
            values.append(value)
            password = url.group(1)
            values.extend(p for p in {password, unquote(password)} if len(p) >= MIN_SECRET_LENGTH)
    # Longest first, so a secret that contains another is replaced whole.
    return tuple(sorted(set(values), key=len, reverse=True))


def may_hold_secret(text: str, values: tuple[str, ...]) -> bool:
    """Could ``text`` (encoded JSON, or a piece of it) hold a secret? False means it cannot.

    This runs once per event, so it is built from the cheapest tests there are: ``in`` on text
    (on bytes, ``needle in frame`` builds and drops a TypeError every time). A one-character
    ``in`` is a ``memchr``; a short needle such as ``"sk-"`` is a slow scan on a record full of
    digits (they collide with its letters in CPython's search filter). So each pattern is first
    looked for by a character it cannot match without:

    * a key (``sk-`` and key characters) holds a ``-``;
    * a bearer token follows ``bearer`` (any case) and a space or an escaped tab (``\\t``): no
      space and no backslash, no token; else the lowered text is searched, so ``BeArEr`` is
      caught as the redacting pattern catches it;
    * a configured secret ``values`` (as JSON writes them) is searched as it is (long needles
      are quick to rule out).

    The worker's compiled journal (``isolane/worker/_journal.c``) applies the same tests.
    """
    if "-" in text and "sk-" in text:
        return True
    if (" " in text or "\\" in text) and "bearer" in text.lower():
        return True
    for value in values:  # not any(<generator>): that costs more than the searches
        if value in text:
            return True
    return False


class Redactor:
    """Redact one encoded frame: ``redactor(frame) -> frame``. Thread-safe, stateless per call."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets = tuple(sorted(set(secrets), key=len, reverse=True))
        # A secret appears in a frame as it is written inside a JSON string.
        encoded = [orjson.dumps(s)[1:-1] for s in self.secrets]
        # Secrets containing "sk-" need no search of their own unless the frame holds "sk-".
        self._with_key_prefix = [e for e in encoded if b"sk-" in e]
        self._others = [e for e in encoded if b"sk-" not in e]
        self._raw = [s.encode() for s in self.secrets]  # as they appear in a worker's output
        #: The configured secrets that :func:`may_hold_secret` searches for (those holding
        #: ``sk-`` are found by its ``sk-`` test): ``(as JSON writes them, as text)``.
        self.needles: tuple[tuple[bytes, ...], tuple[bytes, ...]] = (
            tuple(self._others), tuple(s.encode() for s in self.secrets if "sk-" not in s))
        self._screened = tuple(e.decode() for e in self._others)

    def __call__(self, frame: bytes) -> bytes:
        """``frame`` unchanged when it cannot hold a secret (:func:`may_hold_secret`), else
        redacted (:meth:`redact_json`); a frame that is not UTF-8 is redacted."""
        try:
            text = frame.decode()
        except UnicodeDecodeError:
            return self.redact_json(frame)
        return self.redact_json(frame) if may_hold_secret(text, self._screened) else frame

    def redact_json(self, frame: bytes) -> bytes:
        """Redact encoded JSON (a record, or an event's ``data``); it stays valid JSON."""
        original = frame
        if b"sk-" in frame:
            for encoded in self._with_key_prefix:
                if encoded in frame:
                    frame = frame.replace(encoded, _REDACTED_B)
            frame = _KEY_B.sub(_REDACTED_B, frame)
        for encoded in self._others:
            if encoded in frame:
                frame = frame.replace(encoded, _REDACTED_B)
        if b"bearer" in frame.lower():
            frame = _BEARER_B.sub(rb"\1" + _REDACTED_B, frame)
        if frame is original:
            return frame
        try:
            orjson.loads(frame)
        except orjson.JSONDecodeError:
            return self._redact_values(original)
        return frame

    def safe_cut(self, data: bytes, cut: int) -> int:
        """The largest position ``<= cut`` where raw text ``data`` may be split in two without
        cutting a secret (a configured value, or anything shaped like a key or a bearer token).

        The output pump cuts over-long lines into events and each event is redacted on its own,
        so a secret cut in two would be stored as two unredacted halves. ``data`` must reach past
        ``cut`` by the longest secret (see :attr:`reach`) for a secret across ``cut`` to be seen.
        A secret that starts at 0 and covers ``cut`` (longer than the line limit) cannot be moved
        away from: ``cut`` is returned and the secret is split.
        """
        spans = [m.span() for m in _KEY_RUN.finditer(data)] if b"sk-" in data else []
        if b"bearer" in data.lower():  # any case, as the pattern matches
            spans.extend(m.span() for m in _BEARER_RUN.finditer(data))
        for secret in self._raw:
            start = data.find(secret, max(cut - len(secret) + 1, 0))
            while start != -1 and start < cut:
                spans.append((start, start + len(secret)))
                start = data.find(secret, start + 1)
        moved = True
        while moved:  # a cut moved back may land inside an earlier span: look again
            moved = False
            for start, end in spans:
                if 0 < start < cut < end:
                    cut, moved = start, True
        return cut

    @property
    def reach(self) -> int:
        """How far past a cut :meth:`safe_cut` must see: the longest configured secret's bytes."""
        return max((len(s) for s in self._raw), default=0)

    def redact_text(self, text: str) -> str:
        """Redact one string (the same rules, applied to text rather than encoded JSON)."""
        if "sk-" in text:
            text = _KEY_S.sub(REDACTED, text)
        if "bearer" in text.lower():
            text = _BEARER_S.sub(r"\1" + REDACTED, text)
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def redact_value(self, value: Any) -> Any:
        """Redact every string (keys included) inside a JSON-like value."""
        if isinstance(value, str):
            return self.redact_text(value)
        if isinstance(value, dict):
            return {self.redact_value(k): self.redact_value(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.redact_value(v) for v in value]
        return value

    def _redact_values(self, frame: bytes) -> bytes:
        log.debug("a secret sat next to a JSON escape; redacting this frame value by value")
        return orjson.dumps(self.redact_value(orjson.loads(frame)))
