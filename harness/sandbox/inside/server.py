"""The fork server: a trusted interpreter that never runs model code and forks two processes per program.

Started once per worker by ``harness.sandbox.box`` (``python -I -S -B server.py``, under bubblewrap
when available) and driven over stdin/stdout with length-prefixed JSON jobs. For each job it forks

* the program's process (program.py): limits, slot uid, seccomp, audit hook, then the untrusted
  program, then it answers calls of the candidate function;
* the checker's process (check.py): the dataset's prompt and tests, calling the candidate through a
  pipe; it alone holds the verdict pipe and knows the nonce.

It enforces the wall-clock deadline and the output cap, waits for both, kills what is left (as the
slot and checker uids, through helpers, when the harness is root) and removes what the program wrote: the private
/tmp under bubblewrap, and otherwise everything the slot uid owns in the temporary directories
(/tmp, /var/tmp, /dev/shm and the world-writable folders in them). The reply carries both processes'
reports and exit statuses; ``box.py`` turns them into a verdict.
"""

import fcntl
import importlib
import json
import os
import select
import shutil
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import check  # noqa: E402
import guard  # noqa: E402
import plain  # noqa: E402
import program  # noqa: E402

del sys.path[0]
sys.set_int_max_str_digits(0)  # big integers are plain data too
guard.set_dumpable(False)  # a program of the same uid can then neither open this process's memory nor ptrace it

# Imported once here, shared by every child through fork: no per-program cost. (Under rlimits-only with
# an interpreter the slot uid cannot read, such as pyenv under /root, only these are importable.) No
# module that exposes raw process creation (subprocess, _posixsubprocess, multiprocessing) is preloaded.
for _name in ("math", "cmath", "re", "typing", "collections", "collections.abc", "itertools", "functools",
              "heapq", "string", "random", "hashlib", "copy", "operator", "bisect", "fractions", "statistics",
              "decimal", "datetime", "calendar", "array", "textwrap", "unicodedata", "struct", "numbers",
              "dataclasses", "enum", "io", "time", "queue", "threading", "base64", "binascii", "zlib",
              "socket", "encodings.idna", "json", "ast", "traceback", "warnings", "pprint", "doctest", "pathlib"):
    importlib.import_module(_name)

_CAP = 64 * 1024


def _spawn(run, fds, out_fd):
    """Fork a child whose fds are exactly 0 (/dev/null), 1-2 (out_fd) and ``fds`` {target: source}."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()
            high = {dst: fcntl.fcntl(src, fcntl.F_DUPFD, 100) for dst, src in fds.items()}
            nul = os.open(os.devnull, os.O_RDONLY)
            os.dup2(nul, 0)
            os.dup2(out_fd, 1)
            os.dup2(out_fd, 2)
            for dst, src in high.items():
                os.dup2(src, dst)
            os.closerange(max(fds) + 1, 65536)  # the server's control pipes and the other child's ends
            run()
        finally:
            os._exit(70)
    return pid


def _collect(fds, out_r, deadline, cap):
    """Read until every fd is at EOF, the deadline or the output cap: {fd: bytes}, timed_out, overflow."""
    data = {fd: bytearray() for fd in fds}
    open_fds, timed_out, overflow = set(fds), False, False
    while open_fds and not overflow:
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            break
        for fd in select.select(list(open_fds), [], [], left)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                open_fds.discard(fd)
                continue
            limit = cap + 1 if fd == out_r else _CAP
            data[fd] += chunk[: max(0, limit - len(data[fd]))]
            overflow = fd == out_r and len(data[fd]) > cap
    return data, timed_out, overflow


def _wait(pid, deadline):
    """Exit status (negative: signal) once ``pid`` ends, or None at the deadline."""
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.002)


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.unlink(path)
        except OSError:
            pass


def _remove_owned(base, uid, depth=0):
    """Remove what ``uid`` owns in ``base`` and in the world-writable folders below it."""
    try:
        entries = list(os.scandir(base))
    except OSError:
        return
    for entry in entries:
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if st.st_uid == uid:
            _remove(entry.path)
        elif depth < 3 and entry.is_dir(follow_symlinks=False) and st.st_mode & 0o002:
            _remove_owned(entry.path, uid, depth + 1)


def _cleanup(job, workdir):
    uid, tmp = job["slot_uid"], job["tmp"]
    if uid is None:
        if job["wipe_tmp"]:  # inside bwrap's PID namespace everything but its init and this server is ours
            for entry in os.listdir("/proc"):
                if entry.isdigit() and int(entry) not in (1, os.getpid()):
                    try:
                        os.kill(int(entry), signal.SIGKILL)
                    except OSError:
                        pass
            for entry in os.listdir(tmp):
                _remove(os.path.join(tmp, entry))
        _remove(workdir)
        return
    for who in (uid, job["check_uid"]):
        helper = os.fork()
        if helper == 0:  # as that uid: root without CAP_KILL/CAP_DAC_OVERRIDE (bwrap) could not
            try:
                os.setgroups([])
                os.setgid(who)
                os.setuid(who)
                os.kill(-1, signal.SIGKILL)
                for base in dict.fromkeys((tmp, "/tmp", "/var/tmp", "/dev/shm")):
                    _remove_owned(base, who)
            finally:
                os._exit(0)
        os.waitpid(helper, 0)


def _kill(pid):
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass


def _one(job, ctl_in):
    workdir = os.path.join(job["tmp"], "harness-job-" + os.urandom(8).hex())
    calls_r, calls_w = os.pipe()
    replies_r, replies_w = os.pipe()
    report_r, report_w = os.pipe()
    verdict_r, verdict_w = os.pipe()
    out_r, out_w = os.pipe()
    t0 = time.monotonic()
    deadline = t0 + job["limits"]["timeout"]
    prog = _spawn(lambda: program.main(job, workdir), {3: calls_r, 4: replies_w, 5: report_w}, out_w)
    # The nonce is the next frame, read only now: the program's process never had it in memory.
    nonce = (plain.recv_frame(ctl_in, 64) or b"").decode()
    chk = _spawn(lambda: check.main(job, nonce), {3: calls_w, 4: replies_r, 5: verdict_w}, out_w)
    for fd in (calls_r, calls_w, replies_r, replies_w, report_w, verdict_w, out_w):
        os.close(fd)
    data, timed_out, overflow = _collect((report_r, verdict_r, out_r), out_r, deadline,
                                         job["limits"]["output_bytes"])
    rcs = {prog: None, chk: None}
    if not (timed_out or overflow):
        rcs = {pid: _wait(pid, deadline) for pid in (chk, prog)}  # the program's process may still report
        timed_out = None in rcs.values()
    duration = time.monotonic() - t0
    for pid, rc in rcs.items():
        if rc is None:
            _kill(pid)
    _cleanup(job, workdir)
    statuses = [rcs[p] if rcs[p] is not None else _wait(p, float("inf")) for p in (prog, chk)]
    for fd in (report_r, verdict_r, out_r):
        os.close(fd)
    text = {fd: bytes(b).decode("utf-8", "replace") for fd, b in data.items()}
    return {"report": text[report_r], "verdict": text[verdict_r], "output": text[out_r][:4096],
            "timed_out": timed_out, "overflow": overflow, "program_rc": statuses[0], "check_rc": statuses[1],
            "duration": duration}


def _serve():
    ctl_in, ctl_out = os.dup(0), os.dup(1)
    nul = os.open(os.devnull, os.O_RDWR)
    os.dup2(nul, 0)
    os.dup2(nul, 1)
    while True:
        frame = plain.recv_frame(ctl_in, 1 << 30)
        if frame is None:
            os._exit(0)  # the harness is gone
        plain.send_frame(ctl_out, json.dumps(_one(json.loads(frame), ctl_in)).encode())


if __name__ == "__main__":
    _serve()
