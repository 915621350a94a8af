"""HumanEval (Chen et al. 2021): 164 Python problems, functional correctness, pass@k.

Data: ``tasks/data/humaneval/HumanEval.jsonl.gz`` (MIT, openai/human-eval;
checksum verified on load).

Prompt modes (``--humaneval-mode``, recorded in config.json):

* ``completion``: the raw prompt, continued by the model and cut at the
  standard stop sequences (``\\nclass``, ``\\ndef``, ``\\n#``, ``\\nif``,
  ``\\nprint``), as in human-eval/Codex and lm-evaluation-harness;
* ``instruct``: one chat message asking for the completed function in a fenced
  block; the code is extracted (the last python block that defines the entry
  point; fences read line by line, see ``fenced_blocks``) and run after the
  prompt's own imports and helpers, so the original signature and imports are
  kept (nanochat's shape);
* ``auto`` (default): instruct, since SFT checkpoints are chat models.

Scoring runs every program in ``harness.sandbox`` (bubblewrap, seccomp, rlimits,
an audit hook, and the tests in a process of their own; see docs/humaneval.md) and needs ``--allow-code-execution``, which
is checked by the registry before the task is built, before any model loads. pass@k uses the unbiased, numerically
stable estimator of Chen et al. (2021); greedy pass@1 (n=1, temperature 0) is
the default, as SFT papers report it. Verdicts are journaled by a hash of the
program, the tests and the sandbox settings, so a resumed run never executes a
program twice.

Example: ``harness run --model smollm2-135m-instruct --suite humaneval --allow-code-execution --limit 20``
"""

from __future__ import annotations

import ast
import gzip
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

from harness.core.errors import UsageError
from harness.core.files import parse_jsonl, read_checksums, read_verified
from harness.core.options import Namer, Options, SharedOptions, option
from harness.core.records import Completion, Example, Message, MetricSpec, Request, Result, sha256_json
from harness.core.stats import metric_means

DATA_DIR = Path(__file__).parent / "data" / "humaneval"
STOP = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
REPORTED_K = (1, 10, 100)
INSTRUCTION = ("Complete the following Python function. Reply with the complete function, including its "
               "signature and any imports it needs, in a single ```python code block.")
# Filled by the registry with the remedies worded for where the run is configured (CLI or study).
OPT_IN = ("humaneval executes model-written code and needs an explicit opt-in: {opt_in} to run it in the "
          "sandbox, or leave it out of the run with {leave_out}")

# A fence is a line of its own: up to 3 spaces of indent (more inside list items is still seen
# as a fence and dedented), 3+ backticks or tildes, then an optional info string (the language).
_FENCE_LINE_RE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`\s]*)[^`]*$")
PYTHON_TAGS = frozenset({"", "python", "py", "python3", "py3"})
_IMPORT_RE = re.compile(r"^\s*(?:import|from)\s+([A-Za-z_][\w]*)", re.M)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of pass@k from n samples with c correct: 1 - C(n-c, k) / C(n, k).

    Computed as a running product (Chen et al. 2021, Fig. 3) so large n cannot
    overflow; equals human-eval's ``estimate_pass_at_k``.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def reported_ks(n: int) -> tuple[int, ...]:
    """pass@k columns for n samples: 1, 10, 100 where k <= n, and n itself."""
    return tuple(sorted({k for k in REPORTED_K if k <= n} | {n}))


@cache
def load_problems() -> tuple[dict[str, Any], ...]:
    raw = read_verified(DATA_DIR, "HumanEval.jsonl.gz")  # SHA256SUMS covers the compressed file
    text = gzip.decompress(raw).decode("utf-8")
    return tuple(row for _, row in parse_jsonl(text, str(DATA_DIR / "HumanEval.jsonl.gz")))


def truncate_at_stop(text: str, stop: Sequence[str] = STOP) -> str:
    cut = min((i for s in stop if (i := text.find(s)) >= 0), default=len(text))
    return text[:cut]


@dataclass(frozen=True)
class CodeBlock:
    lang: str  # the info string's first word, lower case ("" when untagged)
    code: str  # dedented by the fence's own indent
    closed: bool


def fenced_blocks(text: str) -> list[CodeBlock]:
    """Markdown fenced blocks, line-anchored as CommonMark reads them.

    A closing fence is a bare run of at least as many of the opening fence's
    characters; an unterminated final block runs to the end of the reply (the
    model hit its token limit). Content lines lose up to the fence's indent,
    so a block inside a list item reads as top-level code.
    """
    blocks: list[CodeBlock] = []
    open_fence: tuple[str, str, str] | None = None  # (fence, indent, lang)
    body: list[str] = []
    lines = text.replace("\r\n", "\n").split("\n")
    if lines[-1] == "":
        lines.pop()  # the text's final newline ends a line; it does not start one
    for line in lines:
        m = _FENCE_LINE_RE.match(line)
        if open_fence is None:
            if m:
                open_fence, body = (m["fence"], m["indent"], m["info"].lower()), []
            continue
        fence, indent, lang = open_fence
        if m and not m["info"] and m["fence"][0] == fence[0] and len(m["fence"]) >= len(fence) \
                and line.strip() == m["fence"]:
            blocks.append(CodeBlock(lang, "".join(f"{ln}\n" for ln in body), True))
            open_fence = None
            continue
        body.append(line[len(indent):] if line.startswith(indent) else line.lstrip(" \t"))
    if open_fence is not None:
        blocks.append(CodeBlock(open_fence[2], "".join(f"{ln}\n" for ln in body), False))
    return blocks


def defines(code: str, entry_point: str) -> bool:
    return re.search(rf"^\s*def\s+{re.escape(entry_point)}\s*\(", code, re.M) is not None


def extract_code(text: str, entry_point: str) -> str:
    """The code to run from an instruct reply.

    Among the python (or untagged) fenced blocks: the last one that defines
    ``entry_point`` (a revised answer comes after the first try; a usage
    example defines nothing), else the last block, preceded by any earlier
    definitions-only block it uses (a helper shown first); with no python
    block, the reply itself (a bare-code answer).
    """
    blocks = [b.code for b in fenced_blocks(text) if b.lang in PYTHON_TAGS]
    if not blocks:
        return text
    defining = [i for i, b in enumerate(blocks) if defines(b, entry_point)]
    chosen = defining[-1] if defining else len(blocks) - 1
    helpers = [b for b in blocks[:chosen] if _helper_for(b, blocks[chosen], entry_point)]
    return "\n".join([*helpers, blocks[chosen]])


def _helper_for(block: str, code: str, entry_point: str) -> bool:
    """An earlier block holding only definitions (imports, functions, classes) that ``code`` uses:
    "first a helper, then the function" replies. A block that runs anything is a usage example."""
    try:
        tree, used = ast.parse(block), ast.parse(code)
    except SyntaxError:
        return False
    kinds = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    if not all(isinstance(node, kinds) for node in tree.body):
        return False
    names = {node.name for node in tree.body if hasattr(node, "name")}
    names |= {(a.asname or a.name).split(".")[0] for node in tree.body
              if isinstance(node, ast.Import | ast.ImportFrom) for a in node.names}
    loaded = {n.id for n in ast.walk(used) if isinstance(n, ast.Name)}
    return entry_point not in names and bool(names & loaded)


def prompt_preamble(prompt: str, entry_point: str) -> str:
    """The prompt up to the entry point's ``def``: its imports and helper functions."""
    m = re.search(rf"^def\s+{re.escape(entry_point)}\s*\(", prompt, re.M)
    return prompt[: m.start()] if m else ""


def build_program(problem: Mapping[str, Any], text: str, mode: str) -> str:
    """The program to execute for one sample (before the tests are appended)."""
    prompt, entry = problem["prompt"], problem["entry_point"]
    if mode == "completion":
        return prompt + truncate_at_stop(text)
    code = extract_code(text, entry)
    if defines(code, entry):
        return prompt_preamble(prompt, entry) + "\n" + code
    return prompt + code  # the model answered with a function body only


def imported_modules(code: str) -> tuple[str, ...]:
    return tuple(sorted(set(_IMPORT_RE.findall(code))))


@dataclass(frozen=True)
class HumanEvalOptions(Options):
    prefix = "humaneval"

    mode: Literal["auto", "instruct", "completion"] = option(
        "auto", "prompt mode: instruct (chat, fenced code), completion (raw prompt + stop sequences); auto = instruct")
    n: int = option(1, "HumanEval samples per problem (pass@k for every k <= n)", flag="--n", low=1, high=1000)
    temperature: float | None = option(None, "HumanEval sampling temperature (default 0; 0.8 with --n > 1)",
                                       flag="--temperature", low=0, high=2)
    exec_timeout: float = option(10.0, "seconds per HumanEval program", flag="--exec-timeout", low=0,
                                 low_open=True, high=3600)
    exec_workers: int | None = option(None, "parallel sandboxes (default: cores)", flag="--exec-workers", low=1,
                                      high=1024, identity=False)

    def check(self, name: Namer) -> None:
        if self.n > 1 and self.temperature == 0:
            raise UsageError(f"{name('n')} {self.n} with {name('temperature')} 0 gives {self.n} identical greedy "
                             f"samples; set {name('temperature')} to 0.8 (or leave it unset) for sampled pass@k")


class HumanEval:
    """Python function synthesis, pass@k in a sandbox (needs --allow-code-execution)."""

    name = "humaneval"
    version = "2"  # 2: instruct replies read with line-anchored fences (docs/fidelity.md)
    turns = 1
    Options = HumanEvalOptions
    needs_judge = False
    needs_code_execution = True  # the registry refuses to build it without the run's opt-in
    opt_in = OPT_IN
    default_max_drop = 2.0  # pass@1 points the CI gate allows by default

    def __init__(self, options: HumanEvalOptions | None = None, shared: SharedOptions | None = None) -> None:
        options, shared = options or HumanEvalOptions(), shared or SharedOptions()
        self.requested_mode = options.mode
        self.mode = "instruct" if options.mode == "auto" else options.mode
        self.needs_chat = self.mode == "instruct"  # completion mode sends raw text: no chat template needed
        self.n = options.n
        self.temperature = options.temperature if options.temperature is not None else (0.0 if self.n == 1 else 0.8)
        self.seed = shared.seed
        self.max_tokens = shared.max_tokens or 512
        self.ks = reported_ks(self.n)
        kind = "binary" if self.n == 1 else "continuous"
        # One value per problem (the unbiased pass@k over its n samples): the problem is the sampled unit,
        # so samples of one problem are never treated as independent.
        self.metrics = tuple(MetricSpec(f"pass@{k}", key=f"pass@{k}", kind="binary" if k == self.n == 1 else kind,
                                        primary=k == 1, unit="problem") for k in self.ks)
        from harness.sandbox import Limits, Sandbox
        self.sandbox = Sandbox(Limits(timeout=options.exec_timeout, cpu_seconds=int(options.exec_timeout) + 1),
                               workers=options.exec_workers)

    def load(self, limit: int | None = None) -> list[Example]:
        rows = load_problems()[:limit] if limit else load_problems()
        return [Example(id=r["task_id"], data=r) for r in rows]

    def requests(self, examples: Sequence[Example], turn: int,
                 prior: Mapping[str, Sequence[Completion]]) -> list[Request]:
        top_p = 0.95 if self.temperature > 0 else 1.0  # Codex paper sampling
        common = {"max_tokens": self.max_tokens, "temperature": self.temperature, "top_p": top_p,
                  "n": self.n, "seed": self.seed}
        if self.mode == "completion":
            return [Request(id=ex.id, prompt=ex.data["prompt"], stop=STOP, **common) for ex in examples]
        return [Request(id=ex.id, messages=(Message("user", f"{INSTRUCTION}\n\n```python\n{ex.data['prompt']}```"),),
                        **common) for ex in examples]

    def score(self, examples: Sequence[Example], completions: Mapping[str, Sequence[Completion]],
              ctx: Any) -> list[Result]:
        planned = {ex.id: self._plan(ex, completions[ex.id][0]) for ex in examples}
        verdicts = self._execute([job for jobs in planned.values() for job in jobs], ctx)
        return [self._result(ex, completions[ex.id][0], planned[ex.id], verdicts) for ex in examples]

    def _plan(self, ex: Example, comp: Completion) -> list[tuple[str, Any]]:
        """(cache key, Program) per sample; the key covers program, tests and sandbox settings."""
        from harness.sandbox import Program

        if comp.error is not None:
            return []
        settings = sha256_json(self.sandbox.describe())
        jobs = []
        for text in comp.texts:
            prog = Program(program=build_program(ex.data, text, self.mode), test=ex.data["test"],
                           entry_point=ex.data["entry_point"], setup=ex.data["prompt"],
                           preload=imported_modules(ex.data["test"] + ex.data["prompt"]))
            jobs.append((sha256_json([prog.program, prog.test, prog.entry_point, prog.setup, settings]), prog))
        return jobs

    def _execute(self, jobs: list[tuple[str, Any]], ctx: Any) -> dict[str, dict[str, Any]]:
        """Verdict record per cache key; programs already in the journal are not run again."""
        if self.sandbox.fallback_reason:
            from harness.sandbox.box import fallback_advice
            ctx.log(f"WARNING: humaneval isolation={self.sandbox.isolation}: "
                    f"{fallback_advice(self.sandbox.fallback_reason)}")
        journal = ctx.journal(f"{self.name}.exec.jsonl")
        todo = list({key: prog for key, prog in jobs if journal.get(key) is None}.items())
        bar = ctx.progress(f"{self.name} exec", len(todo))

        def on_result(i: int, verdict: Any) -> None:
            journal.append(todo[i][0], {"verdict": verdict.to_dict()})
            bar.update(1)

        try:  # on Ctrl-C run_many stops at once; the verdicts journaled so far are kept for the resume
            self.sandbox.run_many([p for _, p in todo], on_result=on_result)
        finally:
            journal.sync()
            bar.close()
        return {key: journal.get(key)["verdict"] for key, _ in jobs}

    def _result(self, ex: Example, comp: Completion, jobs: list[tuple[str, Any]],
                verdicts: Mapping[str, dict[str, Any]]) -> Result:
        from harness.sandbox import Verdict

        if comp.error is not None:
            return Result(id=ex.id, error=f"generation failed: {comp.error}")
        if len(jobs) != self.n:
            return Result(id=ex.id, error=f"expected {self.n} samples, got {len(jobs)}")
        samples = []
        for key, prog in jobs:
            v = Verdict.from_dict(verdicts[key])
            samples.append({"program": prog.program, "verdict": v.text, "status": v.status,
                            "duration": v.duration, "output": v.output})
        c = sum(s["status"] == "passed" for s in samples)
        return Result(id=ex.id, scores={f"pass@{k}": pass_at_k(self.n, c, k) for k in self.ks},
                      extracted={"correct": c, "n": self.n}, info={"samples": samples})

    def aggregate(self, results: Sequence[Result]) -> dict[str, float]:
        scored = [r for r in results if r.error is None]
        statuses = [s["status"] for r in scored for s in r.info.get("samples", ())]
        out: dict[str, float] = {"n": len(results), "scored": len(scored), "errors": len(results) - len(scored),
                                 "samples": len(statuses), "timed_out": statuses.count("timed out"),
                                 "sandbox_violations": statuses.count("sandbox violation")}
        return {**out, **metric_means(scored, self.metrics)}

    def describe(self) -> dict[str, Any]:
        return {"prompt_mode": self.mode, "requested_mode": self.requested_mode, "n": self.n,
                "temperature": self.temperature, "max_tokens": self.max_tokens, "ks": list(self.ks),
                "stop": list(STOP) if self.mode == "completion" else [],
                "instruction": INSTRUCTION if self.mode == "instruct" else None,
                "isolation": self.sandbox.isolation, "sandbox": self.sandbox.describe(),
                "data_sha256": _data_sha256()}


def _data_sha256() -> str:
    return read_checksums(DATA_DIR)["HumanEval.jsonl.gz"]
