"""One lm-eval task, lm-eval's own ``hf`` model vs our bridge (``--suite lm_eval:TASK``): wall time.

Same task, checkpoint, backend (HF transformers, fp32, CPU unless CUDA is
present), items and chat setting. Four runs, each in a fresh process so model
loading and lm-eval's task indexing count alike:

* lm-eval at its default batch size (1) and at ``--batch-size B``;
* ours at its default (``batch_size=auto``: sized from free memory, requests
  sorted by length) and at ``batch_size=B``.

Each run starts from nothing (ours with ``--fresh``: no journal reused). The
per-document verdicts of the primary metric are compared at the end; with
``--template chat`` log-likelihood tasks may differ where lm-eval scores the
generation prompt's trailing newline with the continuation (docs/lm-eval.md).

    python bench/lmeval_bridge.py --task local_mc --limit 8 --batch-size 8
    python bench/lmeval_bridge.py --task arc_easy --include '' --model hf:/ckpt --limit 200
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

ROOT = Path(__file__).resolve().parent.parent
LM_EVAL = """
import json, sys
from lm_eval import simple_evaluate
from lm_eval.tasks import TaskManager
a = json.loads(sys.argv[1])
device = "cuda" if __import__("torch").cuda.is_available() else "cpu"  # lm-eval's default is cuda
out = simple_evaluate(model="hf", model_args=f"pretrained={a['model']},dtype=float32", batch_size=a['batch'], device=device,
                      tasks=[a['task']], limit=a['limit'], apply_chat_template=a['chat'], log_samples=True,
                      task_manager=TaskManager(include_path=a['include'] or None))
rows = {}
for task, samples in out['samples'].items():
    for s in samples:
        key = (lambda m: m if s['filter'] == 'none' else f"{m}:{s['filter']}")
        rows.setdefault(f"{task}/{s['doc_id']}", {}).update({key(m): s[m] for m in s['metrics']})
json.dump(rows, open(a['verdicts'], 'w'))
"""


def model_dir(spec: str) -> str:
    from harness.adapters import resolve_target
    from harness.core.models import parse_model_spec

    return str(resolve_target(parse_model_spec(spec, None, None)))


def timed(cmd: list[str], cwd: Path) -> float:
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=cwd, env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd[:6])} ...\n{proc.stderr[-3000:]}")
    return time.monotonic() - t0


def run_lm_eval(args: argparse.Namespace, path: str, batch: int | str, verdicts: Path) -> float:
    payload = {"model": path, "batch": batch, "task": args.task, "limit": args.limit, "chat": args.template == "chat",
               "include": str(Path(args.include).resolve()) if args.include else "", "verdicts": str(verdicts)}
    return timed([sys.executable, "-c", LM_EVAL, json.dumps(payload)], cwd=Path(args.include or "."))


def run_ours(args: argparse.Namespace, path: str, batch: int | None, out: Path) -> float:
    cmd = [sys.executable, "-m", "harness", "run", "--model", f"hf:{path}", "--suite", f"lm_eval:{args.task}",
           "--lm-eval-template", args.template, "--limit", str(args.limit), "--out", str(out), "--run-id", "bench",
           "--fresh", "--model-args", "dtype=float32" + (f",batch_size={batch}" if batch else "")]
    if args.include:
        cmd += ["--lm-eval-include", str(Path(args.include).resolve())]
    return timed(cmd, cwd=Path(args.include or "."))


def agreement(ours: Path, theirs: Path, task: str) -> str:
    mine = {}
    for line in (ours / "bench" / f"lm_eval:{task}.samples.jsonl").read_text().splitlines():
        row = json.loads(line)
        mine[row["id"]] = row["scores"]
    their = json.loads(theirs.read_text())
    summary = json.loads((ours / "bench" / "summary.json").read_text())["tasks"][f"lm_eval:{task}"]
    primary = summary["metric_specs"][0]["key"]
    both = [k for k in mine if k in their and primary in mine[k] and primary in their[k]]
    same = sum(float(mine[k][primary]) == float(their[k][primary]) for k in both)
    return f"{primary}: {same}/{len(both)} documents with the same verdict"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="local_mc")
    p.add_argument("--include", default=str(ROOT / "tests" / "fixtures" / "lm_eval"),
                   help="folder of local task YAML files ('' for lm-eval's built-in tasks)")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--limit", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=8, help="the equal batch size of the second pair of runs")
    p.add_argument("--template", choices=("chat", "raw"), default="raw")
    args = p.parse_args()
    path = model_dir(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        rows = [("lm-eval hf, default (batch 1)", run_lm_eval(args, path, 1, t / "v1.json")),
                (f"lm-eval hf, batch {args.batch_size}", run_lm_eval(args, path, args.batch_size, t / "v2.json")),
                ("ours, default (batch auto)", run_ours(args, path, None, t / "ours1")),
                (f"ours, batch {args.batch_size}", run_ours(args, path, args.batch_size, t / "ours2"))]
        print(f"{args.task}, {args.limit} documents, {args.template} contexts, {path}")
        for name, secs in rows:
            print(f"  {name:34s} {secs:8.1f} s")
        print(f"  speed-up at defaults:         {rows[0][1] / rows[2][1]:.2f}x")
        print(f"  speed-up at equal batch size: {rows[1][1] / rows[3][1]:.2f}x")
        print(f"  agreement: {agreement(t / 'ours2', t / 'v2.json', args.task)}")
        print(f"  load average: {os.getloadavg()[0]:.1f} (timings on a loaded machine are not comparable)")


if __name__ == "__main__":
    main()
