"""Workflows that write files, run in real workers by ``tests/test_files.py`` (``tests.flows.files``)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from isolane.worker.context import RunContext

#: The bytes written twice under two names in step 1 (one blob).
SAME = b"the same bytes, twice\n"
#: Written by a child process in step 2.
FROM_CHILD = "written by a subprocess\n"


def three_steps(ctx: RunContext, task: str, config: dict[str, Any]) -> str:
    """Create, modify (same size, at once), delete and re-create files over three steps.

    After step 2 the work dir is copied to ``config["snapshot_dir"]`` (unless it exists): the
    reference for a checkout at step 2. Steps are ``ctx.step``s, so a branch or resume skips
    the finished ones.
    """
    work = ctx.work_dir

    def one() -> None:
        (work / "a.txt").write_text("alpha-1")
        (work / "b.txt").write_bytes(SAME)
        (work / "sub").mkdir()
        (work / "sub" / "c.txt").write_bytes(SAME)
        (work / "data.bin").write_bytes(bytes(range(256)) * 64)

    def two() -> None:
        (work / "a.txt").write_text("alpha-2")  # same size and inode, maybe the same mtime tick
        (work / "b.txt").unlink()
        subprocess.run([sys.executable, "-c",
                        f"open('sub/from_child.txt', 'w').write({FROM_CHILD!r})"],
                       cwd=work, check=True)
        script = work / "run.sh"
        script.write_text("#!/bin/sh\necho hi\n")
        script.chmod(0o755)

    def three() -> None:
        (work / "a.txt").unlink()
        (work / "b.txt").write_text("b is back")
        (work / "sub" / "c.txt").write_text("changed in step 3")

    ctx.phase("build")
    ctx.step("step_1", one)
    ctx.step("step_2", two)
    snapshot = Path(config["snapshot_dir"])
    if not snapshot.exists():
        shutil.copytree(work, snapshot, symlinks=True)
    ctx.phase("polish")
    ctx.step("step_3", three)
    (work / "after.txt").write_text("written after the last node")
    return "done"


def links(ctx: RunContext, task: str, config: dict[str, Any]) -> list[str]:
    """Plants links to /etc, /etc/passwd, a directory outside, and one inside, next to a file."""
    work = ctx.work_dir
    with ctx.node("links"):
        (work / "real.txt").write_text("a real file")
        os.symlink("/etc", work / "etc_link")
        os.symlink("/etc/passwd", work / "passwd_link")
        os.symlink(config["outside_dir"], work / "outside_link")
        os.symlink("real.txt", work / "inner_link")
    return sorted(os.listdir(work))


def forged(ctx: RunContext, task: str, config: dict[str, Any]) -> None:
    """Writes a file, then reports a forged file event whose path leaves the workspace."""
    with ctx.node("forge"):
        (ctx.work_dir / "ok.txt").write_bytes(b"fine")
        ctx.emit_event("file_created", {"path": config["path"], "size": 4,
                                        "sha256": hashlib.sha256(b"fine").hexdigest()})


def big_file(ctx: RunContext, task: str, config: dict[str, Any]) -> None:
    """One file over the blob size limit the test sets, one under it."""
    with ctx.node("write"):
        (ctx.work_dir / "big.bin").write_bytes(b"x" * int(config["size"]))
        (ctx.work_dir / "small.txt").write_text("small")


def crash_after_files(ctx: RunContext, task: str, config: dict[str, Any]) -> int:
    """Attempt 1 writes files in step 1, changes one more and dies; attempt 2 adds step 2."""
    work = ctx.work_dir

    def one() -> int:
        (work / "kept.txt").write_text("from attempt 1")
        (work / "changed.txt").write_text("v1")
        return 1

    ctx.step("step_1", one)
    if ctx.attempt == 1:
        (work / "changed.txt").write_text("v2, written just before the crash")
        ctx._emitter.flush()
        os._exit(3)

    def two() -> int:
        (work / "new.txt").write_text("from attempt 2")
        return 2

    return int(ctx.step("step_2", two))


def agent_code(ctx: RunContext, task: str, config: dict[str, Any]) -> None:
    """An AG2 agent runs code (no LLM needed) that writes a file; a plain step writes another."""
    from autogen import ConversableAgent
    from autogen.coding import CodeBlock, LocalCommandLineCodeExecutor

    with ctx.node("code"):
        runner = ConversableAgent(
            "engineer", llm_config=False, human_input_mode="NEVER",
            code_execution_config={"executor": LocalCommandLineCodeExecutor(work_dir=ctx.work_dir)})
        ctx.capture.attach(runner)
        executor = runner.code_executor
        assert executor is not None
        executor.execute_code_blocks([CodeBlock(
            language="python", code="open('from_code.txt', 'w').write('made by agent code')")])
        ctx.emit("after_code")
    with ctx.node("plain"):
        (ctx.work_dir / "plain.txt").write_text("no agent here")


def permissions(ctx: RunContext, task: str, config: dict[str, Any]) -> str:
    """Files of three permission sets; the same bytes again under a narrower file at step 2."""
    work = ctx.work_dir

    def write(name: str, data: bytes, mode: int) -> None:
        path = work / name
        path.write_bytes(data)
        path.chmod(mode)

    def one() -> None:
        write("public.txt", b"anyone may read this\n", 0o644)
        write("group.txt", b"the group may read this\n", 0o640)
        write("secret.txt", b"only its owner may read this\n", 0o600)
        write("script.sh", b"#!/bin/sh\necho hi\n", 0o755)
        write("shared-wide.txt", b"the same bytes, first wide\n", 0o644)

    def two() -> None:
        write("shared-narrow.txt", b"the same bytes, first wide\n", 0o600)

    ctx.step("step_1", one)
    ctx.step("step_2", two)
    return "written"


def hard_links(ctx: RunContext, task: str, config: dict[str, Any]) -> str:
    """Hard-links a file from outside the work dir (``config["outside"]``) into it, and writes
    ``notes.txt``."""
    def one() -> None:
        os.link(config["outside"], ctx.work_dir / "linked.txt")
        (ctx.work_dir / "notes.txt").write_text("from the run\n")

    ctx.step("step_1", one)
    return "linked"
