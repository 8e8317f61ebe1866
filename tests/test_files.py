"""File tracking end to end: real workers write files; events, blobs, checkout and the CLI."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

from isolane import Executor, RunSpec
from isolane.errors import BlobError, ConfigError, PathEscape, RunStateError
from isolane.schemas.blobs import BlobStore
from isolane.tracking.store import Store
from isolane.tracking.workspace import (
    checkout,
    file_versions,
    files_at,
    node_end_seq,
    write_workspace,
)
from isolane.worker.files import FileScanner
from tests.flows.files import FROM_CHILD, SAME


@dataclass(frozen=True)
class Ran:
    home: Path
    db_url: str
    run_id: str
    status: str

    @property
    def blobs(self) -> BlobStore:
        return BlobStore(self.home / "blobs")

    def store(self) -> Store:
        return Store.open(self.db_url)


def run_flow(home: Path, workflow: str, config: dict[str, Any] | None = None, *,
             max_blob_bytes: int | None = None, max_restarts: int = 0) -> Ran:
    """Run ``tests.flows.files:<workflow>`` in a real worker and wait for it to end."""
    db_url = f"sqlite:///{home / 'isolane.db'}"
    options: dict[str, Any] = {} if max_blob_bytes is None else {"max_blob_bytes": max_blob_bytes}

    async def main() -> tuple[str, str]:
        async with Executor(home=home, db_url=db_url, **options) as ex:
            outcome = await ex.run(RunSpec(workflow=f"tests.flows.files:{workflow}",
                                           config=config or {}, max_restarts=max_restarts,
                                           restart_backoff=0.05))
            return outcome.run_id, outcome.status

    run_id, status = anyio.run(main)
    return Ran(home, db_url, run_id, status)


def tree(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every regular file under ``root``: relative path → (bytes, permission bits)."""
    return {p.relative_to(root).as_posix(): (p.read_bytes(), stat.S_IMODE(p.lstat().st_mode))
            for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Ran, Path]]:
    """One run of the three-step workflow, shared by the read-only tests of this module."""
    base = tmp_path_factory.mktemp("three")
    snapshot = base / "snapshot_step_2"
    ran = run_flow(base / "home", "three_steps", {"snapshot_dir": str(snapshot)})
    assert ran.status == "completed"
    yield ran, snapshot


def _versions(ran: Ran) -> list[tuple[str, int, str, str | None, str | None]]:
    with ran.store() as store:
        return [(r.path, r.version, r.kind, r.node_id, r.phase)
                for r in file_versions(store, ran.run_id)]


def test_changes_become_events_with_node_phase_and_version(three: tuple[Ran, Path]) -> None:
    """Each create, modify, delete and re-create is one event of the node and phase that ran."""
    ran, _ = three
    assert sorted(_versions(ran), key=lambda v: (v[0], v[1])) == [
        ("a.txt", 1, "created", "step_1", "build"),
        ("a.txt", 2, "modified", "step_2", "build"),
        ("a.txt", 3, "deleted", "step_3", "polish"),
        ("after.txt", 1, "created", None, "polish"),
        ("b.txt", 1, "created", "step_1", "build"),
        ("b.txt", 2, "deleted", "step_2", "build"),
        ("b.txt", 3, "created", "step_3", "polish"),
        ("data.bin", 1, "created", "step_1", "build"),
        ("run.sh", 1, "created", "step_2", "build"),
        ("sub/c.txt", 1, "created", "step_1", "build"),
        ("sub/c.txt", 2, "modified", "step_3", "polish"),
        ("sub/from_child.txt", 1, "created", "step_2", "build"),
    ]


def test_file_events_come_before_the_node_ends(three: tuple[Ran, Path]) -> None:
    """Every file event of a node has a seq below the node's final update; the table agrees."""
    ran, _ = three
    with ran.store() as store:
        ends = {node: node_end_seq(store, ran.run_id, node) for node in ("step_1", "step_2", "step_3")}
        rows = store.files(ran.run_id)
        versions = file_versions(store, ran.run_id)
    for row in versions:
        if row.node_id is not None:
            assert row.seq < ends[row.node_id]
    assert [(r.path, r.version, r.kind, r.sha256) for r in rows] == [
        (v.path, v.version, v.kind, v.sha256) for v in versions]


def test_same_content_is_one_blob_and_hashes_match(three: tuple[Ran, Path]) -> None:
    """Two files with the same bytes share one blob; every stored version's blob verifies."""
    ran, _ = three
    with ran.store() as store:
        versions = [v for v in file_versions(store, ran.run_id) if v.kind != "deleted"]
    same = hashlib.sha256(SAME).hexdigest()
    assert {v.path for v in versions if v.sha256 == same} == {"b.txt", "sub/c.txt"}
    blobs = [p for p in (ran.home / "blobs").rglob("*") if p.is_file()]
    assert len(blobs) == len({v.sha256 for v in versions})
    assert not [p for p in blobs if p.name.startswith(".tmp-")]
    for version in versions:
        assert version.stored and ran.blobs.verify(version.sha256)
        assert len(ran.blobs.read(version.sha256)) == version.size


def test_checkout_at_step_2_equals_the_workspace_then(three: tuple[Ran, Path], tmp_path: Path) -> None:
    """checkout at step_2 rebuilds the work dir as it was when step_2 ended, byte for byte."""
    ran, snapshot = three
    with ran.store() as store:
        written = checkout(store, ran.blobs, ran.run_id, "step_2", tmp_path / "out")
    assert tree(tmp_path / "out") == tree(snapshot)
    assert (tmp_path / "out" / "sub" / "from_child.txt").read_text() == FROM_CHILD
    assert stat.S_IMODE((tmp_path / "out" / "run.sh").stat().st_mode) == 0o755
    assert [r.path for r in written] == sorted(tree(snapshot))


def test_workspace_at_a_node_drops_deleted_files(three: tuple[Ran, Path]) -> None:
    """files_at step_3 has no deleted a.txt and the re-created b.txt; later files are absent."""
    ran, _ = three
    with ran.store() as store:
        at_1 = files_at(store, ran.run_id, "step_1")
        at_3 = files_at(store, ran.run_id, "step_3")
    assert sorted(at_1) == ["a.txt", "b.txt", "data.bin", "sub/c.txt"]
    assert sorted(at_3) == ["b.txt", "data.bin", "run.sh", "sub/c.txt", "sub/from_child.txt"]
    assert (at_3["b.txt"].version, at_3["b.txt"].kind) == (3, "created")


def test_unknown_or_unfinished_nodes_are_clear_errors(three: tuple[Ran, Path]) -> None:
    """A node the run never had is a ConfigError that lists the nodes that ended."""
    ran, _ = three
    with ran.store() as store, pytest.raises(ConfigError, match="no node 'step_9'.*step_1, step_2, step_3"):
        files_at(store, ran.run_id, "step_9")


def test_checkout_refuses_a_non_empty_directory_unless_forced(three: tuple[Ran, Path], tmp_path: Path) -> None:
    """A non-empty destination is refused; with force the workspace's files replace the old ones."""
    ran, snapshot = three
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "a.txt").write_text("old")
    (dest / "mine.txt").write_text("not from the run")
    with ran.store() as store:
        with pytest.raises(ConfigError, match="not empty.*--force"):
            checkout(store, ran.blobs, ran.run_id, "step_2", dest)
        assert (dest / "a.txt").read_text() == "old"
        checkout(store, ran.blobs, ran.run_id, "step_2", dest, force=True)
    assert (dest / "a.txt").read_bytes() == (snapshot / "a.txt").read_bytes()
    assert (dest / "mine.txt").read_text() == "not from the run"


def test_checkout_never_writes_through_a_link_in_the_destination(three: tuple[Ran, Path], tmp_path: Path) -> None:
    """With --force, a link where the workspace has a directory is refused, not followed."""
    ran, _ = three
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    os.symlink(outside, dest / "sub")
    with ran.store() as store, pytest.raises(PathEscape, match="symbolic link"):
        checkout(store, ran.blobs, ran.run_id, "step_2", dest, force=True)
    assert list(outside.iterdir()) == []


def test_links_in_the_work_dir_are_never_followed(tmp_path: Path) -> None:
    """Links to /etc, /etc/passwd or a directory outside are skipped; only the real file is tracked."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("outside the run")
    ran = run_flow(tmp_path / "home", "links", {"outside_dir": str(outside)})
    assert ran.status == "completed"
    with ran.store() as store:
        versions = file_versions(store, ran.run_id)
    assert [(v.path, v.kind) for v in versions] == [("real.txt", "created")]
    stored = {p.parent.name + p.name for p in (ran.home / "blobs").rglob("*") if p.is_file()}
    assert stored == {versions[0].sha256}
    assert hashlib.sha256(Path("/etc/passwd").read_bytes()).hexdigest() not in stored


def test_a_planted_blob_is_detected(tmp_path: Path) -> None:
    """A blob whose bytes do not match its name fails the checkout; that file is never written."""
    ran = run_flow(tmp_path / "home", "three_steps", {"snapshot_dir": str(tmp_path / "snap")})
    with ran.store() as store:
        victim = files_at(store, ran.run_id, "step_2")["a.txt"]
        path = ran.blobs.path_of(victim.sha256)
        path.chmod(0o644)
        path.write_bytes(b"alpha-X")  # same size, other bytes
        with pytest.raises(BlobError, match="does not match its name") as caught:
            checkout(store, ran.blobs, ran.run_id, "step_2", tmp_path / "out")
        assert caught.value.reason == "corrupt"
        assert not (tmp_path / "out" / "a.txt").exists()
        assert not [p for p in (tmp_path / "out").rglob(".isolane-checkout-*")]
        with pytest.raises(BlobError):
            ran.blobs.read(victim.sha256)
        path.unlink()
        os.symlink("/etc/passwd", path)
        with pytest.raises(BlobError, match="symbolic link"):
            ran.blobs.read(victim.sha256)


@pytest.mark.parametrize("forged_path", ["../escaped.txt", "/tmp/isolane-abs.txt", "a/../../x.txt",
                                         "./ok.txt", "a//b.txt"])
def test_forged_paths_are_refused_before_anything_is_written(tmp_path: Path, forged_path: str) -> None:
    """A file event whose path could leave the workspace makes checkout refuse, writing nothing."""
    ran = run_flow(tmp_path / "home", "forged", {"path": forged_path})
    dest = tmp_path / "deep" / "dest"
    with ran.store() as store, pytest.raises(PathEscape, match="not a plain relative path"):
        checkout(store, ran.blobs, ran.run_id, "forge", dest)
    assert not dest.exists()
    assert not (tmp_path / "deep" / "escaped.txt").exists() and not Path("/tmp/isolane-abs.txt").exists()


def test_a_file_over_the_limit_is_hashed_but_not_stored(tmp_path: Path) -> None:
    """Above max_blob_bytes a file is recorded with stored=false and checkout says why it cannot."""
    ran = run_flow(tmp_path / "home", "big_file", {"size": 5000}, max_blob_bytes=4096)
    with ran.store() as store:
        files = files_at(store, ran.run_id, "write")
        assert (files["big.bin"].stored, files["big.bin"].size) == (False, 5000)
        assert files["big.bin"].sha256 == hashlib.sha256(b"x" * 5000).hexdigest()
        assert files["small.txt"].stored and not ran.blobs.has(files["big.bin"].sha256)
        with pytest.raises(BlobError, match="big.bin.*max_blob_bytes") as caught:
            checkout(store, ran.blobs, ran.run_id, "write", tmp_path / "out")
    assert caught.value.reason == "not_stored"
    assert not (tmp_path / "out").exists()


def test_a_resumed_run_continues_file_versions(tmp_path: Path) -> None:
    """After a crash, the next attempt reports only what changed, continuing each path's versions."""
    ran = run_flow(tmp_path / "home", "crash_after_files", max_restarts=1)
    assert ran.status == "completed"
    assert _versions(ran) == [
        ("changed.txt", 1, "created", "step_1", None),
        ("kept.txt", 1, "created", "step_1", None),
        ("changed.txt", 2, "modified", "step_2", None),
        ("new.txt", 1, "created", "step_2", None),
    ]


def test_files_written_by_agent_code_name_the_agent(tmp_path: Path) -> None:
    """A file written by an AG2 agent's code is reported right after the execution, with the agent."""
    ran = run_flow(tmp_path / "home", "agent_code")
    assert ran.status == "completed"
    with ran.store() as store:
        events = store.events(ran.run_id)
    seq_of = {e.type: e.seq for e in events if e.type in ("code_execution",)}
    code_file = next(e for e in events if e.type == "file_created" and e.data["path"] == "from_code.txt")
    after = next(e for e in events if e.type == "custom" and e.data["name"] == "after_code")
    assert seq_of["code_execution"] < code_file.seq < after.seq
    assert (code_file.node_id, code_file.data["agent"]) == ("code", "engineer")
    plain = next(e for e in events if e.type == "file_created" and e.data["path"] == "plain.txt")
    assert (plain.node_id, plain.data.get("agent")) == ("plain", None)


def test_scanner_sees_a_same_size_rewrite_with_the_old_mtime(tmp_path: Path) -> None:
    """Rewriting a file with the same size and restoring its mtime is still a new version."""
    events: list[tuple[str, dict[str, Any], str | None]] = []

    def emit(type_: str, data: dict[str, Any], node_id: str | None = None) -> int:
        events.append((type_, data, node_id))
        return len(events)

    target = tmp_path / "f.txt"
    target.write_text("one")
    scanner = FileScanner(tmp_path, emit=emit, blobs=BlobStore(tmp_path.parent / "blobs-unit"))
    assert scanner.scan("n1").created == 1
    before = target.stat()
    target.write_text("two")
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    result = scanner.scan("n2")
    assert (result.modified, result.hashed) == (1, 1)
    assert scanner.scan("n3").changes == 0
    assert [(t, d["path"], d.get("version", 1), n) for t, d, n in events] == [
        ("file_created", "f.txt", 1, "n1"), ("file_modified", "f.txt", 2, "n2")]


def test_quick_same_size_rewrites_are_each_seen(tmp_path: Path) -> None:
    """Same-size rewrites between back-to-back scans (one timestamp tick) are never missed."""
    scanner = FileScanner(tmp_path, emit=lambda type_, data, node_id=None: 0)
    for i in range(200):
        (tmp_path / "x.txt").write_text(f"{i:05d}")
        result = scanner.scan()
        assert (result.created, result.modified) == ((1, 0) if i == 0 else (0, 1)), i


def test_blob_store_deduplicates_verifies_and_never_leaves_temporaries(tmp_path: Path) -> None:
    """put_bytes twice stores once; ingest over the limit stores nothing; bad digests are refused."""
    blobs = BlobStore(tmp_path / "blobs")
    sha = blobs.put_bytes(b"hello")
    assert blobs.put_bytes(b"hello") == sha == hashlib.sha256(b"hello").hexdigest()
    assert blobs.read(sha) == b"hello" and blobs.has(sha)
    assert stat.S_IMODE(blobs.path_of(sha).stat().st_mode) == 0o400  # no source: owner only
    source = tmp_path / "big"
    source.write_bytes(b"y" * 100)
    fd = os.open(source, os.O_RDONLY)
    try:
        ingested = blobs.ingest(fd, max_bytes=10)
    finally:
        os.close(fd)
    assert (ingested.size, ingested.stored) == (100, False) and not blobs.has(ingested.sha256)
    assert sorted(p.name for p in (tmp_path / "blobs").rglob("*") if p.is_file()) == [sha[2:]]
    with pytest.raises(BlobError, match="not a SHA-256"):
        blobs.path_of("../../etc/passwd")
    with pytest.raises(BlobError, match="missing"):
        blobs.read("0" * 64)


def test_workspace_writer_refuses_a_file_as_destination(tmp_path: Path) -> None:
    """The destination must be a directory; a file there is a clear error."""
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        write_workspace(BlobStore(tmp_path / "blobs"), {}, tmp_path / "file")


def test_a_running_node_has_no_workspace_yet(tmp_path: Path) -> None:
    """Asking for the workspace at a node that started but never ended is a RunStateError."""
    with Store.open(f"sqlite:///{tmp_path / 'db.sqlite'}") as store:
        store.create_run(run_id="r1", workflow="w")
        store.write_batch(events=[("r1", 1, 0.0, "dag_node_update", "step_1",
                                   json.dumps({"status": "running"}))])
        with pytest.raises(RunStateError, match="has not ended"):
            files_at(store, "r1", "step_1")


# -- the command line ------------------------------------------------------------------------------


def cli(ran: Ran, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("ISOLANE_DB_URL", "ISOLANE_HOME")}
    env["COLUMNS"] = "200"
    return subprocess.run([sys.executable, "-m", "isolane.cli", *args, "--home", str(ran.home)],
                          env=env, capture_output=True, text=True, timeout=60, check=False)


def assert_usage_error(proc: subprocess.CompletedProcess[str], contains: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and contains in lines[0], proc.stderr
    assert proc.stdout == ""


def test_cli_files_lists_versions_and_the_workspace_at_a_node(three: tuple[Ran, Path]) -> None:
    """`isolane files` lists every version; --at gives the workspace then; --json is JSON lines."""
    ran, _ = three
    table = cli(ran, "files", ran.run_id[:8])
    assert table.returncode == 0, table.stderr
    assert "sub/from_child.txt" in table.stdout and "deleted" in table.stdout
    at = cli(ran, "files", ran.run_id, "--at", "step_2", "--json")
    assert at.returncode == 0, at.stderr
    rows = [json.loads(line) for line in at.stdout.splitlines()]
    assert [r["path"] for r in rows] == ["a.txt", "data.bin", "run.sh", "sub/c.txt", "sub/from_child.txt"]
    assert {(r["path"], r["version"], r["node_id"], r["phase"], r["stored"]) for r in rows} >= {
        ("a.txt", 2, "step_2", "build", True)}
    assert all(len(r["sha256"]) == 64 for r in rows)


def test_cli_checkout_writes_the_workspace(three: tuple[Ran, Path], tmp_path: Path) -> None:
    """`isolane checkout RUN --at NODE DIR` writes the files; bad input is one error line, exit 2."""
    ran, snapshot = three
    done = cli(ran, "checkout", ran.run_id, "--at", "step_2", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert "wrote 5 files" in done.stdout
    assert tree(tmp_path / "out") == tree(snapshot)
    assert_usage_error(cli(ran, "checkout", ran.run_id, "--at", "step_2", str(tmp_path / "out")),
                       "not empty")
    assert_usage_error(cli(ran, "checkout", ran.run_id, "--at", "nope", str(tmp_path / "x")),
                       "no node 'nope'")
    assert_usage_error(cli(ran, "files", "ffffffffffff"), "no run")
    missing_at = cli(ran, "checkout", ran.run_id, str(tmp_path / "y"))
    assert missing_at.returncode == 2 and "--at" in missing_at.stderr
