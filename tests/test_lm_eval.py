"""lm-eval tasks as suites (``--suite lm_eval:TASK``), on the committed local tasks in fixtures/lm_eval.

Toy engines (no torch) pin the bridge: lm-eval's own process_results and
filters score our results; errors fail before any model work; two runs pair in
``harness report`` and ``harness check`` gates on the difference; the
``HarnessLM`` model runs lm-eval's own evaluator through our journal. The
tiny random Llama runs both local tasks end to end and survives a SIGKILL.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from harness.cli import main
from harness.core.errors import UsageError
from harness.core.models import ModelSpec
from harness.core.options import SharedOptions
from harness.core.records import Completion, LoglikelihoodResult
from harness.run import runner
from harness.run.passes import LazyAdapter

pytest.importorskip("lm_eval")

FIXTURES = Path(__file__).parent / "fixtures" / "lm_eval"
MC = [json.loads(line) for line in (FIXTURES / "mc_test.jsonl").read_text().splitlines()]
GSM = [json.loads(line) for line in (FIXTURES / "gsm_test.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def shared_tasks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture tasks copied once per module (lm-eval indexes a folder once per process)."""
    where = tmp_path_factory.mktemp("lm_eval") / "tasks"
    shutil.copytree(FIXTURES, where)
    return where


@pytest.fixture
def tasks_dir(shared_tasks: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_caches) -> Path:
    """Run from the tasks folder (data_files are relative to the cwd); run directories under this test's tmp."""
    monkeypatch.chdir(shared_tasks)
    return shared_tasks


@dataclass
class Oracle:
    """Scores each choice -1 if it is the gold answer (``right``) or any other (-5); generates GSM answers."""

    right: bool = True
    sent: list[str] = field(default_factory=list)
    name: str = "oracle"

    def describe(self) -> dict[str, Any]:
        return {"kind": "toy", "fingerprint": f"oracle-{self.right}"}

    def loglikelihood(self, requests: Sequence[Any], on_result: Callable | None = None) -> list[LoglikelihoodResult]:
        out = []
        for i, r in enumerate(requests):
            self.sent.append(r.id)
            gold = _gold(r)
            lp = -1.0 if (r.continuation.strip() == gold) == self.right else -5.0
            out.append(LoglikelihoodResult(id=r.id, logprob_sum=lp, n_tokens=1, n_bytes=len(r.continuation),
                                           is_greedy=lp == -1.0))
            if on_result:
                on_result(i, out[-1])
        return out

    def generate(self, requests: Sequence[Any], on_result: Callable | None = None) -> list[Completion]:
        out = []
        for i, r in enumerate(requests):
            self.sent.append(r.id)
            text = r.messages[-1].content if r.messages else r.prompt
            row = next(g for g in GSM if g["question"] in text)
            answer = row["answer"].split("#### ")[-1] if self.right else "0"
            out.append(Completion(id=r.id, texts=(f"So the answer is {answer}.\n#### {answer}",)))
            if on_result:
                on_result(i, out[-1])
        return out


def _gold(request: Any) -> str:
    """The gold choice of the question in a request's context (plain text or lettered)."""
    text = request.context[-1].content if request.is_chat else request.context
    row = next(m for m in MC if m["question"] in text)
    return "ABCD"[row["answer"]] if "\nA. " in text else row["choices"][row["answer"]]


def connect(engine: Oracle, builds: list[int] | None = None) -> runner.Connect:
    def _connect(spec: ModelSpec, role: str, **_: Any) -> LazyAdapter:
        def build() -> Oracle:
            if builds is not None:
                builds.append(1)
            return engine
        return LazyAdapter(engine.describe(), build, label=spec.target)
    return _connect


def run_suite(tmp: Path, suites: tuple[str, ...], engine: Oracle, label: str = "a", limit: int | None = None,
              **options: Any) -> tuple[Path, dict[str, Any]]:
    from harness.tasks.lm_eval import LmEvalOptions

    opts = {s: LmEvalOptions(include=str(Path.cwd()), **options) for s in suites}  # run from the tasks
    cfg = runner.RunConfig(model=ModelSpec(kind="hf", target=f"toy/{label}"), suites=suites, out=tmp / "runs" / label,
                           shared=SharedOptions(limit=limit), task_options=opts, label=label)
    return runner.run_with_summary(cfg, connect(engine))


def rows(run_dir: Path, task: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / f"{task}.samples.jsonl").read_text().splitlines()]


# -- both local tasks through the bridge ------------------------------------------------------------

def test_a_multiple_choice_group_is_scored_per_document_by_lm_evals_process_results(tasks_dir: Path,
                                                                                   tmp_path: Path) -> None:
    engine = Oracle()
    run_dir, summary = run_suite(tmp_path, ("lm_eval:local_suite",), engine)
    assert len(engine.sent) == 2 * 8 * 4  # two leaf tasks, 8 documents, 4 choices each: one request per choice
    samples = rows(run_dir, "lm_eval:local_suite")
    assert len(samples) == 16 and {r["info"]["task"] for r in samples} == {"local_mc", "local_mc_letters"}
    assert all(r["scores"]["acc"] == 1.0 and r["error"] is None for r in samples)
    assert all(len(r["completions"]) == 4 for r in samples)  # every choice's log-likelihood is kept
    entry = summary["tasks"]["lm_eval:local_suite"]
    assert entry["metrics"]["acc"] == 1.0 and entry["metrics"]["local_mc_letters/acc"] == 1.0
    specs = {s["name"]: s for s in entry["metric_specs"]}
    assert specs["acc"]["kind"] == "binary" and specs["acc"]["primary"] and specs["acc_norm"]["kind"] == "binary"
    config = entry["config"]
    assert config["lm_eval_version"] == "0.4.13" and config["template"] == "chat"
    leaf = config["leaves"]["local_mc"]
    assert len(leaf["config_sha256"]) == len(leaf["data_sha256"]) == 64 and leaf["documents"] == 8
    before = (run_dir / "summary.json").read_text()
    assert main(["score", str(run_dir)]) == 0  # offline re-scoring rebuilds lm-eval's task from the record
    assert (run_dir / "summary.json").read_text() == before


def test_chat_contexts_are_messages_for_the_checkpoints_template_and_raw_ones_are_lm_evals_strings(
        tasks_dir: Path) -> None:
    from harness.tasks import build_task
    from harness.tasks.lm_eval import LmEvalOptions

    chat = build_task("lm_eval:local_mc", LmEvalOptions(include=str(tasks_dir)))
    (req, *_) = chat.requests(chat.load(1), 0, {})
    assert req.is_chat and req.context[-1].role == "user" and req.continuation == "Paris"  # lm-eval drops the
    raw = build_task("lm_eval:local_mc", LmEvalOptions(include=str(tasks_dir), template="raw"))  # delimiter in chat
    (req, *_) = raw.requests(raw.load(1), 0, {})
    assert req.context == "Question: What is the capital of France?\nAnswer:" and req.continuation == " Paris"
    assert not raw.needs_chat


def test_a_generative_task_keeps_lm_evals_stop_list_filters_and_both_extractions(tasks_dir: Path,
                                                                                 tmp_path: Path) -> None:
    engine = Oracle()
    run_dir, summary = run_suite(tmp_path, ("lm_eval:local_gsm",), engine, limit=4)
    samples = rows(run_dir, "lm_eval:local_gsm")
    assert len(samples) == 4
    req = samples[0]["requests"][0]
    assert req["stop"] == ["Question:", "</s>", "<|im_end|>"] and req["max_tokens"] == 16 and req["temperature"] == 0
    assert all(r["scores"] == {"exact_match:strict-match": 1.0, "exact_match:flexible-extract": 1.0} for r in samples)
    assert samples[0]["extracted"]["strict-match"] == "7"
    metrics = summary["tasks"]["lm_eval:local_gsm"]["metrics"]
    assert metrics["exact_match:strict-match"] == 1.0


def test_num_fewshot_and_gen_kwargs_pass_through_to_lm_eval(tasks_dir: Path) -> None:
    from harness.tasks import build_task
    from harness.tasks.lm_eval import LmEvalOptions

    task = build_task("lm_eval:local_gsm", LmEvalOptions(include=str(tasks_dir), num_fewshot=2,
                                                           gen_kwargs="max_gen_toks=7"))
    (req,) = task.requests(task.load(1), 0, {})
    assert req.max_tokens == 7
    assert req.messages[0].content.count("Question:") == 3  # two exemplars from train, then the question
    assert task.describe()["leaves"]["local_gsm"]["num_fewshot"] == 2


# -- bad input: one line, before any model work --------------------------------------------------------

@pytest.mark.parametrize(("suite", "message"), [
    ("lm_eval:local_missing", r"lm_eval:local_missing: its data cannot be loaded \(FileNotFoundError.*dataset_path"),
    ("lm_eval:local_mixed", r"mixes request types .* --suite lm_eval:local_gsm,lm_eval:local_mc"),
    ("lm_eval:no_such_task", r"not an lm-eval task or group; for a local YAML file pass --lm-eval-include"),
    ("lm_eval", r"--suite lm_eval needs a task: --suite lm_eval:TASK"),
])
def test_a_task_that_cannot_be_built_fails_before_the_model_is_loaded(tasks_dir: Path, tmp_path: Path, suite: str,
                                                                      message: str) -> None:
    builds: list[int] = []
    from harness.tasks.lm_eval import LmEvalOptions

    cfg = runner.RunConfig(model=ModelSpec(kind="hf", target="toy/m"), suites=(suite,), out=tmp_path / "runs",
                           task_options={suite: LmEvalOptions(include=str(tasks_dir))})
    with pytest.raises(UsageError, match=message):
        runner.run_with_summary(cfg, connect(Oracle(), builds))
    assert builds == [] and not (tmp_path / "runs").exists()


def test_the_cli_refuses_bad_lm_eval_flags_in_one_line(tasks_dir: Path, capsys) -> None:
    base = ["run", "--model", "hf:nowhere", "--suite", "lm_eval:local_mc", "--lm-eval-include", str(tasks_dir)]
    assert main([*base, "--lm-eval-gen-kwargs", "max_gen_toks"]) == 2
    assert "--lm-eval-gen-kwargs 'max_gen_toks': write key=value pairs" in capsys.readouterr().err
    assert main([*base, "--lm-eval-metadata", "[1]"]) == 2
    assert "--lm-eval-metadata must be a JSON object" in capsys.readouterr().err
    assert main(["run", "--model", "hf:x", "--suite", "gsm8k", "--lm-eval-include", "x"]) == 2
    assert "--lm-eval-include is an option of lm_eval" in capsys.readouterr().err


def test_without_lm_eval_installed_the_error_is_the_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.tasks import lm_eval_bridge

    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval -> ImportError
    lm_eval_bridge.task_manager.cache_clear()
    try:
        with pytest.raises(UsageError, match=r'pip install "sft-harness\[lmeval\]"'):
            lm_eval_bridge.task_manager(None, None)
    finally:
        lm_eval_bridge.task_manager.cache_clear()


def test_choosing_no_lm_eval_suite_never_imports_lm_eval() -> None:
    code = ("import sys; from harness.cli import build_parser; from harness.tasks import resolve_suites, "
            "options_classes; build_parser(); options_classes(); resolve_suites('lm_eval:x,gsm8k'); "
            "print('lm_eval' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# -- report and gate over two checkpoints -----------------------------------------------------------

def test_report_pairs_two_checkpoints_per_document_and_check_gates_on_the_drop(tasks_dir: Path, tmp_path: Path,
                                                                               capsys) -> None:
    good, _ = run_suite(tmp_path, ("lm_eval:local_mc",), Oracle(right=True), label="good")
    bad, _ = run_suite(tmp_path, ("lm_eval:local_mc",), Oracle(right=False), label="bad")
    capsys.readouterr()
    assert main(["report", str(good), str(bad), "--baseline", str(good)]) == 0
    report = capsys.readouterr().out
    row = next(line for line in report.splitlines() if "lm_eval:local_mc acc " in line and "bad" in line)
    assert "8 documents" in row and "−100.0" in row and "p=0.008" in row  # exact McNemar: 2 * 0.5 ** 8
    assert main(["check", str(bad), "--baseline", str(good)]) == 1
    assert "REGRESSION lm_eval:local_mc acc" in capsys.readouterr().out
    assert main(["check", str(bad), "--baseline", str(good), "--max-drop", "lm_eval:local_mc.acc=5"]) == 1
    assert main(["check", str(good), "--baseline", str(bad)]) == 0


# -- lm-eval's own evaluator, served through our journal ------------------------------------------------

def test_lm_evals_evaluator_through_harness_lm_agrees_with_the_suite_and_resumes(tasks_dir: Path,
                                                                                  tmp_path: Path) -> None:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from harness.run.lm_eval_model import HarnessLM

    engine = Oracle()
    lm = HarnessLM(LazyAdapter(engine.describe(), lambda: engine, label="oracle"), tmp_path / "journal")
    kwargs = {"tasks": ["local_mc"], "task_manager": TaskManager(include_path=str(tasks_dir), include_defaults=False), "limit": 3,
              "apply_chat_template": True, "log_samples": True}
    out = simple_evaluate(model=lm, **kwargs)
    assert out["results"]["local_mc"]["acc,none"] == 1.0 and len(engine.sent) == 12
    assert all(isinstance(s["resps"][0][0][0], float) for s in out["samples"]["local_mc"])
    engine.sent.clear()
    again = simple_evaluate(model=lm, **kwargs)  # everything journaled: the engine gets nothing
    assert engine.sent == [] and again["results"]["local_mc"]["acc,none"] == 1.0


# -- a tiny random checkpoint end to end --------------------------------------------------------------

@pytest.fixture
def tiny(tiny_llama: Path, tmp_path: Path) -> Path:
    pytest.importorskip("torch")
    copy = tmp_path / "model"
    shutil.copytree(tiny_llama, copy)
    return copy


def test_both_local_tasks_run_on_a_tiny_checkpoint_and_a_sigkill_loses_nothing(tasks_dir: Path, tiny: Path,
                                                                                 tmp_path: Path) -> None:
    """Killed (SIGKILL) once some log-likelihoods are journaled; the rerun sends exactly the others."""
    args = ["run", "--model", f"hf:{tiny}", "--model-args", "batch_size=1", "--suite",
            "lm_eval:local_mc,lm_eval:local_gsm", "--lm-eval-include", str(tasks_dir), "--limit", "3",
            "--out", str(tmp_path / "runs"), "--run-id", "tiny"]
    journal = tmp_path / "runs" / "tiny" / "lm_eval:local_mc.loglikelihood.jsonl"
    # Each scoring batch (and each question's choices, which share a context) slowed to 0.3 s in the child,
    # so the kill lands mid-pass on any machine.
    slow = ("import sys, time; from harness.adapters.hf import HFAdapter; f = HFAdapter._score_batch; "
            "g = HFAdapter._score_shared; "
            "HFAdapter._score_batch = lambda self, *a: (time.sleep(0.3), f(self, *a))[1]; "
            "HFAdapter._score_shared = lambda self, *a: (time.sleep(0.3), g(self, *a))[1]; "
            "from harness.cli import main; sys.exit(main(sys.argv[1:]))")
    proc = subprocess.Popen([sys.executable, "-c", slow, *args], cwd=tasks_dir, env=os.environ.copy(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if journal.exists() and len(journal.read_text().splitlines()) >= 3:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    kept = len(journal.read_text().splitlines())
    assert 3 <= kept < 12, "the kill should land mid-pass"

    from harness.adapters.hf import HFAdapter
    sent: list[str] = []
    real_ll, real_gen = HFAdapter.loglikelihood, HFAdapter.generate

    def ll(self, requests, on_result=None):
        sent.extend(r.id for r in requests)
        return real_ll(self, requests, on_result)

    def gen(self, requests, on_result=None):
        sent.extend(r.id for r in requests)
        return real_gen(self, requests, on_result)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(HFAdapter, "loglikelihood", ll)
        mp.setattr(HFAdapter, "generate", gen)
        assert main(args) == 0
        assert len([s for s in sent if s.startswith("local_mc/")]) == 12 - kept  # nothing lost, nothing repeated
        sent.clear()
        assert main(args) == 0 and sent == []
    run_dir = tmp_path / "runs" / "tiny"
    assert len(journal.read_text().splitlines()) == 12
    for task, n in (("lm_eval:local_mc", 3), ("lm_eval:local_gsm", 3)):
        samples = rows(run_dir, task)
        assert len(samples) == n and all(r["error"] is None for r in samples)
    mc = rows(run_dir, "lm_eval:local_mc")
    for r in mc:  # lm-eval's acc is the argmax of our log-likelihoods
        lls = [c["logprob_sum"] for c in r["completions"]]
        gold = MC[r["info"]["doc_id"]]["answer"]
        assert r["scores"]["acc"] == float(lls.index(max(lls)) == gold)
