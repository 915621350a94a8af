"""Harness overhead on GSM8K: end-to-end `harness run` wall time over the bare adapter.

Baseline ("bare"): load the same adapter and call ``generate`` once on exactly
the requests the run will send. Measured ("harness"): the whole run in the
same process — plan, load, generate with journaling, score, summary, report —
in a fresh run directory. Goal: ratio <= 1.05.

Both wall time and process CPU time are printed: on a shared machine the wall
ratio moves with the neighbours' load, the CPU ratio much less. Repeats
alternate the order (bare first, then harness first) so warm-cache effects
cancel.

    python bench/gsm8k_overhead.py --model smollm2-135m-instruct --limit 16
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

from harness.adapters import build_adapter
from harness.core.models import parse_model_spec
from harness.core.options import SharedOptions
from harness.run.runner import RunConfig, run
from harness.tasks.gsm8k import GSM8K


def bare(model: str, model_args: str | None, opts: SharedOptions) -> tuple[float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    task = GSM8K(shared=opts)
    examples = task.load(opts.limit)
    reqs = task.requests(examples, 0, {})
    adapter = build_adapter(parse_model_spec(model, model_args))
    adapter.generate(reqs)
    return time.perf_counter() - t0, time.process_time() - c0


def harness(model: str, model_args: str | None, opts: SharedOptions) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = RunConfig(model=parse_model_spec(model, model_args), suites=("gsm8k",), out=Path(tmp),
                        shared=opts)
        t0, c0 = time.perf_counter(), time.process_time()
        run(cfg)
        return time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--model-args", default=None)
    p.add_argument("--limit", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=None)
    p.add_argument("--repeats", type=int, default=1)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    opts = SharedOptions(limit=args.limit, max_tokens=args.max_tokens)
    bare(args.model, args.model_args, SharedOptions(limit=2, max_tokens=4))  # warm-up: conversion, imports, caches
    wall = {"bare": 0.0, "harness": 0.0}
    cpu = {"bare": 0.0, "harness": 0.0}
    for i in range(args.repeats):
        order = ("bare", "harness") if i % 2 == 0 else ("harness", "bare")
        for name in order:
            w, c = bare(args.model, args.model_args, opts) if name == "bare" else harness(args.model, args.model_args, opts)
            wall[name] += w
            cpu[name] += c
            print(f"repeat {i + 1} {name}: wall {w:.1f} s, cpu {c:.1f} s")
    print(f"GSM8K n={args.limit} model={args.model}: harness/bare wall = {wall['harness'] / wall['bare']:.3f}, "
          f"cpu = {cpu['harness'] / cpu['bare']:.3f} (goal <= 1.05)")

if __name__ == "__main__":
    main()
