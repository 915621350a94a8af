"""Probe scoring throughput: tokens/s through the harness vs a bare batched forward pass.

Measured ("harness"): a whole ``harness run --suite probes`` in a fresh run
directory (plan, data, tokenising and splitting every request, length-sorted
batches, journaling each result, scoring, summary, report) with the model
already loaded, so load time counts in neither. Baseline ("bare"): the same
model on exactly the same token ids, pre-tokenised outside the clock,
length-sorted into left-padded batches of the same size, one forward pass
each (keeping only the logits the continuations need, as the HF adapter does,
so the ratio is the harness's overhead, not a trick one side lacks) and the
continuation log-probabilities summed. Tokens are every input token (context +
continuation) of every item. Goal: harness/bare >= 0.9.

The two sides must agree on every item's log-probability (checked), and the
load average is printed before and after: on a shared machine neighbours move
both numbers; repeats alternate the order so warm caches favour neither side.

    python bench/probe_throughput.py --model smollm2-135m-instruct --limit 20
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from harness.adapters import build_adapter
from harness.adapters.tokens import encode_for_scoring
from harness.core.models import parse_model_spec
from harness.core.options import SharedOptions
from harness.run.passes import LazyAdapter
from harness.run.runner import RunConfig, run_with_summary
from harness.tasks import build_task

SUITES = ("probe_math", "probe_code")


class Kept:
    """The loaded adapter, never closed by the runner (it is reused across repeats)."""

    def __init__(self, adapter: Any) -> None:
        self._adapter = adapter

    def __getattr__(self, name: str) -> Any:
        return getattr(self._adapter, name)

    def close(self) -> None:
        pass


def requests(limit: int) -> list[Any]:
    out = []
    for name in SUITES:
        task = build_task(name)
        out += task.requests(task.load(limit), 0, {})
    return out


def harness(adapter: Any, model: str, model_args: str | None, limit: int) -> tuple[float, dict[str, float]]:
    spec = parse_model_spec(model, model_args)

    def connect(spec: Any, role: str, **_: Any) -> LazyAdapter:
        return LazyAdapter(adapter.describe(), lambda: Kept(adapter), label=spec.label)

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):  # the run prints its report
            run_dir, _ = run_with_summary(RunConfig(model=spec, suites=SUITES, out=Path(tmp),
                                                    shared=SharedOptions(limit=limit)), connect)
        wall = time.perf_counter() - t0
        sums = _journaled_sums(run_dir)
    return wall, sums


def _journaled_sums(run_dir: Path) -> dict[str, float]:
    import json
    out = {}
    for name in SUITES:
        for line in (run_dir / f"{name}.samples.jsonl").read_text().splitlines():
            row = json.loads(line)
            out[row["id"]] = row["completions"][0]["logprob_sum"]
    return out


def bare(adapter: Any, reqs: list[Any]) -> tuple[float, dict[str, float], int]:
    import torch

    tok, model = adapter.tokenizer, adapter.model
    encoded = sorted(((r.id, encode_for_scoring(tok, r)) for r in reqs), key=lambda p: -len(p[1].ids))
    n_tokens = sum(len(x.ids) for _, x in encoded)
    sums: dict[str, float] = {}
    t0 = time.perf_counter()
    with torch.inference_mode():
        for s in range(0, len(encoded), adapter.batch_size):
            batch = encoded[s:s + adapter.batch_size]
            width = len(batch[0][1].ids)
            ids = torch.full((len(batch), width), tok.pad_token_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, (_, x) in enumerate(batch):
                ids[row, width - len(x.ids):] = torch.tensor(x.ids)
                mask[row, width - len(x.ids):] = 1
            keep = max(len(x.ids) - x.start for _, x in batch) + 1
            logits = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                           logits_to_keep=keep).logits
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            for row, (rid, x) in enumerate(batch):
                n = len(x.ids) - x.start
                target = torch.tensor(x.ids[x.start:])
                picked = logprobs[row, keep - n - 1:keep - 1].gather(-1, target[:, None])
                sums[rid] = float(picked.double().sum())
    return time.perf_counter() - t0, sums, n_tokens


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--model-args", default=None)
    p.add_argument("--limit", type=int, default=20, help="items per probe (probe_math and probe_code)")
    p.add_argument("--repeats", type=int, default=1)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    adapter = build_adapter(parse_model_spec(args.model, args.model_args), needs_chat=True)
    reqs = requests(args.limit)
    bare(adapter, reqs[:2])  # warm-up: first-call allocations
    wall = {"bare": 0.0, "harness": 0.0}
    n_tokens = 0
    for i in range(args.repeats):
        for name in (("bare", "harness") if i % 2 == 0 else ("harness", "bare")):
            if name == "bare":
                w, bare_sums, n_tokens = bare(adapter, reqs)
            else:
                w, harness_sums = harness(adapter, args.model, args.model_args, args.limit)
            wall[name] += w
            print(f"repeat {i + 1} {name}: {w:.1f} s")
    worst = max(abs(harness_sums[k] - bare_sums[k]) for k in bare_sums)
    if harness_sums.keys() != bare_sums.keys() or not worst < 1e-3:
        raise SystemExit(f"harness and bare scoring disagree (largest log-prob difference {worst:.2e}): not comparable")
    rate = {k: n_tokens * args.repeats / v for k, v in wall.items()}
    print(f"{len(reqs)} probe items, {n_tokens} tokens, batch {adapter.batch_size}, model {args.model}: "
          f"harness {rate['harness']:.0f} tok/s, bare forward {rate['bare']:.0f} tok/s, "
          f"harness/bare = {rate['harness'] / rate['bare']:.3f} (goal >= 0.9); "
          f"largest log-prob difference {worst:.2e}")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
