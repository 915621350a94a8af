"""An lm-eval ``LM`` served by our adapters through the runner's journaled passes.

``--suite lm_eval:TASK`` (``harness.tasks.lm_eval``) is the usual way in: the
runner owns the passes and lm-eval only builds and scores. This class is the
other way round, for code that drives lm-eval's own evaluator
(``lm_eval.simple_evaluate(model=HarnessLM(...), ...)``, the benchmark script,
the agreement test): each of lm-eval's three request methods receives the
whole batch of Instances, converts them with the same mapping as the suite
(``harness.tasks.lm_eval_bridge``) and sends them through ``run_pass``, so
lm-eval's requests are journaled under ``journal_dir`` keyed on the
checkpoint's output identity, and a rerun after a kill sends only what is
missing. Chat: ``apply_chat_template`` records the messages and the adapter
renders them with the checkpoint's template (use ``apply_chat_template=True``
in ``simple_evaluate``).

lm-eval's API has no per-request error: a request our engine could not serve
raises ``EngineError`` after the pass (every finished result journaled), where
the suite would record an error for that document instead.

Example::

    lm = HarnessLM.from_spec("hf:ckpt", journal_dir="runs/lm-eval-journal")
    lm_eval.simple_evaluate(model=lm, tasks=["local_mc"], task_manager=TaskManager(include_path="tests/fixtures/lm_eval"))
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.core.errors import EngineError
from harness.core.journal import Journal
from harness.core.models import parse_model_spec
from harness.core.records import sha256_json
from harness.run.passes import PASSES, LazyAdapter, run_pass
from harness.tasks.lm_eval_bridge import import_lm_eval, record_chat, response_of, to_record

import_lm_eval()
from lm_eval.api.model import LM  # noqa: E402  (lm-eval present: checked with the install hint above)


class HarnessLM(LM):
    """lm-eval's model interface over one of our adapters (HF, vLLM, OpenAI-compatible)."""

    def __init__(self, model: LazyAdapter, journal_dir: str | Path) -> None:
        super().__init__()
        self.model = model
        self.journal_dir = Path(journal_dir)
        self.journal_dir.mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_spec(cls, spec: str, journal_dir: str | Path, model_args: str | None = None) -> HarnessLM:
        from harness.run.runner import connect_adapter

        model = parse_model_spec(spec, model_args, None)
        return cls(connect_adapter(model, "model", chat_template=None, concurrency=16, needs_chat=True), journal_dir)

    # -- lm-eval's chat hooks ------------------------------------------------------------------------

    @property
    def tokenizer_name(self) -> str:  # part of lm-eval's request-cache key: the checkpoint, not a file name
        return sha256_json(self.model.identity)[:16]

    def chat_template(self, chat_template: bool | str = False) -> str:
        return "checkpoint"  # what lm-eval records; the adapter renders with the checkpoint's own template

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return record_chat(chat_history, add_generation_prompt)

    # -- lm-eval's three request types ---------------------------------------------------------------

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        return [r[0] for r in self._serve("loglikelihood", requests)]

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        return [r[0] for r in self._serve("loglikelihood_rolling", requests)]

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        return [r[0] for r in self._serve("generate_until", requests)]

    def _serve(self, request_type: str, requests: list[Any]) -> list[list[Any]]:
        """The whole batch through one journaled pass; each result as lm-eval's response."""
        records = [to_record(request_type, tuple(inst.args), f"{request_type}/{i}") for i, inst in enumerate(requests)]
        kind = "generate" if request_type == "generate_until" else "loglikelihood"
        suffix, spec = PASSES[kind]
        with Journal(self.journal_dir / f"lm_eval.{suffix}.jsonl") as journal:
            done = run_pass(self.model.call_for(kind), records, journal, self.model.identity, spec,
                            f"lm-eval {request_type}", self.model.label)
        failed = [(r.id, r.error) for r in done if r.error is not None]
        if failed:
            raise EngineError(f"{len(failed)} of {len(done)} lm-eval {request_type} requests failed (first: "
                              f"{failed[0][0]}: {failed[0][1]}); finished results are journaled in {self.journal_dir}")
        return [response_of(request_type, r) for r in done]

    def close(self) -> None:
        self.model.close()
