"""Harness overhead on GSM8K: end-to-end `harness run` wall time over the bare adapter.

Baseline ("bare"): load the same adapter and call ``generate`` once on exactly
the requests the run will send. Measured ("harness"): the whole run in the
same process — plan, load, generate with journaling, score, summary, report —
in a fresh run directory. Goal: ratio <= 1.05.

    python bench/gsm8k_overhead.py --model smollm2-135m-instruct --limit 16
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

from harness.adapters import build_adapter
from harness.tasks.gsm8k import GSM8K

from harness.models import parse_model_spec
from harness.runner import RunConfig, TaskOptions, run


def bare(model: str, model_args: str | None, opts: TaskOptions) -> float:
    t0 = time.perf_counter()
    task = GSM8K(opts)
    examples = task.load(opts.limit)
    reqs = task.requests(examples, 0, {})
    adapter = build_adapter(parse_model_spec(model, model_args))
    adapter.generate(reqs)
    return time.perf_counter() - t0


def harness(model: str, model_args: str | None, opts: TaskOptions, out: Path) -> float:
    cfg = RunConfig(model=parse_model_spec(model, model_args), suites=("gsm8k",), out=out, task_options=opts)
    t0 = time.perf_counter()
    run(cfg)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--model-args", default=None)
    p.add_argument("--limit", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=None)
    p.add_argument("--repeats", type=int, default=1)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    opts = TaskOptions(limit=args.limit, max_tokens=args.max_tokens)
    bare(args.model, args.model_args, TaskOptions(limit=2, max_tokens=4))  # warm-up: conversion, imports, caches
    rows = []
    for i in range(args.repeats):
        t_bare = bare(args.model, args.model_args, opts)
        with tempfile.TemporaryDirectory() as tmp:
            t_harness = harness(args.model, args.model_args, opts, Path(tmp))
        rows.append((t_bare, t_harness))
        print(f"repeat {i + 1}: bare adapter {t_bare:.1f} s | harness end-to-end {t_harness:.1f} s | "
              f"ratio {t_harness / t_bare:.3f}")
    tb, th = sum(r[0] for r in rows), sum(r[1] for r in rows)
    print(f"GSM8K n={args.limit} model={args.model}: harness/bare = {th / tb:.3f} (goal <= 1.05)")


if __name__ == "__main__":
    main()
