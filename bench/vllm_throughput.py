"""vLLM adapter throughput over bare ``vllm.LLM.generate`` and over the HF adapter.

Same GSM8K chat requests (greedy) for all three. Bare: the adapter's own
``vllm.LLM`` instance, called directly with prompt token ids and
``SamplingParams`` prepared before the clock starts. Adapter:
``VLLMAdapter.generate`` on the ``Request`` records, timed with its prompt
rendering, tokenisation and result conversion. HF: ``HFAdapter.generate`` on
the same requests. Throughput is generated tokens per second; bare and
adapter runs alternate and the median of ``--repeats`` is reported. Goal:
adapter / bare >= 0.95.

    python bench/vllm_throughput.py --model smollm2-135m-instruct --prompts 32 --max-tokens 64
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import statistics
import time
from collections.abc import Callable

from harness.core.models import ModelSpec, parse_model_args
from harness.core.records import Request


def gsm8k_requests(n: int, max_tokens: int) -> list[Request]:
    from harness.tasks.gsm8k import GSM8K

    task = GSM8K()
    reqs = task.requests(task.load(n), 0, {})
    return [dataclasses.replace(r, max_tokens=max_tokens) for r in reqs]


def timed(fn: Callable[[], int]) -> tuple[float, int]:
    t0 = time.perf_counter()
    tokens = fn()
    return time.perf_counter() - t0, tokens


def bench_vllm(path: str, args: dict, reqs: list[Request], repeats: int) -> dict[str, tuple[float, int]]:
    from harness.adapters.vllm import VLLMAdapter

    adapter = VLLMAdapter(ModelSpec("vllm", path, args), path)
    try:
        prompts = [{"prompt_token_ids": adapter.prompt_ids(r)} for r in reqs]
        params = [adapter.engine.sampling_params(n=r.n, temperature=r.temperature, top_p=r.top_p,
                                                 max_tokens=r.max_tokens, stop=list(r.stop) or None, seed=r.seed)
                  for r in reqs]
        llm = adapter.engine.llm

        def bare() -> int:
            outs = llm.generate(prompts, params, use_tqdm=False)
            return sum(len(o.token_ids) for out in outs for o in out.outputs)

        def ours() -> int:
            return sum(c.completion_tokens or 0 for c in adapter.generate(reqs))

        bare()  # warm-up
        runs: dict[str, list[tuple[float, int]]] = {"bare": [], "adapter": []}
        for i in range(repeats):
            order = [("bare", bare), ("adapter", ours)] if i % 2 == 0 else [("adapter", ours), ("bare", bare)]
            for name, fn in order:
                runs[name].append(timed(fn))
                print(f"  repeat {i + 1} {name}: {runs[name][-1][0]:.2f} s", flush=True)
        return {k: _median(v) for k, v in runs.items()}
    finally:
        adapter.close()


def bench_hf(path: str, reqs: list[Request]) -> tuple[float, int]:
    from harness.adapters.hf import HFAdapter

    adapter = HFAdapter(ModelSpec("hf", path, {"dtype": "float32"}), path)
    try:
        adapter.generate(reqs[:2])  # warm-up
        return timed(lambda: sum(c.completion_tokens or 0 for c in adapter.generate(reqs)))
    finally:
        adapter.close()


def _median(runs: list[tuple[float, int]]) -> tuple[float, int]:
    seconds = statistics.median(s for s, _ in runs)
    return seconds, runs[0][1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct", help="checkpoint dir or the embedded alias")
    p.add_argument("--model-args", default=None, help="vLLM engine options, key=value,...")
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-hf", action="store_true", help="skip the HF adapter comparison")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from harness.adapters import resolve_target

    path = resolve_target(ModelSpec("vllm", args.model))
    reqs = gsm8k_requests(args.prompts, args.max_tokens)
    print(f"{len(reqs)} GSM8K prompts, greedy, max_tokens={args.max_tokens}, model {args.model}", flush=True)
    results = bench_vllm(path, parse_model_args(args.model_args), reqs, args.repeats)
    _print(results)  # before HF, which is much slower
    tps = {k: t / s for k, (s, t) in results.items()}
    print(f"adapter / bare vllm.LLM.generate: {tps['adapter'] / tps['bare']:.3f} (goal >= 0.95)", flush=True)
    if not args.no_hf:
        results = {"hf": bench_hf(path, reqs)}
        _print(results)
        print(f"adapter / HF adapter: {tps['adapter'] / (results['hf'][1] / results['hf'][0]):.2f}x")


def _print(results: dict[str, tuple[float, int]]) -> None:
    for name, (seconds, tokens) in results.items():
        print(f"{name:>8}: {seconds:7.2f} s  {tokens:6d} tokens  {tokens / seconds:8.1f} tok/s", flush=True)


if __name__ == "__main__":  # vLLM starts its engine processes with spawn
    main()
