"""Each task owns its options: one dataclass gives the CLI group, the study table and the checks."""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.cli import build_parser, main
from harness.core.errors import UsageError
from harness.core.options import Options, SharedOptions, from_table, option, specs
from harness.run.runner import config_from_args, default_run_id, options_record
from harness.tasks import build_tasks, check_flags, moved_key, options_classes, options_from_record
from harness.tasks.gsm8k import GSM8K, GSM8KOptions
from harness.tasks.humaneval import HumanEval, HumanEvalOptions
from harness.tasks.mt_bench import MTBench, MTBenchOptions
from harness.train.study import parse_study

EXAMPLES = Path(__file__).parent.parent / "train" / "examples"


def cfg(*argv: str):
    return config_from_args(build_parser().parse_args(["run", "--model", "smollm2-135m-instruct", *argv]))


# -- declared once ------------------------------------------------------------------------------------

def test_every_task_declares_what_it_needs() -> None:
    for cls in (GSM8K, HumanEval, MTBench):
        assert issubclass(cls.Options, Options)
        assert isinstance(cls.needs_judge, bool) and isinstance(cls.needs_code_execution, bool)
        assert cls.default_max_drop >= 0
    assert (MTBench.needs_judge, HumanEval.needs_code_execution, GSM8K.needs_code_execution) == (True, True, False)
    from harness.tasks.lm_eval import LmEvalOptions
    from harness.tasks.probes import GeneralOptions, NoOptions
    from harness.tasks.representations import RepresentationOptions
    # a study registers its held-out probes (holdout_<source>) at run time; an earlier test may have
    # built one in this process, so only the built-in registry is pinned here
    built_in = {k: v for k, v in options_classes().items() if not k.startswith("holdout_")}
    assert built_in == {"gsm8k": GSM8KOptions, "humaneval": HumanEvalOptions, "mt_bench": MTBenchOptions,
                                 "probe_math": NoOptions, "probe_code": NoOptions, "probe_general": GeneralOptions,
                                 "lm_eval": LmEvalOptions, "representations": RepresentationOptions}


def test_run_help_shows_one_group_per_task(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    for group, flag in [("gsm8k options", "--num-fewshot"), ("humaneval options", "--exec-timeout"),
                        ("mt_bench options", "--judge-repeats")]:
        assert flag in out[out.index(f"\n{group}:"):]
    assert "HumanEval samples per problem" in out and "(default 10.0)" in out


def test_flags_become_each_tasks_options() -> None:
    c = cfg("--suite", "gsm8k,humaneval", "--num-fewshot", "3", "--gsm8k-data", "x.jsonl", "--n", "4",
            "--temperature", "0.6", "--humaneval-mode", "completion", "--limit", "5", "--max-tokens", "64")
    assert c.task_options["gsm8k"] == GSM8KOptions(num_fewshot=3, data="x.jsonl")
    assert c.task_options["humaneval"] == HumanEvalOptions(mode="completion", n=4, temperature=0.6)
    assert c.shared == SharedOptions(limit=5, max_tokens=64)
    assert "mt_bench" not in c.task_options  # options of tasks not in the suite are not built


@pytest.mark.parametrize("argv, needle", [
    (["--num-fewshot", "-2"], "--num-fewshot must be >= 0"),
    (["--num-fewshot", "two"], "--num-fewshot 'two' is not an integer"),
    (["--exec-timeout", "inf"], "--exec-timeout must be a finite number"),
    (["--exec-timeout", "0"], "--exec-timeout must be > 0"),
    (["--temperature", "nan"], "--temperature must be a finite number"),
    (["--temperature", "9"], "--temperature must be >= 0 and <= 2"),
    (["--humaneval-mode", "chat"], "--humaneval-mode 'chat': choose from auto, instruct, completion"),
    (["--n", "3", "--temperature", "0"], "--n 3 with --temperature 0 gives 3 identical greedy samples"),
    (["--max-tokens", "0"], "--max-tokens must be >= 1"),
    (["--judge-repeats", "0"], "--judge-repeats must be >= 1"),
])
def test_bad_flags_are_one_line_usage_errors(argv, needle) -> None:
    with pytest.raises(UsageError, match=needle.replace("(", r"\(")):
        cfg("--suite", "all", *argv)


def test_python_construction_is_checked_too() -> None:
    with pytest.raises(UsageError, match="--exec-timeout must be a finite number"):
        HumanEvalOptions(exec_timeout=math.nan)
    with pytest.raises(UsageError, match="--limit must be an integer >= 1, got True"):
        SharedOptions(limit=True)


def test_a_flag_claimed_twice_is_named() -> None:
    import harness.tasks as registry

    @dataclass(frozen=True)
    class Clash(Options):
        n: int = option(1, "another n", flag="--n")

    class ClashTask:
        Options = Clash

    registry.REGISTRY["clash"] = ClashTask
    registry.task_class.cache_clear()
    try:
        with pytest.raises(ValueError, match="task clash declares --n, which humaneval already uses"):
            check_flags()
    finally:
        del registry.REGISTRY["clash"]
        registry.task_class.cache_clear()
    check_flags()


def test_default_flag_is_task_prefixed() -> None:
    @dataclass(frozen=True)
    class Toy(Options):
        prefix = "toy"
        max_digits: int = option(3, "digits", low=1)

    assert [s.flag for s in specs(Toy)] == ["--toy-max-digits"]


# -- code execution is a run-level opt-in the task declares -------------------------------------------

def test_code_execution_needs_the_opt_in(monkeypatch) -> None:
    monkeypatch.delenv("HARNESS_ALLOW_CODE_EXECUTION", raising=False)
    with pytest.raises(UsageError, match="humaneval executes model-written code.*--suite gsm8k"):
        build_tasks(("gsm8k", "humaneval"), {}, SharedOptions())
    assert build_tasks(("humaneval",), {}, SharedOptions(allow_code_execution=True))[0].name == "humaneval"


# -- the run id and the record --------------------------------------------------------------------------

def test_run_id_ignores_options_that_do_not_change_results() -> None:
    base = default_run_id(cfg("--suite", "gsm8k,mt_bench", "--allow-code-execution"))
    assert default_run_id(cfg("--suite", "gsm8k,mt_bench", "--judge-repeats", "3", "--allow-code-execution")) == base
    assert default_run_id(cfg("--suite", "gsm8k,mt_bench", "--num-fewshot", "2")) != base
    he = default_run_id(cfg("--suite", "humaneval", "--allow-code-execution"))
    assert default_run_id(cfg("--suite", "humaneval", "--allow-code-execution", "--exec-workers", "2")) == he


def test_recorded_options_rebuild_the_same_tasks() -> None:
    c = cfg("--suite", "gsm8k,mt_bench", "--num-fewshot", "2", "--judge-repeats", "2", "--limit", "4")
    shared, options = options_from_record(options_record(c), c.suites)
    assert shared == c.shared and options == {"gsm8k": GSM8KOptions(num_fewshot=2),
                                              "mt_bench": MTBenchOptions(judge_repeats=2)}


def test_old_flat_records_are_sorted_into_their_tasks() -> None:
    flat = {"limit": 3, "seed": 7, "max_tokens": None, "num_fewshot": 1, "gsm8k_data": None,
            "humaneval_mode": "auto", "n": 1, "temperature": None, "allow_code_execution": False,
            "exec_timeout": 10.0, "exec_workers": None, "judge_repeats": 1, "judge_max_tokens": 2048}
    shared, options = options_from_record(flat, ("gsm8k",))
    assert shared == SharedOptions(limit=3, seed=7) and options == {"gsm8k": GSM8KOptions(num_fewshot=1)}
    assert moved_key("gsm8k_data") == ("gsm8k", "data") and moved_key("humaneval_mode") == ("humaneval", "mode")


# -- the study's [eval.<task>] tables ---------------------------------------------------------------------

def _study(**eval_table) -> dict:
    data = tomllib.loads((EXAMPLES / "tiny_cpu.toml").read_text())
    data["eval"] = {"suites": ["gsm8k"], **eval_table}
    return data


def test_study_task_tables_become_task_options(tmp_path) -> None:
    study = parse_study(_study(suites=["gsm8k", "mt_bench"], gsm8k={"num_fewshot": 2},
                               mt_bench={"judge_repeats": 3}, limit=4), EXAMPLES, out=str(tmp_path / "s"))
    assert study.eval.tasks == {"gsm8k": GSM8KOptions(num_fewshot=2), "mt_bench": MTBenchOptions(judge_repeats=3)}
    assert study.eval.shared.limit == 4 and study.eval.shared.seed == study.seed


@pytest.mark.parametrize("eval_table, message", [
    ({"gsm8k": {"num_fewshot": -2}}, r"^\[eval.gsm8k\] num_fewshot must be >= 0 and <= 64, got -2$"),
    ({"gsm8k": {"num_fewshot": "2"}}, r"^\[eval.gsm8k\] num_fewshot must be an integer .*, got '2' \(str\)$"),
    ({"gsm8k": {"shots": 2}}, r"^\[eval.gsm8k\]: unknown key\(s\) shots; allowed: data, num_fewshot$"),
    ({"num_fewshot": 2}, r"^\[eval\] num_fewshot: task options moved .*; write \[eval.gsm8k\] num_fewshot = 2$"),
    ({"gsm8k_data": "x.jsonl"}, r"write \[eval.gsm8k\] data = 'x.jsonl'$"),
    ({"suites": ["humaneval"], "humaneval": {"n": 3, "temperature": 0.0}},
     r"^\[eval.humaneval\] n 3 with \[eval.humaneval\] temperature 0 gives 3 identical greedy samples"),
    ({"suites": ["humaneval"], "humaneval": {"exec_timeout": math.inf}},
     r"^\[eval.humaneval\] exec_timeout must be a finite number"),
])
def test_bad_task_tables_fail_at_parse(tmp_path, eval_table, message) -> None:
    with pytest.raises(UsageError, match=message):
        parse_study(_study(**eval_table), EXAMPLES, out=str(tmp_path / "s"))
    assert not (tmp_path / "s").exists()


def test_study_with_humaneval_and_no_opt_in_fails_before_training(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("HARNESS_ALLOW_CODE_EXECUTION", raising=False)
    with pytest.raises(UsageError, match=r"humaneval executes model-written code .*set allow_code_execution = "
                                         r"true in \[eval\].*suites = \[\"gsm8k\"\]"):
        parse_study(_study(suites=["gsm8k", "humaneval"]), EXAMPLES, out=str(tmp_path / "s"))
    study = parse_study(_study(suites=["gsm8k", "humaneval"], allow_code_execution=True), EXAMPLES)
    assert study.eval.shared.allow_code_execution


@pytest.mark.parametrize("study_eval, needle", [
    ('suites = ["gsm8k", "humaneval"]', "humaneval executes model-written code"),
    ('suites = ["gsm8k"]\n[eval.gsm8k]\nnum_fewshot = -2', "[eval.gsm8k] num_fewshot must be >= 0"),
])
def test_harness_study_exits_2_before_any_training(tmp_path, monkeypatch, capsys, study_eval, needle) -> None:
    import harness.train.study as study_mod

    monkeypatch.delenv("HARNESS_ALLOW_CODE_EXECUTION", raising=False)
    monkeypatch.setattr(study_mod, "train_all", lambda *a, **k: pytest.fail("training started"))
    text = (EXAMPLES / "tiny_cpu.toml").read_text()
    head, _, tail = text.partition("[eval]")
    rest = tail[tail.index("[report]"):]
    path = tmp_path / "study.toml"
    path.write_text(f"{head}[eval]\n{study_eval}\n\n{rest}".replace('"tiny_', f'"{EXAMPLES}/tiny_'))
    assert main(["study", str(path), "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]
    assert not (tmp_path / "s").exists()


def test_from_table_refuses_a_non_table() -> None:
    with pytest.raises(UsageError, match=r"\[eval.gsm8k\] must be a table, got int"):
        from_table(GSM8KOptions, 3, "[eval.gsm8k]")  # type: ignore[arg-type]


def test_a_flag_of_a_task_not_in_the_suite_is_refused() -> None:
    with pytest.raises(UsageError, match=r"^--n is an option of humaneval, which --suite gsm8k does not run; "
                                         r"add humaneval to --suite or drop the flag$"):
        cfg("--suite", "gsm8k", "--n", "5")
    assert cfg("--suite", "gsm8k,humaneval", "--n", "5", "--allow-code-execution").task_options["humaneval"].n == 5


@pytest.mark.parametrize("seed", ["-1", "4294967296"])
def test_seed_is_a_32_bit_unsigned_integer(seed: str) -> None:
    with pytest.raises(UsageError, match=r"^--seed must be >= 0 and <= 4294967295"):
        cfg("--suite", "gsm8k", "--seed", seed)
