"""Files a worker leaves behind, as the parent stores and restores them: blob permissions and
hard links (real workers, real blob store, real checkouts)."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Any

import anyio
import pytest

from isolane import Executor, RunSpec
from isolane.schemas.blobs import BlobStore
from isolane.tracking import Store
from isolane.tracking.workspace import checkout, files_at


def _run(home: Path, flow: str, config: dict[str, Any] | None = None) -> str:
    """Run ``tests.flows.files:<flow>`` in a real worker; its run id, once it completed."""
    async def main() -> str:
        async with Executor(home=home) as ex:
            outcome = await ex.run(RunSpec(workflow=f"tests.flows.files:{flow}",
                                           config=config or {}))
            assert outcome.status == "completed", outcome
            return outcome.run_id

    return anyio.run(main)


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture(autouse=True)
def _umask() -> Any:
    """A permissive umask, so that what narrows the permissions is isolane, not the umask."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_a_blob_is_never_wider_than_its_file(tmp_path: Path) -> None:
    """A blob keeps its file's read bits (0600 → 0400, 0640 → 0440, 0644/0755 → 0444), is never
    writable or executable, and its directories are 0700."""
    home = tmp_path / "home"
    run_id = _run(home, "permissions")
    blobs = BlobStore(home / "blobs")
    with Store.open(f"sqlite:///{home / 'isolane.db'}") as store:
        files = files_at(store, run_id, "step_1")
    expected = {"public.txt": 0o444, "group.txt": 0o440, "secret.txt": 0o400, "script.sh": 0o444}
    assert {name: _mode(blobs.path_of(files[name].sha256)) for name in expected} == expected
    directories = [blobs.root, *(p for p in blobs.root.iterdir() if p.is_dir())]
    assert len(directories) > 1
    assert {str(d): _mode(d) for d in directories} == {str(d): 0o700 for d in directories}


def test_the_same_bytes_from_a_narrower_file_narrow_the_blob(tmp_path: Path) -> None:
    """Bytes stored from a 0644 file, then again from a 0600 one, leave a 0400 blob; a wider
    file storing the same bytes later never widens it again."""
    home = tmp_path / "home"
    run_id = _run(home, "permissions")
    blobs = BlobStore(home / "blobs")
    with Store.open(f"sqlite:///{home / 'isolane.db'}") as store:
        files = files_at(store, run_id, "step_2")
    sha = files["shared-narrow.txt"].sha256
    assert files["shared-wide.txt"].sha256 == sha  # one blob for both files
    assert _mode(blobs.path_of(sha)) == 0o400
    wide = tmp_path / "wide.txt"
    wide.write_bytes(b"the same bytes, first wide\n")
    wide.chmod(0o644)
    fd = os.open(wide, os.O_RDONLY)
    try:
        assert blobs.ingest(fd).sha256 == sha
    finally:
        os.close(fd)
    assert _mode(blobs.path_of(sha)) == 0o400
    assert blobs.read(sha) == wide.read_bytes()


def test_an_older_wider_blob_directory_is_narrowed(tmp_path: Path) -> None:
    """A blob directory left 0755 by an older version becomes 0700 when the store writes there;
    bytes with no source file are stored owner-read-only."""
    root = tmp_path / "blobs"
    sha = hashlib.sha256(b"old").hexdigest()
    (root / sha[:2]).mkdir(parents=True)
    root.chmod(0o755)
    (root / sha[:2]).chmod(0o755)
    blobs = BlobStore(root)
    assert blobs.put_bytes(b"old") == sha
    assert (_mode(root), _mode(root / sha[:2]), _mode(blobs.path_of(sha))) == (0o700, 0o700, 0o400)


def test_a_hard_link_is_tracked_and_never_written_through(tmp_path: Path) -> None:
    """File tracking stores a hard-linked file like any other (the worker could read it anyway);
    a checkout into a directory holding a hard link to a file elsewhere replaces the link and
    leaves that file untouched."""
    outside = tmp_path / "outside.txt"
    outside.write_text("the worker may read this anyway\n")
    home = tmp_path / "home"
    run_id = _run(home, "hard_links", {"outside": str(outside)})
    assert os.stat(outside).st_nlink == 2  # the link is really there, in the run's work dir
    with Store.open(f"sqlite:///{home / 'isolane.db'}") as store:
        files = files_at(store, run_id, "step_1")
        assert files["linked.txt"].sha256 == hashlib.sha256(outside.read_bytes()).hexdigest()

        victim = tmp_path / "victim.txt"
        victim.write_text("precious\n")
        dest = tmp_path / "checkout"
        dest.mkdir()
        os.link(victim, dest / "notes.txt")  # planted where the checkout writes notes.txt
        checkout(store, BlobStore(home / "blobs"), run_id, "step_1", dest, force=True)
    assert victim.read_text() == "precious\n"
    assert (dest / "notes.txt").read_text() == "from the run\n"
    assert os.stat(dest / "notes.txt").st_nlink == 1 and os.stat(victim).st_nlink == 1
