"""Command line: parses and dispatches, nothing more.

    harness run --model smollm2-135m-instruct --suite all --limit 50
    harness report runs/A runs/B --baseline runs/A
    harness check runs/new --baseline runs/base --max-drop gsm8k=1.0
    harness score runs/A                      # re-score from files, no model
    harness study study.toml

User mistakes (``UsageError``) print one line and exit 2; a dead engine
(``EngineError``) exits 1 with finished work kept for resume.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import NoReturn

from harness import __version__
from harness.core.errors import EngineError, UsageError


def _run_parser(sub: argparse._SubParsersAction) -> None:
    from harness.core.options import SharedOptions, add_arguments
    from harness.tasks import check_flags, options_classes

    p = sub.add_parser("run", help="evaluate one model on a suite and write a run directory + report")
    m = p.add_argument_group("model")
    m.add_argument("--model", required=True, help="hf:PATH, vllm:PATH, openai:NAME, a checkpoint dir, a hub id, "
                   "or the embedded alias smollm2-135m-instruct")
    m.add_argument("--model-args", default=None, help="engine options, key=value,... (e.g. dtype=float32,batch_size=8)")
    m.add_argument("--base-url", default=None, help="OpenAI-compatible endpoint for --model openai:NAME")
    m.add_argument("--chat-template", default=None, help="Jinja chat template file, for checkpoints that lack one")
    m.add_argument("--concurrency", type=int, default=16, help="in-flight requests for openai: models")
    r = p.add_argument_group("run")
    r.add_argument("--suite", default="all",
                   help="comma-separated: all, a group (probes), or task names (see `harness tasks`)")
    r.add_argument("--out", default="runs", help="parent directory of run directories (default: runs/)")
    r.add_argument("--run-id", default=None, help="run directory name (default: derived from the configuration, "
                   "so rerunning the same command resumes)")
    r.add_argument("--fresh", action="store_true", help="discard this run's journals and start over")
    r.add_argument("--label", default=None, help="row label in reports (default: the model name)")
    add_arguments(r, SharedOptions)
    # Each task's own options, generated from its options dataclass (harness.core.options).
    check_flags()
    for name, cls in options_classes().items():
        add_arguments(p.add_argument_group(f"{name} options"), cls)
    j = p.add_argument_group("judge (mt_bench)")
    j.add_argument("--judge", default=None, help="openai:gpt-4 (default with OPENAI_API_KEY), openai:NAME "
                   "with --judge-base-url, hf:PATH, vllm:PATH")
    j.add_argument("--judge-base-url", default=None)
    j.add_argument("--judge-args", default=None, help="engine options for a local judge, key=value,...")
    j.add_argument("--judge-concurrency", type=int, default=16)
    g = p.add_argument_group("gate")
    g.add_argument("--baseline", default=None, help="baseline run directory to compare against")
    g.add_argument("--fail-on-regression", action="store_true", help="exit 1 when a metric regressed significantly")
    g.add_argument("--max-drop", default=None, help="allowed drops, e.g. gsm8k=1.0,humaneval=2.0,mt_bench=0.2")
    g.add_argument("--alpha", type=float, default=0.05)


def _report_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="comparison table over run directories (reads files only)")
    p.add_argument("runs", nargs="+", help="run directories")
    p.add_argument("--baseline", default=None, help="run directory to compare each run against")
    p.add_argument("--format", default="md", help="comma-separated: md, csv, html, json (default md)")
    p.add_argument("--out", default=None, help="directory for report files (default: print markdown only)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--alpha", type=float, default=0.05)


def _check_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="CI gate: exit 1 if RUN regressed significantly against --baseline")
    p.add_argument("run")
    p.add_argument("--baseline", required=True)
    p.add_argument("--max-drop", default=None, help="allowed drops in points, e.g. gsm8k=1.0,humaneval=2.0,mt_bench=0.2")
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--no-holm", action="store_true",
                   help="test each gated metric at --alpha (default: Holm over the gated metrics)")


def _score_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("score", help="re-score a finished run from its files (no model is loaded)")
    p.add_argument("run_dir", help="run directory written by `harness run`")
    p.add_argument("--replace", action="store_true",
                   help="write a summary that differs from the recorded one (the old one is kept beside it)")


def _study_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("study", help="train checkpoints under data-composition strategies, evaluate, report")
    p.add_argument("study_file")
    p.add_argument("--out", default=None, help="study directory (default: from the study file)")
    p.add_argument("--dry-run", action="store_true", help="print the plan (stages, example counts) and stop")


class _Parser(argparse.ArgumentParser):
    """argparse's own mistakes (a missing --model, ``--alpha abc``) in the harness's one-line form, exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"harness: error: {self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="harness", description="Evaluate SFT checkpoints on GSM8K, HumanEval "
                                     "and MT-Bench; compare runs with confidence intervals; gate CI on regressions.")
    parser.add_argument("--version", action="version", version=f"sft-harness {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    _run_parser(sub)
    _report_parser(sub)
    _check_parser(sub)
    _score_parser(sub)
    _study_parser(sub)
    sub.add_parser("tasks", help="list the available tasks")
    return parser


def _dispatch(args: argparse.Namespace) -> int:
    # Imports are local so `harness --help` stays instant and torch-free.
    if args.command == "run":
        from harness.run.runner import main_run
        return main_run(args)
    if args.command == "report":
        from harness.readout.report import main_report
        return main_report(args)
    if args.command == "score":
        from harness.run.score import main_score
        return main_score(args)
    if args.command == "check":
        from harness.readout.gate import main_check
        return main_check(args)
    if args.command == "study":
        from harness.train.study import main_study
        return main_study(args)
    if args.command == "tasks":
        from harness.tasks import describe_tasks
        print(describe_tasks())
        return 0
    raise AssertionError(args.command)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    try:
        return _dispatch(args)
    except UsageError as exc:
        print(f"harness: error: {exc}", file=sys.stderr)
        return 2
    except EngineError as exc:
        print(f"harness: engine failed: {exc} (finished work is kept; rerun the same command to resume)",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("harness: interrupted (finished work is kept; rerun the same command to resume)", file=sys.stderr)
        return 130


def entry() -> None:
    """The ``harness`` command (and ``python -m harness``): ``main``, then a quick exit.

    Once the command is done (every file written and closed, the engine shut down), what the interpreter
    does first at exit still runs, in its order (non-daemon threads joined with their exit hooks, such as
    thread pools', then the atexit handlers), the streams are flushed, and the process ends with
    ``os._exit``, skipping only the teardown: its final garbage collection over torch's (and vLLM's
    torch.compile/sympy) module graph took 2.8 s after an HF run and 4.6 s after a vLLM run here."""
    code = main()
    import atexit
    import threading
    shutdown = getattr(threading, "_shutdown", None)  # what Py_FinalizeEx calls before the atexit handlers
    if shutdown is not None:
        shutdown()
    atexit._run_exitfuncs()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can reach it
            pass
    os._exit(code)


if __name__ == "__main__":
    entry()
