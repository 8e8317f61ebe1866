"""Paths that must stay inside a directory: a run's work dir, a checkout target.

A worker runs code an LLM wrote, in its own directory, as the same user as the parent. Anything
in that directory may be a trap planted for whoever reads or writes it next: a symbolic link to
``/etc``, a ``..`` in a recorded path, a hard link to a file elsewhere. File tracking and
``isolane checkout`` go through this module, which refuses all of them with :class:`PathEscape`:

* :func:`resolve_inside` – check a path (no ``..``, no absolute path outside the root, no link in
  any component, no hard-linked file) and return it absolute;
* :func:`open_inside` – open it without a window between check and use: each component is
  opened relative to the previous one with ``O_NOFOLLOW``, so a directory swapped for a link
  meanwhile is refused too;
* :func:`walk_files` – the regular files under a root, links skipped, never followed.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePath

from isolane.errors import PathEscape

__all__ = ["open_dirs", "open_inside", "resolve_inside", "walk_files"]

log = logging.getLogger(__name__)

StrPath = str | os.PathLike[str]


def _parts(root: Path, path: StrPath) -> list[str]:
    """The components of ``path`` below ``root``; refuses ``..`` and outside absolute paths."""
    raw = os.fspath(path)
    if "\x00" in raw:
        raise PathEscape(f"path {raw!r} contains a NUL byte; give a plain relative path",
                         path=raw, root=str(root))
    pure = PurePath(raw)
    if pure.is_absolute():
        try:
            pure = pure.relative_to(root)
        except ValueError:
            raise PathEscape(f"path {raw!r} is outside {root}; give a path relative to it",
                             path=raw, root=str(root)) from None
    parts = [p for p in pure.parts if p not in ("", ".")]
    if ".." in parts:
        raise PathEscape(f"path {raw!r} contains '..', which could lead outside {root}; "
                         "give a path without '..'", path=raw, root=str(root))
    return parts


def resolve_inside(root: StrPath, path: StrPath, *, must_exist: bool = False,
                   allow_hardlinks: bool = False) -> Path:
    """``path`` (relative to ``root``, or absolute under it) as an absolute path inside ``root``.

    Raises :class:`PathEscape` when ``path`` has a ``..`` component, is absolute outside
    ``root``, passes through a symbolic link, or is a regular file with more than one hard link
    (unless ``allow_hardlinks``). With ``must_exist``, a missing path raises
    :class:`FileNotFoundError`. ``root`` itself is trusted and resolved.
    """
    base = Path(root).resolve(strict=True)
    parts = _parts(base, path)
    current = base
    for index, part in enumerate(parts):
        current = current / part
        try:
            info = os.lstat(current)
        except FileNotFoundError:
            if must_exist:
                raise FileNotFoundError(errno.ENOENT, f"no such file inside {base}",
                                        os.fspath(path)) from None
            return base.joinpath(*parts)
        if stat.S_ISLNK(info.st_mode):
            target = os.readlink(current)
            raise PathEscape(
                f"path {os.fspath(path)!r} goes through {current.relative_to(base)}, a symbolic "
                f"link to {target!r}; links inside {base} are never followed",
                path=os.fspath(path), root=str(base))
        last = index == len(parts) - 1
        if not last and not stat.S_ISDIR(info.st_mode):
            raise NotADirectoryError(errno.ENOTDIR, f"not a directory inside {base}", str(current))
        if last and stat.S_ISREG(info.st_mode) and info.st_nlink > 1 and not allow_hardlinks:
            raise PathEscape(
                f"path {os.fspath(path)!r} is a file with {info.st_nlink} hard links, which may "
                f"point outside {base}; copy it instead of linking it",
                path=os.fspath(path), root=str(base))
    return current


def open_inside(root: StrPath, path: StrPath, flags: int = os.O_RDONLY, mode: int = 0o600, *,
                allow_hardlinks: bool = False) -> int:
    """Open ``path`` inside ``root`` and return the file descriptor, following no link.

    Every directory on the way is opened relative to its parent with ``O_NOFOLLOW``, so the
    check and the open cannot be raced. ``flags`` may include ``O_CREAT``/``O_WRONLY``/
    ``O_TRUNC`` (a checkout writing files); missing directories are not created. Raises
    :class:`PathEscape` as :func:`resolve_inside` does.
    """
    base = Path(root).resolve(strict=True)
    parts = _parts(base, path)
    if not parts:
        raise IsADirectoryError(errno.EISDIR, "the root itself is not a file", str(base))
    root_fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
    try:
        dir_fd = open_dirs(root_fd, parts[:-1], path=path, root=base)
    finally:
        os.close(root_fd)
    try:
        try:
            fd = os.open(parts[-1], flags | os.O_NOFOLLOW, mode, dir_fd=dir_fd)
        except OSError as exc:
            _raise_if_link(exc, parts[-1], dir_fd, path, base)
            raise
    finally:
        os.close(dir_fd)
    info = os.fstat(fd)
    if stat.S_ISREG(info.st_mode) and info.st_nlink > 1 and not allow_hardlinks:
        os.close(fd)
        raise PathEscape(f"path {os.fspath(path)!r} is a file with {info.st_nlink} hard links, "
                         f"which may point outside {base}; copy it instead of linking it",
                         path=os.fspath(path), root=str(base))
    return fd


def open_dirs(dir_fd: int, parts: Sequence[str], *, path: StrPath, root: Path,
              create: bool = False) -> int:
    """Open the directory ``parts`` below ``dir_fd`` one component at a time, each relative to
    the last with ``O_NOFOLLOW`` (``create``: making missing ones); return a new descriptor.

    The one safe descent of isolane (reading a work dir, writing a checkout). Raises
    :class:`PathEscape` naming ``path`` when a component is a symbolic link, and
    :class:`NotADirectoryError` when one is a file.
    """
    fd = os.dup(dir_fd)
    try:
        for part in parts:
            try:
                next_fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                os.mkdir(part, 0o755, dir_fd=fd)
                next_fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as exc:
                _raise_if_link(exc, part, fd, path, root)
                raise
            os.close(fd)
            fd = next_fd
    except BaseException:
        os.close(fd)
        raise
    return fd


def _raise_if_link(exc: OSError, part: str, dir_fd: int, path: StrPath, base: Path) -> None:
    if exc.errno not in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
        return
    try:
        is_link = stat.S_ISLNK(os.lstat(part, dir_fd=dir_fd).st_mode)
    except OSError:
        return
    if is_link:
        raise PathEscape(
            f"path {os.fspath(path)!r} goes through {part!r}, a symbolic link; links inside "
            f"{base} are never followed", path=os.fspath(path), root=str(base)) from None


def walk_files(root: StrPath) -> Iterator[Path]:
    """Relative paths of the regular files under ``root``; links are skipped, never followed."""
    base = Path(root).resolve(strict=True)
    for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
        here = Path(dirpath)
        # os.walk lists a link to a directory among dirnames but does not descend into it.
        for name in [d for d in dirnames if (here / d).is_symlink()]:
            log.debug("not following the link %s", here / name)
        for name in filenames:
            full = here / name
            try:
                info = os.lstat(full)
            except OSError:
                continue
            if stat.S_ISREG(info.st_mode):
                yield full.relative_to(base)
            elif stat.S_ISLNK(info.st_mode):
                log.debug("not following the link %s", full)
