"""A run's workspace as it was at a DAG node, rebuilt from its file events and the blob store.

::

    events (file_created / file_modified / file_deleted, dag_node_update)
        │ file_versions(store, run)            every version, in seq order
        │ node_end_seq(store, run, node)       where the node ended
        ▼ files_at(store, run, node)           {path: latest version at or before that seq}
    checkout(store, blobs, run, node, dest)   ── BlobStore.copy_to (hash verified) ──▶ dest/…

**The workspace at node N** is defined on the run's event log. Let ``S`` be the ``seq`` of N's
last ``dag_node_update`` with a final status (``completed``, ``failed`` or ``cancelled``: a node
run again after a resume counts by its last end). For every path, take the file event with the
highest ``seq <= S``; the path is in the workspace unless that event is a ``file_deleted``. The
worker scans the work dir just before it emits a node's final update, so this is exactly what
the directory held when the node ended (see :mod:`isolane.worker.files`).

Paths come from events a worker sent, and a worker runs untrusted code: every path is checked to
be a plain relative path (no ``..``, no absolute path, no empty or ``.`` component) and the
checkout creates directories and files relative to directory descriptors opened without
following links, so nothing is written outside ``dest``. Blob contents are verified against
their hash before a file is put in place.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Final

import msgspec

from isolane.errors import BlobError, ConfigError, PathEscape, RunStateError
from isolane.schemas.blobs import BlobStore, check_digest
from isolane.schemas.envelope import Event
from isolane.schemas.paths import open_dirs
from isolane.schemas.payloads import FileDeleted, FileEvent
from isolane.tracking.rows import FileRow
from isolane.tracking.store import Store

__all__ = [
    "FILE_EVENT_TYPES",
    "FINAL_NODE_STATUSES",
    "WorkspaceFile",
    "checkout",
    "file_baseline",
    "file_versions",
    "files_at",
    "files_upto",
    "node_end_seq",
    "restore_inherited",
    "write_workspace",
]

log = logging.getLogger(__name__)

#: The events that make up a run's workspace history.
FILE_EVENT_TYPES: Final = ("file_created", "file_modified", "file_deleted")
#: Statuses that end a node (the workspace at the node is taken at the last of them).
FINAL_NODE_STATUSES: Final = frozenset({"completed", "failed", "cancelled"})

_DEFAULT_MODE: Final = 0o644
_TMP_PREFIX: Final = ".isolane-checkout-"


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkspaceFile(FileRow):
    """A :class:`FileRow` read from its event, with what the ``files`` table does not keep:
    ``stored`` (the bytes are in the blob store) and ``mode`` (permission bits, if recorded)."""

    stored: bool = True
    mode: int | None = None

    @property
    def deleted(self) -> bool:
        return self.kind == "deleted"


def _row(event: Event) -> WorkspaceFile | None:
    try:
        if event.type == "file_deleted":
            gone = msgspec.convert(event.data, FileDeleted)
            return WorkspaceFile(run_id=event.run_id, seq=event.seq, path=gone.path, sha256="",
                                 size=0, version=gone.version, node_id=event.node_id,
                                 phase=gone.phase, agent=gone.agent, kind="deleted", ts=event.ts,
                                 stored=False)
        version = msgspec.convert(event.data, FileEvent)
    except msgspec.ValidationError as exc:
        log.warning("run %s: skipping malformed %s event %d: %s", event.run_id, event.type,
                    event.seq, exc)
        return None
    mode = event.data.get("mode")
    return WorkspaceFile(run_id=event.run_id, seq=event.seq, path=version.path,
                         sha256=version.sha256, size=version.size, version=version.version,
                         node_id=event.node_id, phase=version.phase, agent=version.agent,
                         kind=event.type.removeprefix("file_"), ts=event.ts,
                         stored=version.stored,
                         mode=mode & 0o777 if isinstance(mode, int) and not isinstance(mode, bool)
                         else None)


def file_versions(store: Store, run_id: str, *, upto_seq: int | None = None) -> list[WorkspaceFile]:
    """Every recorded version of every file of the run (deletions included), in seq order;
    only those with ``seq <= upto_seq`` when given."""
    return versions_of(store.events(run_id, types=FILE_EVENT_TYPES), upto_seq=upto_seq)


def versions_of(events: Iterable[Event], *, upto_seq: int | None = None) -> list[WorkspaceFile]:
    """The file versions that a run's file events (in seq order) record, up to ``upto_seq``."""
    rows: list[WorkspaceFile] = []
    for event in events:
        if upto_seq is not None and event.seq > upto_seq:
            break
        row = _row(event)
        if row is not None:
            rows.append(row)
    return rows


def _latest(rows: Iterable[WorkspaceFile]) -> dict[str, WorkspaceFile]:
    latest: dict[str, WorkspaceFile] = {}
    for row in rows:  # seq order: a later version replaces an earlier one
        latest[row.path] = row
    return latest


def files_upto(store: Store, run_id: str, seq: int) -> dict[str, WorkspaceFile]:
    """The workspace after event ``seq``: the latest version of each path not deleted, by path."""
    latest = _latest(file_versions(store, run_id, upto_seq=seq))
    return {path: latest[path] for path in sorted(latest) if not latest[path].deleted}


def node_end_seq(store: Store, run_id: str, node_id: str) -> int:
    """The ``seq`` of the last final ``dag_node_update`` of ``node_id`` (see the module doc).

    Raises :class:`ConfigError` naming the run's nodes when it has no such node, and
    :class:`RunStateError` when the node never ended.
    """
    updates = store.events(run_id, types=["dag_node_update"])
    ends = [e.seq for e in updates
            if e.node_id == node_id and e.data.get("status") in FINAL_NODE_STATUSES]
    if ends:
        return ends[-1]
    ended = sorted({e.node_id for e in updates
                    if e.node_id and e.data.get("status") in FINAL_NODE_STATUSES})
    known = ", ".join(ended) if ended else "(none yet)"
    if any(e.node_id == node_id for e in updates):
        raise RunStateError(
            f"node {node_id!r} of run {run_id} has not ended, so there is no workspace at it yet; "
            f"wait for it, or pick a node that ended: {known}")
    raise ConfigError(f"run {run_id} has no node {node_id!r}; nodes that ended: {known}")


def files_at(store: Store, run_id: str, node_id: str) -> dict[str, WorkspaceFile]:
    """The workspace of ``run_id`` as it was when ``node_id`` ended, by path (sorted).

    Errors as :func:`node_end_seq`.
    """
    return files_upto(store, run_id, node_end_seq(store, run_id, node_id))


def file_baseline(events: Iterable[Event]) -> dict[str, dict[str, Any]]:
    """What a new worker of the run starts from, given the run's file events in seq order
    (:data:`FILE_EVENT_TYPES`): each path's last version, deleted or not, in the shape of
    :data:`isolane.worker.files.FILES_RESUME_KEY`."""
    return {path: {"version": row.version, "sha256": row.sha256, "size": row.size,
                   "deleted": row.deleted}
            for path, row in _latest(versions_of(events)).items()}


# -- writing a workspace out -----------------------------------------------------------------------


def _parts(path: str, root: Path) -> tuple[str, ...]:
    """The components of a recorded path, which must be plain, relative and normalised."""
    pure = PurePosixPath(path)
    parts = tuple(path.split("/"))
    if not path or "\x00" in path or pure.is_absolute() or any(p in ("", ".", "..") for p in parts):
        raise PathEscape(
            f"recorded path {path!r} is not a plain relative path inside the workspace (it may "
            "have been forged by the run's code); refusing to write it anywhere. Inspect the "
            "run's file events with `isolane files`", path=path, root=str(root))
    return parts


def _open_dir(root_fd: int, parts: tuple[str, ...], path: str, root: Path) -> int:
    """Open (creating as needed) the directory ``parts`` under ``root_fd``, following no link."""
    try:
        return open_dirs(root_fd, parts, path=path, root=root, create=True)
    except NotADirectoryError:
        raise ConfigError(f"cannot write {path!r} in {root}: a component of its directory is a "
                          "file, not a directory; check out into an empty directory") from None


def _write_one(blobs: BlobStore, root_fd: int, row: WorkspaceFile, root: Path) -> None:
    parts = _parts(row.path, root)
    dir_fd = _open_dir(root_fd, parts[:-1], row.path, root)
    try:
        name = parts[-1]
        tmp = f"{_TMP_PREFIX}{uuid.uuid4().hex}"
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600,
                      dir_fd=dir_fd)
        try:
            try:
                blobs.copy_to(row.sha256, out)  # verifies the hash: a bad blob never lands
                os.fchmod(out, row.mode if row.mode is not None else _DEFAULT_MODE)
            finally:
                os.close(out)
            try:
                os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            except IsADirectoryError:
                raise ConfigError(f"cannot write {row.path!r} in {root}: a directory is in the "
                                  "way; check out into an empty directory") from None
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=dir_fd)
            except FileNotFoundError:
                pass
            raise
    finally:
        os.close(dir_fd)


def write_workspace(blobs: BlobStore, files: Mapping[str, WorkspaceFile],
                    dest_dir: str | os.PathLike[str], *, force: bool = False) -> list[WorkspaceFile]:
    """Write ``files`` (e.g. from :func:`files_at`) into ``dest_dir`` byte for byte.

    ``dest_dir`` is created if missing; an existing non-empty one is refused unless ``force``
    (then the workspace's files replace same-named ones and other files stay). Every path and
    every blob is checked before anything is written: a forged path raises
    :class:`PathEscape`, a file whose bytes were not stored (over ``max_blob_bytes``) or are
    missing raises :class:`BlobError`. A blob whose bytes do not match its hash raises
    :class:`BlobError` and that file is not written. Returns the rows written, by path.
    """
    dest = Path(dest_dir)
    rows = [files[path] for path in sorted(files)]
    for row in rows:
        _parts(row.path, dest)
        check_digest(row.sha256)
    missing = [row for row in rows if not blobs.has(row.sha256)]
    if missing:
        shown = ", ".join(f"{row.path} ({row.size} bytes{'' if row.stored else ', not stored'})"
                          for row in missing[:5]) + (", …" if len(missing) > 5 else "")
        not_stored = any(not row.stored for row in missing)
        raise BlobError(
            f"{len(missing)} file(s) of the workspace have no stored content: {shown}; "
            + ("files over the blob size limit are not stored: run again with a larger "
               "Executor(max_blob_bytes=...)" if not_stored else
               f"the blob directory {blobs.root} lacks them (was it cleaned, or is --home wrong?)"),
            sha256=missing[0].sha256, reason="not_stored" if not_stored else "missing")
    if dest.exists() or dest.is_symlink():
        if not dest.is_dir():
            raise ConfigError(f"{dest} exists and is not a directory; give a directory to write into")
        if not force and any(dest.iterdir()):
            raise ConfigError(f"{dest} is not empty; give a new or empty directory, or pass "
                              "--force (force=True) to overwrite the files it has in common")
    else:
        dest.mkdir(parents=True)
    root_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for row in rows:
            _write_one(blobs, root_fd, row, dest)
    finally:
        os.close(root_fd)
    log.info("wrote %d files into %s", len(rows), dest)
    return rows


def checkout(store: Store, blobs: BlobStore, run_id: str, node_id: str,
             dest_dir: str | os.PathLike[str], *, force: bool = False) -> list[WorkspaceFile]:
    """Write the workspace of ``run_id`` as it was when ``node_id`` ended into ``dest_dir``.

    See :func:`files_at` and :func:`write_workspace` for the rules and errors.
    """
    run = store.get_run(run_id)
    return write_workspace(blobs, files_at(store, run.id, node_id), dest_dir, force=force)


def restore_inherited(store: Store, home: str | os.PathLike[str], run_id: str,
                      work_dir: str | os.PathLike[str]) -> list[WorkspaceFile]:
    """Write the files a branch inherited from its parent into its (empty) ``work_dir``.

    A branch's inherited events are its first ``meta["inherited_through"]`` events (see
    :mod:`isolane.tracking.branching`); its workspace at start is the files they leave. Blobs are
    read from ``<home>/blobs``.
    """
    run = store.get_run(run_id)
    through = int(run.meta.get("inherited_through", 0))
    files = files_upto(store, run.id, through) if through else {}
    return write_workspace(BlobStore(Path(home) / "blobs"), files, work_dir)
