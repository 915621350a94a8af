"""Any lm-evaluation-harness task as a suite: ``--suite lm_eval:TASK`` (a task, group or tag).

lm-eval builds the task exactly as its own evaluator does (its ``TaskManager``,
``build_all_requests``, filters and per-document ``process_results``); the
model work goes through *our* runner: each lm-eval ``Instance`` becomes one of
our records (``harness.tasks.lm_eval_bridge``), so it is journaled, resumed
and keyed on the checkpoint's fingerprint like every other pass, and each
document becomes one samples row holding lm-eval's per-item metric values, so
``harness report`` pairs two checkpoints item by item and ``harness check``
gates on them. Metric specs come from the task: a mean-aggregated metric is
one per-item value (0/1 ones such as ``acc`` and ``exact_match`` paired with
McNemar, continuous ones with the bootstrap); ``bits_per_byte`` is the
byte-weighted mean; other corpus-level aggregations (perplexities, f1, bleu)
are reported as lm-eval computes them, without a per-item interval.

Chat (``--lm-eval-template chat``, the default): lm-eval renders contexts
through a model's ``apply_chat_template`` hook; ours records the message list
instead and the adapter renders it with the checkpoint's own chat template
and generation prompt, as lm-eval's ``--apply_chat_template`` does. ``raw``
sends lm-eval's plain strings.

One harness task per named suite. A group's documents are pooled into one
task (ids ``<leaf task>/<doc id>``); its metrics are means over every
document (lm-eval's ``weight_by_size``), each leaf's mean is in the summary
too. A group must have one request kind throughout (name the tasks of a
mixed group one by one).

Example::

    harness run --model hf:ckpt --suite lm_eval:local_mc,lm_eval:local_gsm \\
        --lm-eval-include tests/fixtures/lm_eval --limit 50
"""

from __future__ import annotations

import importlib.metadata
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from harness.core.errors import UsageError
from harness.core.options import Options, SharedOptions, option
from harness.core.records import Example, MetricSpec, Result
from harness.core.stats import mean_stderr, weighted_mean_stderr
from harness.tasks.lm_eval_bridge import (
    BINARY,
    BRIDGE_VERSION,
    KINDS,
    Sampling,
    _sha256,
    configure,
    load_leaves,
    metric_key,
    parse_gen_kwargs,
    parse_metadata,
    record_chat,
    response_of,
    to_record,
)


@dataclass(frozen=True)
class LmEvalOptions(Options):
    prefix = "lm-eval"

    include: str | None = option(None, "folder (or YAML file) of local lm-eval task configs, as lm-eval's "
                                 "--include_path")
    num_fewshot: int | None = option(None, "few-shot examples (default: each task's own), as lm-eval's "
                                     "--num_fewshot", low=0, high=1000)
    template: Literal["chat", "raw"] = option("chat", "chat: contexts rendered with the checkpoint's chat template "
                                              "(lm-eval's --apply_chat_template); raw: lm-eval's plain strings")
    fewshot_as_multiturn: bool = option(False, "few-shot examples as chat turns (lm-eval's --fewshot_as_multiturn)")
    system_instruction: str | None = option(None, "system message (lm-eval's --system_instruction)")
    gen_kwargs: str | None = option(None, "generation overrides key=value,... (lm-eval's --gen_kwargs)")
    metadata: str | None = option(None, "JSON object of task metadata (lm-eval's --metadata)")
    fewshot_seed: int = option(1234, "seed of lm-eval's few-shot sampler (its --seed's third value)", low=0)

    def check(self, name: Any) -> None:
        if self.fewshot_as_multiturn and self.template != "chat":
            raise UsageError(f"{name('fewshot_as_multiturn')} needs {name('template')} chat")
        parse_gen_kwargs(self.gen_kwargs, name("gen_kwargs"))
        parse_metadata(self.metadata, name("metadata"))


@dataclass(frozen=True)
class Doc:
    """One lm-eval document: its leaf task, doc id and Instances (in lm-eval's ``idx`` order)."""

    leaf: str
    doc_id: int
    instances: tuple[Any, ...]


class LmEval:
    """Any lm-evaluation-harness task or group: --suite lm_eval:TASK (--lm-eval-include for local YAML)."""

    name = "lm_eval"
    lm_eval_name: str | None = None  # set on the class task_class builds for "lm_eval:TASK"
    version = BRIDGE_VERSION
    turns = 1
    Options: type[Options] = LmEvalOptions
    needs_chat = True  # the default template; an instance with --lm-eval-template raw needs none
    needs_judge = False
    needs_code_execution = False
    default_max_drop = 1.0  # points of the primary metric (accuracy-like metrics are in percent)
    in_suite_all = False  # a family of suites, named one by one: --suite lm_eval:TASK

    @classmethod
    def for_task(cls, task: str) -> type[LmEval]:
        """The class of suite ``lm_eval:TASK`` (built once per name by the registry)."""
        if not task or any(c in task for c in ",= "):
            raise UsageError(f"--suite lm_eval:{task}: name an lm-eval task or group after 'lm_eval:' "
                             "(e.g. lm_eval:arc_easy)")
        return type(f"LmEval_{task}", (cls,), {"name": f"lm_eval:{task}", "lm_eval_name": task,
                                               "__doc__": f"lm-eval task {task}"})

    def __init__(self, options: Options | None = None, shared: SharedOptions | None = None) -> None:
        if self.lm_eval_name is None:
            raise UsageError("--suite lm_eval needs a task: --suite lm_eval:TASK (several: "
                             "lm_eval:arc_easy,lm_eval:hellaswag; local YAML: --lm-eval-include FOLDER)")
        self.options: LmEvalOptions = options or LmEvalOptions()  # type: ignore[assignment]
        self.shared = shared or SharedOptions()
        self.needs_chat = self.options.template == "chat"
        # lm-eval's task objects, data loaded: a task that cannot load fails here, before any model work.
        self.leaves = load_leaves(self.lm_eval_name, self.options)
        kinds = {KINDS.get(t.get_config("output_type"), "?") for t in self.leaves.values()}
        if "?" in kinds or len(kinds) > 1:
            types = ", ".join(f"{n}: {t.get_config('output_type')}" for n, t in self.leaves.items())
            raise UsageError(f"lm_eval:{self.lm_eval_name} mixes request types ({types}); name its tasks one by "
                             "one: --suite " + ",".join(f"lm_eval:{n}" for n in self.leaves))
        self.request_kind = kinds.pop()
        unsafe = [n for n, t in self.leaves.items() if getattr(t, "UNSAFE_CODE", False)]
        if unsafe:  # lm-eval would exec model-written code in this process, outside any sandbox
            raise UsageError(f"lm_eval:{self.lm_eval_name}: {', '.join(unsafe)} executes model-written code, which "
                             "lm_eval suites do not run; use --suite humaneval (sandboxed) instead")
        for leaf in self.leaves.values():
            configure(leaf, self.options)
        self.version = f"{BRIDGE_VERSION}/" + ",".join(
            f"{n}={(t.dump_config().get('metadata') or {}).get('version')}" for n, t in sorted(self.leaves.items()))
        self.metrics: tuple[MetricSpec, ...] = ()
        self._docs: dict[str, Doc] = {}
        self._record: dict[str, Any] = {}
        self._corpus: dict[str, float] = {}

    # -- plan --------------------------------------------------------------------------------------

    def load(self, limit: int | None = None) -> list[Example]:
        """lm-eval's Instances for every document (its own build_all_requests), one Example per document."""
        self._docs = {}
        chat = self.options.template == "chat"
        for name, leaf in sorted(self.leaves.items()):
            leaf.build_all_requests(limit=limit, rank=0, world_size=1, apply_chat_template=chat,
                                    fewshot_as_multiturn=self.options.fewshot_as_multiturn,
                                    system_instruction=self.options.system_instruction,
                                    chat_template=record_chat if chat else None)
            by_doc: dict[int, list[Any]] = defaultdict(list)
            for inst in leaf.instances:
                by_doc[inst.doc_id].append(inst)
            for doc_id, insts in sorted(by_doc.items()):
                self._docs[f"{name}/{doc_id}"] = Doc(name, doc_id, tuple(sorted(insts, key=lambda i: i.idx)))
        self.metrics = self._metric_specs()
        self._record = self._describe_leaves()
        return [Example(id=key, data={"task": d.leaf, "doc_id": d.doc_id}) for key, d in self._docs.items()]

    def _metric_specs(self) -> tuple[MetricSpec, ...]:
        """One spec per (metric, filter) lm-eval reports as a mean or a byte-weighted mean, in task order."""
        specs: dict[str, MetricSpec] = {}
        for leaf in self.leaves.values():
            aggregation, higher = leaf.aggregation(), leaf.higher_is_better()
            for filter_name in _filter_names(leaf):
                for metric, fn in aggregation.items():
                    key = metric_key(metric, filter_name)
                    agg = getattr(fn, "__name__", "")
                    if key in specs or agg not in ("mean", "bits_per_byte"):
                        continue
                    kind = "binary" if metric in BINARY else "continuous"
                    scale = 100.0 if kind == "binary" else 1.0
                    specs[key] = MetricSpec(key, key=key, kind=kind, scale=scale, primary=not specs,
                                            higher_is_better=bool(higher.get(metric, True)), unit="document",
                                            weight=f"{key}.bytes" if agg == "bits_per_byte" else None)
        return tuple(specs.values())

    def requests(self, examples: Sequence[Example], turn: int, prior: Mapping[str, Sequence[Any]]) -> list[Any]:
        sampling = Sampling(seed=self.shared.seed, max_tokens=self.shared.max_tokens)
        return [to_record(inst.request_type, inst.arguments, f"{ex.id}#t{i}", inst.repeats, sampling)
                for ex in examples for i, inst in enumerate(self._docs[ex.id].instances)]

    # -- score -------------------------------------------------------------------------------------

    def score(self, examples: Sequence[Example], completions: Mapping[str, Sequence[Any]], ctx: Any) -> list[Result]:
        """Responses fed back to lm-eval: its filters, then its per-document process_results."""
        failed: dict[str, str] = {}
        for ex in examples:
            for inst, res in zip(self._docs[ex.id].instances, completions[ex.id], strict=True):
                try:
                    inst.resps = response_of(inst.request_type, res)
                except ValueError as exc:
                    inst.resps, failed[ex.id] = [], f"{inst.request_type} failed: {exc}"
        for leaf in self.leaves.values():
            for inst in leaf.instances:
                if not inst.resps:  # a failed request: filters still need a value, its document is an error
                    inst.resps = [""] if inst.request_type == "generate_until" else [(-math.inf, False)]
            leaf.apply_filters()
        results = [self._score_doc(ex, failed.get(ex.id)) for ex in examples]
        self._corpus = self._corpus_values(examples, results)
        return results

    def _score_doc(self, ex: Example, error: str | None) -> Result:
        if error is not None:
            return Result(id=ex.id, error=error)
        doc = self._docs[ex.id]
        leaf, first = self.leaves[doc.leaf], doc.instances[0]
        scores: dict[str, float] = {}
        extracted: dict[str, Any] = {}
        try:
            for filter_name in first.filtered_resps:
                out = leaf.process_results(first.doc, [i.filtered_resps[filter_name] for i in doc.instances])
                for metric, value in out.items():
                    scores.update(_item_values(metric_key(metric, filter_name), value))
                if first.request_type == "generate_until":
                    extracted[filter_name] = first.filtered_resps[filter_name]
        except Exception as exc:  # lm-eval's scorer failed on this document: recorded, never a made-up score
            return Result(id=ex.id, error=f"lm-eval process_results failed: {type(exc).__name__}: {exc}")
        return Result(id=ex.id, scores=scores, extracted=extracted,
                      info={"task": doc.leaf, "doc_id": doc.doc_id, "target": _target(leaf, first.doc)})

    def _corpus_values(self, examples: Sequence[Example], results: Sequence[Result]) -> dict[str, float]:
        """lm-eval's own corpus-level aggregations (perplexities, f1...) over the scored documents."""
        out: dict[str, float] = {}
        for name, leaf in self.leaves.items():
            docs = [self._docs[ex.id] for ex, r in zip(examples, results, strict=True)
                    if r.error is None and self._docs[ex.id].leaf == name]
            if not docs:
                continue
            for filter_name in docs[0].instances[0].filtered_resps:
                for metric, fn in leaf.aggregation().items():
                    if getattr(fn, "__name__", "") in ("mean", "bits_per_byte"):
                        continue
                    items = [leaf.process_results(d.instances[0].doc, [i.filtered_resps[filter_name]
                                                                       for i in d.instances])[metric] for d in docs]
                    out[f"{name}/{metric_key(metric, filter_name)}"] = float(fn(items))
        return out

    def aggregate(self, results: Sequence[Result]) -> dict[str, float]:
        scored = [r for r in results if r.error is None]
        out: dict[str, float] = {"n": len(results), "scored": len(scored), "errors": len(results) - len(scored)}
        for m in self.metrics:
            have = [r for r in scored if m.key in r.scores]
            vals = [r.scores[m.key] for r in have]
            mean, se = (weighted_mean_stderr(vals, [r.scores[m.weight] for r in have]) if m.weight
                        else mean_stderr(vals))
            out[m.name], out[f"{m.name}_stderr"] = mean, se
            if len(self.leaves) > 1:  # a group: each leaf's own mean beside the pooled one
                for leaf in sorted(self.leaves):
                    mine = [r.scores[m.key] for r in have if r.info.get("task") == leaf]
                    if mine:
                        out[f"{leaf}/{m.name}"] = sum(mine) / len(mine)
        out.update(self._corpus)
        return out

    def describe(self) -> dict[str, Any]:
        return {"lm_eval_task": self.lm_eval_name, "request_kind": self.request_kind,
                "template": self.options.template, **self._record}

    def _describe_leaves(self) -> dict[str, Any]:
        """lm-eval's version, and per leaf task its config hash, data fingerprint and few-shot count."""
        leaves = {}
        for name, leaf in sorted(self.leaves.items()):
            config = leaf.dump_config()
            docs = [d.instances[0].doc for d in self._docs.values() if d.leaf == name]
            leaves[name] = {"version": (config.get("metadata") or {}).get("version"),
                            "output_type": config.get("output_type"), "num_fewshot": config.get("num_fewshot"),
                            "config_sha256": _sha256(config), "data_sha256": _sha256(docs), "documents": len(docs)}
        return {"lm_eval_version": importlib.metadata.version("lm_eval"), "leaves": leaves,
                "chat_rendering": "checkpoint chat template, generation prompt (lm-eval --apply_chat_template)"
                if self.options.template == "chat" else "none (raw strings)"}


def _filter_names(leaf: Any) -> list[str]:
    names = [f.name for f in getattr(leaf, "_filters", [])]
    return names or ["none"]


def _item_values(key: str, value: Any) -> dict[str, float]:
    """A per-item metric value as scores: numbers as they are, bits_per_byte's (loglikelihood, bytes)
    pair as the item's bits per byte and its byte count (the weight of the pooled mean)."""
    if isinstance(value, bool | int | float):
        return {key: float(value)}
    if isinstance(value, tuple) and len(value) == 2 and key.split(":", 1)[0] == "bits_per_byte":
        ll, n_bytes = value
        return {key: -ll / math.log(2) / n_bytes, f"{key}.bytes": float(n_bytes)}
    return {}  # a corpus-level metric's item (f1 pairs, bleu refs): aggregated by lm-eval in _corpus_values


def _target(leaf: Any, doc: Mapping[str, Any]) -> Any:
    try:
        target = leaf.doc_to_target(doc)
    except Exception:  # some tasks compute targets only inside process_results
        return None
    return target if isinstance(target, str | int | float) else str(target)
