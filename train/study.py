"""``harness study STUDY.toml``: data sources -> strategies -> checkpoints -> evaluation -> report.

A study is a declarative grid after Dong et al. 2023 (arXiv 2310.05492):
base model, sources, strategies (with DMT's k values and data fractions),
training arguments, evaluation suite and judge. The command

1. validates the whole file before any work (unknown keys, k outside [0, 1],
   bad fractions, unknown suites, missing files all fail at once, exit 2);
2. loads the sources and builds every grid point's stages (``--dry-run``
   prints this plan and stops);
3. trains the stage checkpoints that are missing; a checkpoint is named by
   the hash of (base fingerprint, hyperparameters, data of every stage so
   far), so finished ones, and prefixes shared by two strategies, are reused;
4. evaluates every final checkpoint (every stage with ``every_stage = true``)
   through ``harness.run.runner.run``; a finished run (summary.json, same config)
   is skipped, an interrupted one resumes from its journal;
5. writes the comparison report with plots (``harness.readout.report.write_report``).

Rerunning a finished study trains and evaluates nothing. Multi-GPU training
runs the same file under a launcher, then ``harness study`` evaluates::

    torchrun --nproc_per_node 8 -m harness.train.study paper_grid.toml --train-only
    harness study paper_grid.toml

See train/examples/tiny_cpu.toml (minutes on CPU) and paper_grid.toml.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from harness.core.errors import UsageError
from harness.train.data import Conversation
from harness.train.strategies import Stage
from harness.train.study_file import Study, load_study, parse_study  # noqa: F401 (parse_study: public here too)

log = logging.getLogger("harness")


@dataclass(frozen=True)
class GridPoint:
    """One point of the grid: a strategy variant at a data fraction, with its stages."""

    label: str
    strategy: str
    fraction: float
    stages: tuple[Stage, ...]
    meta: dict[str, Any] = field(default_factory=dict)  # what the strategy's swept parameter fixes: k, source
    axes: dict[str, list[str]] = field(default_factory=dict)  # metadata fields readers plot: {"x", "series"}

    @property
    def k(self) -> float | None:
        return self.meta.get("k")

    @property
    def source(self) -> str | None:
        return self.meta.get("source")

    @property
    def notes(self) -> list[str]:
        return [n for s in self.stages for n in s.notes]


# -- plan ---------------------------------------------------------------------------------------


def load_sources(study: Study) -> dict[str, list[Conversation]]:
    """Every source's training conversations (held-out ones set aside); an empty source is refused."""
    return load_split(study)[0]


def load_split(study: Study) -> tuple[dict[str, list[Conversation]], dict[str, list[Conversation]]]:
    """(training conversations, held-out conversations) per source; a source left with no example to
    train on is refused before any training."""
    from harness.train.data import load_source_split

    out, held = {}, {}
    for spec in study.sources:
        convs, held[spec.name], st = load_source_split(spec)
        log.info("source %s: %d records, %d kept, %d held out, dropped %s, filter %s removed %d%s", st.name,
                 st.records, st.kept, st.held_out, st.dropped or "none", st.filter, st.filtered,
                 f" {st.filter_labels}" if st.filtered else "")
        if not convs:
            raise UsageError(f"source {spec.name!r} has 0 examples left ({st.records} records, dropped "
                             f"{st.dropped or 'none'}, {st.filtered} removed by filter {st.filter!r}, "
                             f"{st.held_out} held out); check its file, its filter and its holdout")
        out[spec.name] = convs
    return out, {n: h for n, h in held.items() if h}


def make_plan(study: Study, sources: dict[str, list[Conversation]]) -> list[GridPoint]:
    """Every grid point: each strategy's variants (harness.train.strategies.variants) at each fraction."""
    from harness.train.strategies import build, variants

    g, points = study.grid, []
    scaling = len(g["fractions"]) > 1
    for f in g["fractions"]:
        tag = "" if not scaling and f == 1 else f"-f{f:g}"
        for s in g["strategies"]:
            for v in variants(s, g):
                stages = build(s, sources, fractions=dict.fromkeys(sources, f), seed=study.seed, **v.params)
                empty = [st.name for st in stages if not st.examples]
                if empty:
                    raise UsageError(f"grid point {v.label}{tag}: stage(s) {empty} would train on no example")
                axes = {"x": [*v.axes["x"], *(["fraction"] if scaling else [])],
                        "series": [*v.axes["series"], *(["stage"] if study.eval.every_stage else [])]}
                points.append(GridPoint(f"{v.label}{tag}", s, f, tuple(stages), v.meta, axes))
    labels = [p.label for p in points]
    twice = next((label for label in labels if labels.count(label) > 1), None)
    if twice is not None:  # labels name checkpoints' index entries and runs: they must be unique
        raise UsageError(f"two grid points are labelled {twice!r}; give k and fractions that differ in their "
                         "first 6 significant digits")
    return points


def plan_notes(points: list[GridPoint]) -> list[str]:
    """Warnings the plan carries (a proportion rounded up to one example), each once."""
    return list(dict.fromkeys(f"{p.label}: {n}" for p in points for n in p.notes))


def print_plan(points: list[GridPoint], held: dict[str, list[Conversation]] | None = None) -> None:
    for p in points:
        stages = " -> ".join(f"[{s.name}: {sum(s.counts().values())} ex, {s.sha256[:8]}]" for s in p.stages)
        print(f"{p.label:28s} {stages}")
    if held:
        from harness.train.holdout import task_name
        print("held out (never trained on): " + ", ".join(f"{n} {len(h)} ex -> {task_name(n)}"
                                                            for n, h in held.items()))
    for note in plan_notes(points):
        print(f"note: {note}")


# -- base model, training, evaluation -----------------------------------------------------------


def resolve_base(study: Study) -> Any:
    from harness.core.models import EMBEDDED_ALIASES, ModelSpec, check_model_target, fingerprint_checkpoint
    from harness.train.sft import BaseModel

    target = study.base_model
    if target in EMBEDDED_ALIASES:
        from harness.adapters import resolve_target
        target = resolve_target(ModelSpec("hf", target))
    elif not Path(target).expanduser().exists():
        check_model_target(ModelSpec("hf", target), flag="base_model")
        from huggingface_hub import snapshot_download
        try:
            target = snapshot_download(target)
        except Exception as exc:  # offline, gated, missing: the user's to fix
            raise UsageError(f"base_model {study.base_model!r} cannot be fetched from the hub ({exc}); "
                             "pass a local checkpoint directory") from None
    else:
        check_model_target(ModelSpec("hf", target), flag="base_model")
    return BaseModel(str(Path(target).expanduser().resolve()), fingerprint_checkpoint(Path(target).expanduser()))


def with_holdout_files(study: Study, held: dict[str, list[Conversation]]) -> Study:
    """Write each source's held-out examples into the study folder; the study's held-out probes read them."""
    from dataclasses import replace

    from harness.core.conversations import write_conversations
    from harness.train.holdout import probe_class

    tasks = dict(study.eval.tasks)
    for name, convs in held.items():
        path = (study.out / "holdout" / f"{name}.jsonl").resolve()
        cls = probe_class(name)
        tasks[cls.name] = cls.Options(data=str(path), data_sha256=write_conversations(convs, path), source=name)
    return replace(study, eval=replace(study.eval, tasks=tasks)) if held else study


def with_representation_data(study: Study, sources: dict[str, list[Conversation]]) -> Study:
    """A study scoring ``representations`` without ``[eval.representations] general_data`` embeds its own
    general source as filtered for training (held-out examples already set aside): its first
    ``per_ability`` conversations, written into the study folder so every stage embeds the same texts."""
    from dataclasses import replace

    from harness.core.conversations import write_conversations
    from harness.tasks import task_class

    name = "representations"
    general = study.grid.get("general")
    if name not in study.eval.suites or general not in sources:
        return study
    opts = study.eval.tasks.get(name) or task_class(name).Options()
    if opts.general_data:
        return study
    path = (study.out / name / f"{general}.jsonl").resolve()
    write_conversations(sources[general][:opts.per_ability], path)
    log.info("representations: the general ability is the study source %r (%s)", general, path)
    tasks = {**study.eval.tasks, name: replace(opts, general_data=str(path), general_format="messages")}
    return replace(study, eval=replace(study.eval, tasks=tasks))


def train_all(study: Study, points: list[GridPoint], base: Any) -> dict[str, list[Any]]:
    from harness.train.sft import train_stages

    root = study.out / "checkpoints"
    out = {}
    for p in points:
        meta = {"study": study.name, "label": p.label, "strategy": p.strategy, "k": p.k, "fraction": p.fraction,
                "source": p.source, **p.meta}
        out[p.label] = train_stages(list(p.stages), study.train, base, root, meta)
    return out


def run_config(study: Study, target: str, meta: dict[str, Any]) -> Any:
    from harness.core.models import ModelSpec, parse_model_spec
    from harness.run.runner import JudgeOptions, RunConfig

    e = study.eval
    judge = JudgeOptions(spec=parse_model_spec(e.judge, e.judge_args, e.judge_base_url, flag="[eval] judge")
                         if e.judge else None, concurrency=e.judge_concurrency)
    return RunConfig(model=ModelSpec(kind=e.backend, target=target, args=dict(e.model_args)), suites=e.suites,
                     out=study.out / "runs", shared=e.shared, task_options=e.tasks,
                     judge=judge, concurrency=e.concurrency, label=meta["label"], metadata=meta)


def finished(cfg: Any) -> Path | None:
    """The run directory when a finished run with this exact configuration exists."""
    from harness.run.runner import default_run_id, options_record

    run_dir = cfg.out / default_run_id(cfg)
    try:
        config = json.loads((run_dir / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    same = (config.get("metadata") == json.loads(json.dumps(cfg.metadata))
            and config.get("model", {}).get("target") == cfg.model.target
            and config.get("suites") == list(cfg.suites)
            and config.get("task_options") == json.loads(json.dumps(options_record(cfg))))
    return run_dir if same and (run_dir / "summary.json").exists() else None


def evaluations(study: Study, points: list[GridPoint], ckpts: dict[str, list[Any]], base: Any) -> list[Any]:
    cfgs = []
    if study.eval.include_base:
        cfgs.append(run_config(study, base.path, {"study": study.name, "label": "base", "strategy": "base", "k": None,
                                                  "fraction": None, "stage": 0, "n_stages": 0,
                                                  "axes": {"x": [], "series": ["strategy"]}}))
    for p in points:
        results = ckpts[p.label]
        chosen = range(len(results)) if study.eval.every_stage else [len(results) - 1]
        for i in chosen:
            label = p.label if i == len(results) - 1 else f"{p.label}-stage{i + 1}"
            cfgs.append(run_config(study, str(results[i].path), {
                "study": study.name, "label": label, "strategy": p.strategy, "k": p.k, "fraction": p.fraction,
                "source": p.source, **p.meta, "stage": i + 1, "n_stages": len(results),
                "stage_name": p.stages[i].name, "final": i == len(results) - 1,
                "checkpoint": results[i].manifest.get("identity"), "axes": p.axes}))
    return cfgs


def evaluate_all(cfgs: list[Any]) -> tuple[list[Path], int]:
    """Run every evaluation (a finished one is reused). Grid points share checkpoints (DMT's first stage is
    mixed sequential's; DMT at k=0 is mixed sequential): an evaluation of a checkpoint already evaluated with the
    same options starts from that run's journals, so it generates, executes and judges nothing again and only
    writes its own run directory (its label and axes) and scores."""
    from harness.run.runner import default_run_id, run

    run_dirs, ran, by_work = [], 0, {}
    for cfg in cfgs:
        work = default_run_id(replace(cfg, label=None, metadata={}))  # checkpoint, suites and options only
        done = finished(cfg)
        if done is not None:
            log.info("eval %s: finished run %s reused", cfg.metadata["label"], done)
        else:
            if work in by_work and _seed_journals(by_work[work], cfg.out / default_run_id(cfg)):
                log.info("eval %s: the same checkpoint and options as %s; its journals are reused",
                         cfg.metadata["label"], by_work[work])
            done = run(cfg)
            ran += 1
        by_work.setdefault(work, done)
        run_dirs.append(done)
    return run_dirs, ran


def _seed_journals(source: Path, run_dir: Path) -> bool:
    """Start a new run directory with the journals (completions, executions, judgments) of ``source``;
    False, touching nothing, when ``run_dir`` already exists (a run of its own to resume)."""
    import shutil

    from harness.run.rundir import open_run_dir

    if run_dir.exists():
        return False
    with open_run_dir(run_dir.parent, run_dir.name):  # made, marked and locked as every run directory is
        for journal in sorted(source.glob("*.jsonl")):
            if not journal.name.endswith(".samples.jsonl"):  # scored outputs: the new run writes its own
                shutil.copy2(journal, run_dir / journal.name)
    return True


def write_study_report(study: Study, run_dirs: list[Path], notes: list[str] = ()) -> str:
    """The comparison report, with the plan's notes (proportions rounded up to one example) at the end."""
    try:
        from harness.readout.report import write_report
    except ImportError:
        raise UsageError("harness.readout.report.write_report is not available in this install; the evaluations are "
                         f"finished under {study.out / 'runs'}; rerun `harness study` once it is") from None
    r = study.report
    text = write_report(run_dirs, study.out / "report", baseline=Path(r["baseline"]) if r["baseline"] else None,
                        formats=r["formats"], plots=r["plots"])
    if not notes:
        return text
    section = "\n## Plan notes\n\n" + "".join(f"- {n}\n" for n in notes)
    md = study.out / "report" / "report.md"
    if md.exists():
        md.write_text(md.read_text(encoding="utf-8").rstrip("\n") + "\n" + section, encoding="utf-8")
    return text.rstrip("\n") + "\n" + section


@dataclass(frozen=True)
class StudyOutcome:
    trained: int
    evaluated: int
    run_dirs: tuple[Path, ...]


def run_study(study: Study, dry_run: bool = False, train_only: bool = False) -> StudyOutcome:
    t0 = time.monotonic()
    if not train_only:
        run_config(study, "plan-check", {"label": "check"})  # a bad judge or task option fails now, not after training
    sources, held = load_split(study)
    points = make_plan(study, sources)
    log.info("plan: %d grid points, %d stages, %d held-out examples (%.1f s)", len(points),
             sum(len(p.stages) for p in points), sum(map(len, held.values())), time.monotonic() - t0)
    for note in plan_notes(points):
        log.warning("plan: %s", note)
    if dry_run:
        print_plan(points, held)
        return StudyOutcome(0, 0, ())
    study = with_representation_data(with_holdout_files(study, held), sources)
    base = resolve_base(study)
    ckpts = train_all(study, points, base)
    trained = sum(r.trained for rs in ckpts.values() for r in rs)
    if train_only or int(os.environ.get("RANK", "0")) != 0:
        return StudyOutcome(trained, 0, ())
    run_dirs, evaluated = evaluate_all(evaluations(study, points, ckpts, base))
    _write_index(study, points, ckpts, run_dirs)
    print(write_study_report(study, run_dirs, plan_notes(points)))
    log.info("study %s: %d stages trained, %d runs evaluated, report in %s (%.1f s)", study.name, trained,
             evaluated, study.out / "report", time.monotonic() - t0)
    return StudyOutcome(trained, evaluated, tuple(run_dirs))


def _write_index(study: Study, points: list[GridPoint], ckpts: dict[str, list[Any]], run_dirs: list[Path]) -> None:
    from harness.core.files import write_json_atomic

    write_json_atomic(study.out / "study.json", {
        "name": study.name, "base_model": study.base_model, "train": asdict(study.train),
        "notes": plan_notes(points),
        "holdout": {t: {"data": o.data, "data_sha256": o.data_sha256} for t, o in study.eval.tasks.items()
                    if t.startswith("holdout_")},
        "points": [{"label": p.label, "strategy": p.strategy, "k": p.k, "fraction": p.fraction, **p.meta,
                    "stages": [{"name": s.name, "counts": s.counts(), "sha256": s.sha256,
                                "checkpoint": str(r.path)} for s, r in zip(p.stages, ckpts[p.label], strict=True)]}
                   for p in points],
        "runs": [str(d) for d in run_dirs]})


def main_study(args: argparse.Namespace) -> int:
    study = load_study(args.study_file, args.out)
    run_study(study, dry_run=args.dry_run, train_only=getattr(args, "train_only", False))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m harness.train.study STUDY.toml --train-only``: the entry point for torchrun/accelerate."""
    from harness.core.errors import EngineError

    p = argparse.ArgumentParser(prog="python -m harness.train.study")
    p.add_argument("study_file")
    p.add_argument("--out", default=None)
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--train-only", action="store_true", help="train missing checkpoints; evaluate later")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    try:
        return main_study(args)
    except (UsageError, EngineError) as exc:
        print(f"harness: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, UsageError) else 1


if __name__ == "__main__":
    sys.exit(main())

