"""The content-addressed blob store: file contents by SHA-256, under ``<home>/blobs/``.

::

    worker (FileScanner)                       <home>/blobs/                      parent / CLI
    ────────────────────                       ─────────────                      ────────────
    BlobStore.ingest(fd) ── one read pass ──▶  aa/.tmp-XXXX  ── os.replace ──▶  aa/bbbb…(64 hex)
      hashes while copying; a blob already                                     BlobStore.read / copy_to
      present is not written again (dedup                                      re-hash while reading;
      across runs and branches)                                                 a mismatch is BlobError

A blob is the exact bytes of one file version, named by their SHA-256 in lowercase hex: the first
two characters are a directory, the other 62 the file name. Writes are atomic (a temporary file
in the same directory, then :func:`os.replace`), so a reader never sees half a blob.

Permissions: a blob is never wider than any file it was stored from. It keeps the read bits of
its source (a 0600 file becomes a 0400 blob, a 0644 one 0444), is always readable by its owner,
never writable or executable; when the same bytes are stored again from a file with narrower
permissions, the blob is narrowed to what both allow. Blob directories (the root and each
two-character prefix) are ``0700``: only their owner may list or enter them, and an older,
wider one is narrowed when the store writes into it.

The directory is shared by every run and written by workers, which run code an LLM wrote: a blob
may have been planted with the wrong content, or replaced by a link. Readers therefore open blobs
without following links and verify the hash of what they read; a mismatch raises
:class:`~isolane.errors.BlobError` before any of the bytes are used (``copy_to`` callers write to a
temporary file and keep it only once the copy verified).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from isolane.errors import BlobError

__all__ = [
    "CHUNK_BYTES",
    "DEFAULT_MAX_BLOB_BYTES",
    "BlobStore",
    "Ingested",
    "check_digest",
    "hash_fd",
]

log = logging.getLogger(__name__)

#: Files larger than this are hashed but not stored (``stored: false``) unless configured.
DEFAULT_MAX_BLOB_BYTES: Final = 50 * 1024 * 1024
#: Read and write in chunks of this size.
CHUNK_BYTES: Final = 1024 * 1024

_DIGEST: Final = re.compile(r"[0-9a-f]{64}")
_TMP_PREFIX: Final = ".tmp-"
#: Permission bits of blob directories: their owner only.
_DIR_MODE: Final = 0o700
#: Permission bits of a blob stored from bytes with no source file (shipped from a node).
_BYTES_MODE: Final = 0o400


def _blob_mode(source_mode: int) -> int:
    """A blob's permission bits for a source file's: its read bits, always the owner's."""
    return (source_mode & 0o444) | 0o400


def check_digest(sha256: str) -> str:
    """Return ``sha256`` if it is 64 lowercase hex digits, else raise :class:`BlobError`.

    A digest becomes a path under the blob directory, so nothing else may pass.
    """
    if not isinstance(sha256, str) or not _DIGEST.fullmatch(sha256):
        raise BlobError(f"{sha256!r} is not a SHA-256 digest (64 lowercase hex digits); the "
                        "recorded file event is malformed", sha256=str(sha256), reason="invalid")
    return sha256


def hash_fd(fd: int) -> tuple[str, int]:
    """``(sha256, size)`` of what can be read from ``fd`` (from its current offset)."""
    digest = hashlib.sha256()
    size = 0
    while True:
        chunk = os.read(fd, CHUNK_BYTES)
        if not chunk:
            return digest.hexdigest(), size
        digest.update(chunk)
        size += len(chunk)


@dataclass(frozen=True, slots=True)
class Ingested:
    """What :meth:`BlobStore.ingest` read: the digest and size of the bytes, and whether they
    are in the store now (``False`` when larger than the limit or when no store was given)."""

    sha256: str
    size: int
    stored: bool


class BlobStore:
    """Blobs under ``root`` (usually ``<home>/blobs``); safe to share between processes."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root: Final = Path(root)

    def __repr__(self) -> str:
        return f"BlobStore({str(self.root)!r})"

    def path_of(self, sha256: str) -> Path:
        """Where the blob ``sha256`` lives (whether or not it exists)."""
        check_digest(sha256)
        return self.root / sha256[:2] / sha256[2:]

    def has(self, sha256: str) -> bool:
        """Whether a regular file exists for ``sha256`` (its content is checked only on read)."""
        try:
            return stat.S_ISREG(os.lstat(self.path_of(sha256)).st_mode)
        except FileNotFoundError:
            return False

    # -- writing (worker side) ----------------------------------------------------------------

    def put_bytes(self, data: bytes, *, mode: int = _BYTES_MODE) -> str:
        """Store ``data``; return its digest (an existing blob is only narrowed to ``mode``'s
        read bits). ``mode``: the permission bits of the file the bytes came from, if known."""
        sha256 = hashlib.sha256(data).hexdigest()
        blob_mode = _blob_mode(mode)
        if self._present(sha256, len(data)):
            self._narrow(sha256, blob_mode)
            return sha256
        _private_dir(self.root)
        fd, name = _mkstemp(self.root)
        tmp = Path(name)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            self._commit(tmp, sha256, blob_mode)
        except BaseException:
            _unlink(tmp)
            raise
        return sha256

    def ingest(self, fd: int, *, max_bytes: int | None = DEFAULT_MAX_BLOB_BYTES) -> Ingested:
        """Hash the file open on ``fd`` from its current offset, storing a copy on the way.

        One read pass: the bytes hashed are exactly the bytes stored, even if the file changes
        meanwhile. Once more than ``max_bytes`` (``None``: no limit) have been read the copy is
        abandoned and hashing continues (``stored=False``). The blob's permissions follow the
        file's (see the module docstring). The caller keeps ownership of ``fd``.
        """
        digest = hashlib.sha256()
        size = 0
        blob_mode = _blob_mode(os.fstat(fd).st_mode)
        _private_dir(self.root)
        out: int | None
        out, tmp_name = _mkstemp(self.root)
        tmp: Path | None = Path(tmp_name)
        try:
            while True:
                chunk = os.read(fd, CHUNK_BYTES)
                if not chunk:
                    break
                digest.update(chunk)
                size += len(chunk)
                if out is not None:
                    if max_bytes is not None and size > max_bytes:
                        os.close(out)
                        out = None
                        _unlink(tmp)
                        tmp = None
                    else:
                        _write_all(out, chunk)
            sha256 = digest.hexdigest()
            if out is None or tmp is None:
                return Ingested(sha256, size, stored=False)
            os.close(out)
            out = None
            if self._present(sha256, size):
                _unlink(tmp)
                self._narrow(sha256, blob_mode)
            else:
                self._commit(tmp, sha256, blob_mode)
            tmp = None
            return Ingested(sha256, size, stored=True)
        finally:
            if out is not None:
                os.close(out)
            if tmp is not None:
                _unlink(tmp)

    def _present(self, sha256: str, size: int) -> bool:
        # A blob of the right size is trusted here (dedup); a wrong one of another size (planted,
        # truncated) is replaced. Readers verify the hash either way.
        try:
            info = os.lstat(self.path_of(sha256))
        except FileNotFoundError:
            return False
        return stat.S_ISREG(info.st_mode) and info.st_size == size

    def _commit(self, tmp: Path, sha256: str, mode: int) -> None:
        """Move a finished temporary file into place, read-only (``mode``), atomically."""
        target = self.path_of(sha256)
        _private_dir(target.parent)
        os.chmod(tmp, mode)  # mkstemp made it 0600: never wider than mode on the way
        os.replace(tmp, target)  # same filesystem: tmp lives in root

    def _narrow(self, sha256: str, mode: int) -> None:
        """Take from an existing blob every permission bit ``mode`` lacks (the same bytes came
        from a file with narrower permissions)."""
        try:  # by descriptor, without following a link planted in its place
            fd = os.open(self.path_of(sha256), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError as exc:
            log.warning("cannot narrow the permissions of blob %s: %s", sha256[:12], exc)
            return
        try:
            current = stat.S_IMODE(os.fstat(fd).st_mode)
            if current & ~mode:
                os.fchmod(fd, current & mode)
        except OSError as exc:  # another user's blob in a shared directory
            log.warning("cannot narrow the permissions of blob %s: %s", sha256[:12], exc)
        finally:
            os.close(fd)

    # -- reading (parent side) ----------------------------------------------------------------

    def digests(self) -> list[str]:
        """The digests of the committed blobs (``aa/<62 hex>``; temporary files are not)."""
        try:
            prefixes = [e for e in os.scandir(self.root)
                        if len(e.name) == 2 and e.is_dir(follow_symlinks=False)]
        except FileNotFoundError:
            return []
        found = [prefix.name + entry.name for prefix in prefixes for entry in os.scandir(prefix.path)]
        return [sha256 for sha256 in found if _DIGEST.fullmatch(sha256)]

    def remove(self, sha256: str) -> None:
        """Delete a blob (an outbox emptied once its blobs were shipped); missing is fine."""
        try:
            os.unlink(self.path_of(sha256))
        except FileNotFoundError:
            pass

    def read(self, sha256: str) -> bytes:
        """The blob's bytes, verified; :class:`BlobError` if missing or not matching its name."""
        chunks: list[bytes] = []
        self._stream(sha256, chunks.append)
        return b"".join(chunks)

    def copy_to(self, sha256: str, out_fd: int) -> int:
        """Write the blob to ``out_fd``; return the byte count. Raises :class:`BlobError` (after
        writing) when the bytes do not hash to ``sha256``: the caller discards what it wrote."""
        return self._stream(sha256, lambda chunk: _write_all(out_fd, chunk))

    def verify(self, sha256: str) -> bool:
        """Whether the blob exists and its bytes hash to its name."""
        try:
            self._stream(sha256, lambda chunk: None)
        except BlobError:
            return False
        return True

    def _stream(self, sha256: str, sink: Callable[[bytes], object]) -> int:
        path = self.path_of(sha256)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            raise BlobError(f"blob {sha256[:12]} is missing from {self.root}; the file's content "
                            "was not stored (or the blob directory was cleaned), so it cannot be "
                            "restored", sha256=sha256, reason="missing") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise BlobError(f"blob {path} is a symbolic link, not a stored blob; it was planted "
                                "by a worker: delete it and re-run the run that made it",
                                sha256=sha256, reason="corrupt") from None
            raise
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise BlobError(f"blob {path} is not a regular file; delete it and re-run the "
                                "run that made it", sha256=sha256, reason="corrupt")
            digest = hashlib.sha256()
            size = 0
            while True:
                chunk = os.read(fd, CHUNK_BYTES)
                if not chunk:
                    break
                digest.update(chunk)
                size += len(chunk)
                sink(chunk)
        finally:
            os.close(fd)
        actual = digest.hexdigest()
        if actual != sha256:
            log.warning("blob %s hashes to %s", path, actual)
            raise BlobError(
                f"blob {path} does not match its name: its content hashes to {actual[:12]}…, not "
                f"{sha256[:12]}…; it was altered or planted (workers can write the blob "
                "directory): delete it and re-run the run that produced the file",
                sha256=sha256, reason="corrupt")
        return size


def _private_dir(path: Path) -> None:
    """Make ``path`` (and missing parents) a directory only its owner may list or enter; narrow
    an existing one that is wider (made by an older isolane), when it is ours."""
    try:
        path.mkdir(mode=_DIR_MODE, parents=True)
        return
    except FileExistsError:
        pass
    info = os.lstat(path)
    if stat.S_ISDIR(info.st_mode) and stat.S_IMODE(info.st_mode) & ~_DIR_MODE \
            and info.st_uid == os.geteuid():
        os.chmod(path, stat.S_IMODE(info.st_mode) & _DIR_MODE)


def _mkstemp(root: Path) -> tuple[int, str]:
    return tempfile.mkstemp(prefix=_TMP_PREFIX, dir=root)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _unlink(path: Path | None) -> None:
    if path is not None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
