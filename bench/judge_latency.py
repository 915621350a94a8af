"""MT-Bench judging wall time against a local OpenAI-compatible server with a fixed per-call latency.

The judging pass of ``MTBench.score`` (prompt rendering, the OpenAIAdapter's
async pass, parsing, journaling with fsync) runs against ``tests/openai_stub.py``
where every judge call takes ``--latency`` seconds. The ideal wall time is
``calls x latency / concurrency``; efficiency = ideal / measured (aim > 0.9).
Judge start-up (client creation, the health check) is outside the timing; it
happens once per run, not per call. A zero-latency pass measured first, in the
same run, shows the per-call overhead (client, server, parsing, journal) that
efficiency pays for: on a CPU shared with other work it is the whole story.

Example: ``python bench/judge_latency.py --latency 0.2 --concurrency 16 --questions 80``
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

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


def measure(latency: float, concurrency: int, questions: int, repeats: int) -> dict[str, float]:
    task = MTBench(MTBenchOptions(judge_repeats=repeats))
    examples = task.load(questions)
    comps = {ex.id: [Completion(id=ex.id, texts=(f"answer {t} for {ex.id}",)) for t in (1, 2)] for ex in examples}
    with StubServer(judge_reply, models=("judge",), latency=latency) as stub, \
            tempfile.TemporaryDirectory() as tmp:
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
    base = measure(0.0, args.concurrency, args.questions, args.repeats)
    m = measure(args.latency, args.concurrency, args.questions, args.repeats)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"baseline at zero latency: {base['calls']:.0f} calls in {base['wall']:.2f} s "
          f"({1000 * base['wall'] / base['calls']:.1f} ms per call of overhead) | load average {load:.1f} "
          f"on {os.cpu_count()} cores")
    print(f"judge calls {m['calls']:.0f} | latency {args.latency:g} s | concurrency {args.concurrency} | "
          f"peak in flight {m['peak_in_flight']:.0f} | errors {m['errors']:.0f}")
    print(f"wall {m['wall']:.2f} s | ideal (calls x latency / concurrency) {m['ideal']:.2f} s | "
          f"efficiency {m['efficiency']:.3f} (aim > 0.9)")


if __name__ == "__main__":
    main()
