"""The checker's process: runs the dataset's prompt and tests against a proxy of the candidate.

Forked by the server per program, from the server's own clean state: the program's code never runs
here, so nothing it patches (builtins, ``math``, ``random``, ``__main__``, the tests' helpers) and no
frame it walks reaches the check or the verdict. Each call of the candidate is sent to the program's
process as plain data and its result comes back as plain data (plain.py), so a result that is not
(an object whose ``__eq__`` is always true) fails. The verdict goes to a pipe only this process holds:
``PASS <nonce>`` after ``check(candidate)`` returned, ``FAIL <exception>``, or ``LOST <why>`` when the
program's process stopped answering (the server then reports why it stopped).

When the harness is root this process runs as a checker uid of its own (neither root nor the
program's uid). It is also made non-dumpable, so a program running as the same uid (a harness that is
not root) can neither ptrace it nor open its /proc/PID/mem; the program's seccomp filter forbids
ptrace anyway.

File descriptors: 0 /dev/null, 1 and 2 the output pipe, CALLS, REPLIES, VERDICT below.
"""

import builtins
import importlib
import json
import os
import resource
import sys

import guard
import plain

CALLS, REPLIES, VERDICT = 3, 4, 5
FRAME_CAP = 16 << 20


class Lost(BaseException):
    """The program's process stopped answering (a BaseException, so tests' ``except Exception`` miss it)."""


class NotPlainResult(BaseException):
    """The candidate returned something that is not plain data."""


class Proxy:
    """Stands in for the candidate: forwards each call, returns the plain result or raises its error."""

    def __init__(self, name):
        self.__name__ = name
        self.broken = None  # the first Lost/NotPlainResult: sticky, whatever the tests catch

    def __call__(self, *args, **kwargs):
        if self.broken is not None:
            raise self.broken
        try:
            plain.send_frame(CALLS, json.dumps(plain.encode([list(args), kwargs])).encode())
            frame = plain.recv_frame(REPLIES, FRAME_CAP)
            if frame is None:
                raise Lost("the program's process ended")
            reply = json.loads(frame)
            if type(reply) is not dict or len(reply) != 1:
                raise ValueError("malformed reply")
        except plain.NotPlain as exc:
            raise TypeError(f"test argument is not plain data: {exc}") from None
        except (OSError, ValueError, RecursionError) as exc:
            self.broken = Lost(f"bad reply from the program's process ({type(exc).__name__})")
            raise self.broken from None
        except Lost as exc:
            self.broken = exc
            raise
        return self._result(*next(iter(reply.items())))

    def _result(self, kind, body):
        if kind == "ok":
            try:
                return plain.decode(body)
            except (ValueError, TypeError, RecursionError):
                self.broken = Lost("undecodable result")
                raise self.broken from None
        if kind == "raise" and type(body) is list and len(body) == 2 and all(type(x) is str for x in body):
            raise _exception(*body)
        self.broken = NotPlainResult(f"result is not plain data: {str(body)[:100]}")
        raise self.broken


def _exception(name, message):
    """The candidate's exception, as a built-in exception of that name or a stand-in class."""
    cls = getattr(builtins, name, None)
    if not (isinstance(cls, type) and issubclass(cls, BaseException)):
        cls = type(name if name.isidentifier() else "CandidateError", (Exception,), {})
    return cls(message) if message else cls()


def describe(exc):
    try:
        msg = str(exc)
    except BaseException:
        msg = "<unprintable>"
    name = type(exc).__name__
    return (name + ": " + msg if msg else name)[:500].replace("\n", " ")


def main(job, nonce):
    lim = job["limits"]
    for name, value in (("RLIMIT_CPU", lim["cpu_seconds"]), ("RLIMIT_AS", lim["memory_bytes"]),
                        ("RLIMIT_FSIZE", 0), ("RLIMIT_CORE", 0)):
        resource.setrlimit(getattr(resource, name), (value, value))
    if job["check_uid"] is not None and os.getuid() == 0:  # not root, and not the program's uid either
        os.setgroups([])
        os.setgid(job["check_uid"])
        os.setuid(job["check_uid"])
    guard.set_dumpable(False)
    os.chdir("/")
    for name in job["preload"]:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    proxy = Proxy(job["entry_point"])
    ns = {"__name__": "__check__"}
    try:
        exec(compile(job["setup"], "<prompt>", "exec", dont_inherit=True, optimize=0), ns)
        exec(compile(job["test"], "<test>", "exec", dont_inherit=True, optimize=0), ns)
        ns[job["entry_point"]] = proxy  # some tests call it by name (HumanEval/33)
        ns["check"](proxy)
        outcome = proxy.broken
    except BaseException as exc:
        outcome = proxy.broken or exc
    if outcome is None:
        line = "PASS " + nonce
    elif isinstance(outcome, Lost):
        line = "LOST " + str(outcome)
    else:
        line = "FAIL " + describe(outcome)
    for stream in (sys.stdout, sys.stderr):  # what the tests printed goes to the output too
        try:
            stream.flush()
        except BaseException:
            pass
    os.write(VERDICT, (line + "\n").encode("utf-8", "replace"))
    os._exit(0)
