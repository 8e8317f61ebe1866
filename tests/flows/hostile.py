"""Hostile and buggy workflows the isolation tests run in real workers (``tests.flows.hostile``).

Every one of them is bounded: whatever isolane fails to stop, the flow stops by itself (a fork
bomb of at most 2**depth processes, at most 1 GB printed, at most ``seconds`` of flooding), so a
regression fails a test instead of exhausting the machine.
"""

from __future__ import annotations

import os
import pickle
import random
import signal
import struct
import subprocess
import sys
import time
from typing import Any

from isolane.worker.context import RunContext

_MIB = 1024 * 1024


def _ready(ctx: RunContext, name: str, **data: Any) -> None:
    ctx.emit(name, **data)
    ctx._emitter.flush()


def reads_environment(ctx: RunContext, task: str, config: dict[str, Any]) -> dict[str, str]:
    """Returns everything it can see of its environment, /proc/self/environ included."""
    env = dict(os.environ)
    with open("/proc/self/environ", "rb") as fh:
        env["/proc/self/environ"] = fh.read().decode("utf-8", "replace")
    return env


def allocates(ctx: RunContext, task: str, config: dict[str, Any]) -> str:
    """Allocates (and touches) memory in 16 MB blocks, up to ``mb``."""
    blocks = []
    for _ in range(int(config.get("mb", 1024)) // 16):
        blocks.append(bytearray(16 * _MIB))
    return f"allocated {len(blocks) * 16} MB"


def fork_bomb(ctx: RunContext, task: str, config: dict[str, Any]) -> str:
    """Doubles its processes ``depth`` times (at most 2**depth); every copy sleeps."""
    _ready(ctx, "forking", pid=os.getpid())
    is_child = False
    for _ in range(int(config.get("depth", 7))):
        try:
            pid = os.fork()
        except OSError:
            break  # the kernel refused: keep what we have
        if pid == 0:
            is_child = True
    if is_child:
        try:
            time.sleep(60)
        finally:
            os._exit(0)  # a copy must never return into the worker's code
    time.sleep(60)
    return "the bomb was not stopped"


def burns_cpu(ctx: RunContext, task: str, config: dict[str, Any]) -> str:
    """Spins on the CPU for up to ``seconds`` of wall time."""
    deadline = time.monotonic() + float(config.get("seconds", 30))
    n = 0
    while time.monotonic() < deadline:
        n += 1
    return f"spun {n} times"


def opens_files(ctx: RunContext, task: str, config: dict[str, Any]) -> str:
    """Opens /dev/null until the descriptors run out (at most ``max``)."""
    held = [open(os.devnull, "rb") for _ in range(int(config.get("max", 5000)))]  # noqa: SIM115
    return f"held {len(held)} files"


def detached_sleep(ctx: RunContext, task: str, config: dict[str, Any]) -> None:
    """Starts ``sleep`` detached twice (shell double fork + setsid, and a Python double fork);
    with ``stubborn`` it also ignores the cooperative cancel, so the parent must kill the tree."""
    if config.get("stubborn"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    out = subprocess.run(["sh", "-c", "setsid sleep 300 >/dev/null 2>&1 & echo $!"],
                         capture_output=True, text=True, check=True).stdout
    pids = [int(out.strip())]
    read_fd, write_fd = os.pipe()
    first = os.fork()
    if first == 0:  # a classic daemon: fork, setsid, fork again, the middle one exits
        os.setsid()
        second = os.fork()
        if second == 0:
            os.execvp("sleep", ["sleep", "301"])
        os.write(write_fd, str(second).encode())
        os._exit(0)
    os.waitpid(first, 0)
    os.close(write_fd)
    pids.append(int(os.read(read_fd, 32)))
    _ready(ctx, "detached", pids=pids)
    time.sleep(300)


def prints_gigabyte(ctx: RunContext, task: str, config: dict[str, Any]) -> str:
    """Writes 1 GB to stdout as fast as it can, in 1 MB lines."""
    line = b"x" * (_MIB - 1) + b"\n"
    for _ in range(1024):
        os.write(1, line)
    return "printed 1 GB"


class _Exploit:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def writes_garbage(ctx: RunContext, task: str, config: dict[str, Any]) -> str:
    """Writes a crafted pickle, random bytes (NULs and newlines included) and invalid UTF-8
    straight into its own spool, as records, then goes on as if nothing happened."""
    spool = ctx._emitter._spool
    rng = random.Random(6)
    bad = [pickle.dumps(_Exploit(config["marker"])),
           *(rng.randbytes(rng.randrange(1, 2000)) for _ in range(5)),
           b'{"v":1,"run_id":"' + ctx.run_id.encode() + b'","seq":999,"ts":1.0,"type":"custom",'
           b'"node_id":null,"data":{"name":"\xff\xfe\xc0\xaf"}}']
    for payload in bad:
        spool.append(payload)
    ctx.emit("after_garbage", records=len(bad))
    return "survived"


def lies_about_its_tail(ctx: RunContext, task: str, config: dict[str, Any]) -> str:
    """Rings doorbells far past its spool's data (and garbage on the pipe), then goes on."""
    fd = ctx._emitter._pipe_fd
    assert fd is not None
    ctx.emit("before_the_lie")
    os.write(fd, struct.pack("<Q", 1 << 62) + os.urandom(13))
    for i in range(int(config.get("n", 2000))):
        ctx.emit("after_the_lie", i=i)
    return "lied"


def floods(ctx: RunContext, task: str, config: dict[str, Any]) -> str:
    """Writes garbage records into its spool as fast as it can, for up to ``seconds``."""
    emitter = ctx._emitter
    spool = emitter._spool
    deadline = time.monotonic() + float(config.get("seconds", 20))
    while time.monotonic() < deadline:
        for _ in range(8192):
            spool.append(b"garbage!")
        emitter.flush()
    return "the flood was not stopped"


def links_etc(ctx: RunContext, task: str, config: dict[str, Any]) -> str:
    """Links /etc (and /etc/passwd) into its work dir, and names them in file events."""
    os.symlink("/etc", ctx.work_dir / "etc")
    os.symlink("/etc/passwd", ctx.work_dir / "passwd")
    return "linked"


def leaks_keys(ctx: RunContext, task: str, config: dict[str, Any]) -> str:
    """Puts API keys, a bearer token and configured secrets in messages, output and its result."""
    keys = config["keys"]
    env_key = os.environ["OPENAI_API_KEY"]
    for key in [*keys, env_key]:
        ctx.emit_event("agent_message", {"sender": "engineer", "content": f"use the key {key} now"})
        ctx.emit_event("tool_call", {"tool": "http", "arguments": {
            "headers": {"Authorization": f"Bearer {key}"}, "multiline": f"key:\n{key}"}})
        print(f"debug: key={key}")
        sys.stdout.flush()
    raise RuntimeError(f"request failed with key {keys[0]}")


def swallows_limits(ctx: RunContext, task: str, config: dict[str, Any]) -> str:
    """Catches everything, the limit's interrupt included, and keeps printing (up to 60 s)."""
    line = b"y" * 65535 + b"\n"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            os.write(1, line)
        except BaseException:  # noqa: BLE001, S110 - ignoring everything is this flow's point
            pass
    return "never stopped"


# -- content the database may refuse (tests/test_hardening_store.py) -----------------------------


def _raw_frames(ctx: RunContext, *payloads: bytes) -> None:
    """Write ``payloads`` (each a JSON array of envelopes, or any bytes) straight into the run's
    spool as records, after what was emitted, and ring the doorbell."""
    spool = ctx._emitter._spool
    for payload in payloads:
        spool.append(payload)
    ctx._emitter.flush()


def _envelope(ctx: RunContext, seq: int, type_: str, data: bytes, node_id: str | None = None,
              ) -> bytes:
    node = b"null" if node_id is None else b'"' + node_id.encode() + b'"'
    return (b'{"v":1,"run_id":"' + ctx.run_id.encode() + b'","seq":' + str(seq).encode()
            + b',"ts":1.0,"type":"' + type_.encode() + b'","node_id":' + node + b',"data":' + data
            + b"}")


def prints_nul(ctx: RunContext, task: str, config: dict[str, Any]) -> str:
    """Prints NUL characters on stdout and stderr."""
    print("before\x00after", flush=True)
    os.write(2, b"err\x00\n")
    return "printed"


def emits_nul(ctx: RunContext, task: str, config: dict[str, Any]) -> str:
    """Emits NUL in a value, in a key and in a node id, and returns a string holding one."""
    with ctx.node("step\x00one", label="label\x00"):
        ctx.emit("nul", text="a\x00b", **{"key\x00": ["\x00", "\\u0000 stays as written"]})
    return "res\x00ult"


def frames_raw_bytes(ctx: RunContext, task: str, config: dict[str, Any]) -> str:
    """Writes a frame of raw bytes holding NULs (its diagnostic's excerpt quotes them)."""
    _raw_frames(ctx, b"\x00\x01raw\x00bytes\xff")
    ctx.emit("after_raw_bytes")
    return "survived"


def frames_huge_seqs(ctx: RunContext, task: str, config: dict[str, Any]) -> str:
    """Writes events with seq 2**31 and 2**62, and its own ``run_completed`` after them."""
    big = 2**62
    _raw_frames(ctx, b"[" + b",".join([
        _envelope(ctx, 2**31, "custom", b'{"name":"seq_2_31"}'),
        _envelope(ctx, big, "custom", b'{"name":"seq_2_62"}'),
        _envelope(ctx, big + 1, "run_completed", b'{"result":"huge seqs"}')]) + b"]")
    return "not reported: the seqs above came first"


def frames_unstorable(ctx: RunContext, task: str, config: dict[str, Any]) -> str:
    """Writes a DAG node whose id is too long for PostgreSQL's index, a number beyond its numeric
    range, an ordinary event and a result nested 300 deep (more than any JSON column can be
    encoded with)."""
    deep = b"[" * 300 + b"]" * 300
    _raw_frames(ctx, b"[" + b",".join([
        # random, so that PostgreSQL cannot compress the index entry below its limit
        _envelope(ctx, 999, "dag_node_added", b'{"label":"long"}',
                  node_id=random.Random(9).randbytes(10_000).hex()),
        _envelope(ctx, 1000, "custom", b'{"name":"huge_number","n":1e1000000}'),
        _envelope(ctx, 1001, "custom", b'{"name":"after_huge_number"}'),
        _envelope(ctx, 1002, "run_completed", b'{"result":' + deep + b"}")]) + b"]")
    return "not reported: the run_completed above came first"
