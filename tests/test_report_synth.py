"""Synthetic run directories with constructed per-item scores (shared by the report/gate tests).

A run directory is written exactly as harness/run/runner.py writes one:
config.json, <task>.samples.jsonl, summary.json. The scores are chosen by
the test, so every expected number is known.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness import RUN_FORMAT
from harness.core.records import MetricSpec, sha256_json

GSM8K_SPECS = (MetricSpec("strict", "strict", "binary", 100.0, primary=True),
               MetricSpec("flexible", "flexible", "binary", 100.0))
MT_SPECS = (MetricSpec("score", "score", "continuous", 1.0, primary=True),)


def make_run(root: Path, name: str, tasks: dict[str, dict[str, Any]], *, label: str | None = None,
             metadata: dict[str, Any] | None = None, fingerprint: str = "ab" * 32) -> Path:
    """tasks: name -> {"scores": {item id: {key: value}} (None value = errored item),
    "specs": MetricSpec tuple, "version": str, "extra": extra summary metrics}."""
    run_dir = root / name
    run_dir.mkdir(parents=True)
    summary_tasks = {}
    for task, spec in tasks.items():
        rows = [{"id": item, "requests": [], "completions": [], "scores": s or {}, "extracted": {},
                 "error": None if s is not None else "generation failed", "info": {}}
                for item, s in spec["scores"].items()]
        with open(run_dir / f"{task}.samples.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        specs = spec.get("specs", GSM8K_SPECS)
        metrics: dict[str, Any] = {"n": len(rows), "errors": sum(r["error"] is not None for r in rows)}
        for m in specs:
            vals = [r["scores"][m.key] for r in rows if m.key in r["scores"]]
            metrics[m.name] = sum(vals) / len(vals) if vals else float("nan")
        metrics |= spec.get("extra", {})
        summary_tasks[task] = {"version": spec.get("version", "1"), "n": len(rows), "errors": metrics["errors"],
                               "metrics": metrics, "metric_specs": [m.to_dict() for m in specs], "config": {},
                               "item_ids_sha256": sha256_json(sorted(spec["scores"]))}
    label = label or name
    config = {"format": RUN_FORMAT, "harness_version": "0.1.0", "run_id": name, "label": label,
              "model": {"spec": "hf:/ckpt/" + name, "kind": "hf", "target": "/ckpt/" + name},
              "adapter": {"kind": "hf", "fingerprint": fingerprint}, "metadata": metadata or {},
              "tasks": {t: {"version": s.get("version", "1")} for t, s in tasks.items()}}
    (run_dir / "config.json").write_text(json.dumps(config))
    (run_dir / "summary.json").write_text(json.dumps({"run_id": name, "harness_version": "0.1.0",
                                                      "format": RUN_FORMAT, "label": label,
                                                      "tasks": summary_tasks}))
    return run_dir


def binary_scores(correct: list[int], flexible: list[int] | None = None) -> dict[str, dict[str, float]]:
    """Item ids q000... with strict (and flexible, default = strict) 0/1 scores."""
    flexible = flexible if flexible is not None else correct
    return {f"q{i:03d}": {"strict": float(c), "flexible": float(f)}
            for i, (c, f) in enumerate(zip(correct, flexible, strict=True))}


def gsm8k(correct: list[int], **extra: Any) -> dict[str, dict[str, Any]]:
    return {"gsm8k": {"scores": binary_scores(correct), **extra}}
