"""MT-Bench judging wall time against a local OpenAI-compatible server with a fixed per-call latency.

The judging pass of ``MTBench.score`` (prompt rendering, the OpenAIAdapter's
async pass, parsing, journaling with fsync) runs against ``tests/openai_stub.py``
where every judge call takes ``--latency`` seconds. The ideal wall time is
``calls x latency / concurrency``; efficiency = ideal / measured (aim > 0.9).
Judge start-up (client creation, the health check) is outside the timing; it
happens once per run, not per call. A zero-latency pass measured first, in the
same run, shows the per-call overhead (client, server, parsing, journal) that
efficiency pays for: on a CPU shared with other work it is the whole story.
Both are measured twice: with the stub server in this process (its request
handling then takes the same interpreter's CPU and GIL as our client) and in
a forked process of its own, as a real server is, which leaves our client's
cost alone.

Example: ``python bench/judge_latency.py --latency 0.2 --concurrency 16 --questions 80``
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from openai_stub import Call, Reply, StubServer  # noqa: E402

from harness.core.models import ModelSpec  # noqa: E402
from harness.core.records import Completion  # noqa: E402
from harness.run.passes import judge_task  # noqa: E402
from harness.run.runner import connect_adapter  # noqa: E402
from harness.run.score import ScoreRun  # noqa: E402
from harness.tasks.mt_bench import MTBench, MTBenchOptions  # noqa: E402


def judge_reply(call: Call) -> Reply:
    return Reply(text="The answer is adequate. Rating: [[6]]")


def _serve(latency: float, conn: Any) -> None:
    """Child process: the stub server until told to stop, then its counts."""
    with StubServer(judge_reply, models=("judge",), latency=latency) as stub:
        conn.send(stub.url)
        while conn.recv() == "counts":
            conn.send((stub.count("/v1/chat/completions"), stub.max_in_flight))


class _Remote:
    """The stub in its own process (fork), so its CPU is not the harness's: only our client is measured."""

    def __init__(self, latency: float) -> None:
        ctx = multiprocessing.get_context("fork")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(latency, child), daemon=True)

    def __enter__(self) -> _Remote:
        self._proc.start()
        self.url = self._conn.recv()
        return self

    def __exit__(self, *exc: object) -> None:
        self._conn.send("stop")
        self._proc.join(10)

    def _ask(self) -> tuple[int, int]:
        self._conn.send("counts")
        return self._conn.recv()

    def count(self, path: str) -> int:
        return self._ask()[0]

    @property
    def max_in_flight(self) -> int:
        return self._ask()[1]


def measure(latency: float, concurrency: int, questions: int, repeats: int,
            separate: bool = False) -> dict[str, float]:
    task = MTBench(MTBenchOptions(judge_repeats=repeats))
    examples = task.load(questions)
    comps = {ex.id: [Completion(id=ex.id, texts=(f"answer {t} for {ex.id}",)) for t in (1, 2)] for ex in examples}
    server = _Remote(latency) if separate else StubServer(judge_reply, models=("judge",), latency=latency)
    with server as stub, tempfile.TemporaryDirectory() as tmp:
        spec = ModelSpec("openai", "judge", {}, stub.url)
        # client + health check: once per run, not part of the judging pass
        judge = connect_adapter(spec, "judge", chat_template=None, concurrency=concurrency, needs_chat=True)
        try:
            t0 = time.perf_counter()
            judgments = judge_task(task, examples, comps, judge, Path(tmp))  # the runner's judge pass
            wall = time.perf_counter() - t0
        finally:
            judge.close()
        ctx = ScoreRun(Path(tmp), judgments, spec)
        try:
            results = task.score(examples, comps, ctx)
        finally:
            ctx.close()
        calls = stub.count("/v1/chat/completions")
        peak = stub.max_in_flight
    errors = sum(r.error is not None for r in results)
    ideal = calls * latency / concurrency
    return {"calls": calls, "wall": wall, "ideal": ideal, "efficiency": ideal / wall, "peak_in_flight": peak,
            "errors": errors}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--latency", type=float, default=0.2, help="seconds per judge call at the server")
    p.add_argument("--concurrency", type=int, default=16, help="--judge-concurrency")
    p.add_argument("--questions", type=int, default=80, help="MT-Bench questions (2 judge calls each)")
    p.add_argument("--repeats", type=int, default=1, help="--judge-repeats")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load average {load:.1f} on {os.cpu_count()} cores")
    for separate, where in ((False, "stub server in this process (its CPU counts too)"),
                            (True, "stub server in another process (our client alone)")):
        base = measure(0.0, args.concurrency, args.questions, args.repeats, separate)
        m = measure(args.latency, args.concurrency, args.questions, args.repeats, separate)
        print(f"{where}:")
        print(f"  at zero latency: {base['calls']:.0f} calls in {base['wall']:.2f} s "
              f"({1000 * base['wall'] / base['calls']:.1f} ms per call of overhead)")
        print(f"  judge calls {m['calls']:.0f} | latency {args.latency:g} s | concurrency {args.concurrency} | "
              f"peak in flight {m['peak_in_flight']:.0f} | errors {m['errors']:.0f}")
        print(f"  wall {m['wall']:.2f} s | ideal (calls x latency / concurrency) {m['ideal']:.2f} s | "
              f"efficiency {m['efficiency']:.3f} (aim > 0.9)")


if __name__ == "__main__":
    main()
