"""The program's process: trusted set-up, then the untrusted program, then it answers the checker's calls.

Forked by the server per program. It applies the limits, drops to the slot uid (when the harness is
root), makes its private working directory, installs the seccomp filter and the audit hook (guard.py),
then runs the program and serves calls: each request from the checker is ``[args, kwargs]`` in plain
data, each reply ``{"ok": result}``, ``{"raise": [type name, message]}`` or ``{"bad": type name}`` for a
result that is not plain data. Nothing this process sends can make a program pass: the check runs in
the checker's process, which never runs the program's code. Once the program ran and defines the
entry point it reports ``READY`` (a pass needs it, so a program that exits early fails even against
tests that never call it); a program that fails before that reports ``FAIL <exception>`` and exits 1.

File descriptors: 0 /dev/null, 1 and 2 the output pipe, CALLS, REPLIES, REPORT below.
"""

import _sitebuiltins
import builtins
import json
import os
import resource
import sys

import guard
import plain

CALLS, REPLIES, REPORT = 3, 4, 5
FRAME_CAP = 16 << 20
STREAMS = (sys.stdout, sys.stderr)  # the real ones, even if the program swaps sys.stdout


def flush():
    for stream in STREAMS:
        try:
            stream.flush()
        except BaseException:
            pass


def set_limits(lim, uid):
    """rlimits, then the slot uid (root ignores RLIMIT_NPROC and file permissions, so root drops first)."""
    for name, value in (("RLIMIT_CPU", lim["cpu_seconds"]), ("RLIMIT_AS", lim["memory_bytes"]),
                        ("RLIMIT_FSIZE", lim["file_bytes"]), ("RLIMIT_NOFILE", lim["nofile"]),
                        ("RLIMIT_CORE", 0)):
        resource.setrlimit(getattr(resource, name), (value, value))
    if uid is not None and os.getuid() == 0:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)


def describe(exc):
    try:
        msg = str(exc)
    except BaseException:
        msg = "<unprintable>"
    name = type(exc).__name__
    return (name + ": " + msg if msg else name)[:500].replace("\n", " ")


def main(job, workdir):
    set_limits(job["limits"], job["slot_uid"])
    os.mkdir(workdir, 0o700)  # made by the slot uid: it may write here and nowhere else
    os.chdir(workdir)
    os.environ["TMPDIR"] = workdir
    builtins.exit = _sitebuiltins.Quitter("exit", "Ctrl-D (i.e. EOF)")  # -S skips site, which defines them
    builtins.quit = _sitebuiltins.Quitter("quit", "Ctrl-D (i.e. EOF)")
    filtered = job["seccomp"] and guard.install_seccomp(os.getpid())
    if not filtered or job["slot_uid"] is not None:  # the fallback without seccomp; always for a slot uid
        nproc = job["limits"]["nproc"]
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    guard.forget_ctypes()
    if job["audit"]:
        sys.addaudithook(guard.make_hook(REPORT, workdir, job["read_roots"], job["hidden"], os.getpid(), STREAMS,
                                         filtered=bool(filtered)))
    ns = {"__name__": "__candidate__"}
    try:
        exec(compile(job["program"], "<program>", "exec", dont_inherit=True, optimize=0), ns)
        if job["entry_point"] not in ns:
            raise NameError(f"name {job['entry_point']!r} is not defined")
        fn = ns[job["entry_point"]]
        flush()
        os.write(REPORT, b"READY\n")  # the program ran and defines the entry point
    except BaseException as exc:
        flush()
        os.write(REPORT, ("FAIL " + describe(exc) + "\n").encode("utf-8", "replace"))
        os._exit(1)
    serve(fn)


def serve(fn):
    while True:
        try:
            frame = plain.recv_frame(CALLS, FRAME_CAP)
        except ValueError:
            frame = None
        if frame is None:  # the checker is done
            flush()
            os._exit(0)
        args, kwargs = plain.decode(json.loads(frame))
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            reply = {"raise": [type(exc).__name__, describe(exc).partition(": ")[2]]}
        else:
            try:
                reply = {"ok": plain.encode(result)}
            except plain.NotPlain as exc:
                reply = {"bad": str(exc)}
        try:
            data = json.dumps(reply).encode()
        except (ValueError, RecursionError) as exc:
            data = json.dumps({"bad": "unserialisable result (" + describe(exc) + ")"}).encode()
        flush()
        plain.send_frame(REPLIES, data)
