"""Is a conversation about code or maths? A rule-based content classifier for the ShareGPT filter.

Dong et al. 2023 (arXiv 2310.05492) trained on ShareGPT without its code and
maths conversations, found by InsTag tags. We have no tagging model, and the
plain keyword rule ("any turn mentions code or math") is a poor stand-in: it
keeps "Write a Python script", SQL, tracebacks and "What is 17 * 23 + 4?",
and removes "dress code", "zip code" and "math anxiety". This module looks at
what the user asks for and what the assistant answers instead:

* code: fenced blocks whose lines read as code, pasted code outside fences,
  tracebacks and stack traces, SQL statements, requests such as "fix this
  JavaScript function", language names and programming phrases ("my code");
* math: arithmetic (``17 * 23 = 391``), equations with a variable, LaTeX and
  maths symbols, requests to solve, compute or prove, word problems, maths
  vocabulary. Maths rules skip fenced blocks: ``x = i * 2 + 1`` in a
  program is code, not an exercise.

Each rule that fires is recorded as ``Evidence`` (label, rule, turn, the text
it matched) with a weight; a label is given when its weights reach 1. Strong
evidence (a traceback, an equation) weighs 1 on its own, a hint (a language
name, a maths word) 0.5, so one hint never removes a conversation. Every
removal can therefore be explained. It is a heuristic: bench/sharegpt_filter.py
measures it, and the keyword rule, against hand labels (docs/train.md).

    verdict = classify(conv)   # Verdict(code=True, math=False, evidence=(...))
    print(verdict.explain())   # code: sql@1 'SELECT id FROM orders' + language@0 'SQL'
    python bench/sharegpt_filter.py --audit 20   # the first 20 removals of a data file, explained
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from harness.core.errors import UsageError

if TYPE_CHECKING:
    from harness.train.data import Conversation

RULES = ("classifier", "keywords", "none")
THRESHOLD = 1.0
STRONG, HINT = 1.0, 0.5


@dataclass(frozen=True)
class Evidence:
    label: str  # "code" or "math"
    rule: str
    weight: float
    turn: int  # index into the conversation's messages
    excerpt: str


@dataclass(frozen=True)
class Verdict:
    code: bool
    math: bool
    evidence: tuple[Evidence, ...]

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(name for name, on in (("code", self.code), ("math", self.math)) if on)

    def rules(self, label: str) -> set[str]:
        return {e.rule for e in self.evidence if e.label == label}

    def explain(self) -> str:
        """``code: sql@1 'SELECT id FROM t' + language@0 'python'`` for each label given."""
        parts = [f"{label}: " + " + ".join(f"{e.rule}@{e.turn} {e.excerpt!r}" for e in self.evidence
                                           if e.label == label) for label in self.labels]
        return "; ".join(parts) or "neither code nor math"


@dataclass(frozen=True)
class Removed:
    """A conversation a filter took out, and why (for the log's counts and for audits)."""

    conv: Conversation
    labels: tuple[str, ...]
    reason: str


# -- code rules ---------------------------------------------------------------------------------

_FENCE = re.compile(r"^[ \t]*```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)(?:^[ \t]*```|\Z)", re.M | re.S)
_SHELL = (r"sudo|apt(?:-get)?|brew|pip3?|npm|npx|yarn|git|docker|kubectl|helm|curl|wget|cd|ls|cat|grep|"
          r"chmod|chown|mkdir|rm|mv|cp|ssh|scp|echo|export|python3?|node|java|javac|gcc|make|cargo|go|"
          r"openssl|az|aws|gcloud|terraform|systemctl|conda|mvn|gradle|dotnet|psql|mysql")
_CODE_LINE = re.compile(
    r"^\s*(?:def |class \w|import [\w.]+|from [\w.]+ import |return\b|if\s*\(|for\s*\(|while\s*\(|"
    r"(?:el)?if .+:$|for .+ in .+:$|while .+:$|try:$|except\b|const |let |var |function\b|"
    r"(?:public|private|protected|static|async|export) |#include\b|package [\w.]+;|using [\w.]+;|"
    r"<\?php|\$\w+\s*=|console\.log|print\(|printf\(|System\.out|std::|(?:" + _SHELL + r")\s+(?:\S+\s+)?"
    r"(?:-{1,2}\w|\S*[/.~$]\S*|install\b|run\b|clone\b|commit\b|push\b|pull\b|build\b|init\b|apply\b)|"
    r"</?[a-zA-Z][\w-]*(?:\s[^>]*)?>|=[A-Z]+\(|[\w.\[\]\"']+\s*[-+*/%|&]?=\s*\S+;$|\"[\w-]+\"\s*:|"
    r"[{}\[\]();]+,?$|(?:- )?[a-z_][\w-]*:\s*[\"'{\[]|.*[;{]$|@\w+|//|/\*|\*/|[├└│]|"
    r"SELECT\b|INSERT\b|UPDATE\b|CREATE\b)"
)
_PROSE_LINE = re.compile(r"^\s*(?:[-*+]|\d+[.)])?\s*[A-Z][a-z]+(?:\s+[a-z,'’]+){5,}[.!?:]?$")
_TRACE = re.compile(
    r"Traceback \(most recent call last\)|File \"[^\"]+\", line \d+|Exception in thread \"|"
    r"^\s*at [\w.$<>]+\([\w.]+:\d+\)|\b(?:Type|Value|Key|Index|Attribute|Name|Syntax|Import|"
    r"ModuleNotFound|Reference|Runtime)Error: |\bjava\.lang\.\w+Exception|\bnpm ERR!|"
    r"\berror (?:TS|CS|C)\d{3,5}\b|Segmentation fault|Uncaught \w+Error", re.M)
_SQL = re.compile(
    r"\bSELECT\s+(?:DISTINCT\s+)?[\w*.,()\s]+?\s+FROM\s+[\w.`\"]+|\b(?:INSERT\s+INTO|CREATE\s+TABLE|"
    r"ALTER\s+TABLE|DROP\s+TABLE|DELETE\s+FROM)\s+[\w.`\"]+|\bUPDATE\s+\w+\s+SET\s+\w+\s*=")
# Unambiguous names are hints on their own; ambiguous ones ("shell", "rust", "react", "pandas")
# count only in a request next to a programming object ("a React component", "a shell script").
_LANGS = (r"python|javascript|typescript|java(?!\s+(?:island|sea|coffee))|c\+\+|c#|php|sql|mysql|postgres(?:ql)?|"
          r"sqlite|html|css|jquery|react\.?js|react native|vue\.js|node\.?js|next\.js|django|fastapi|kotlin|"
          r"golang|ruby on rails|scala|perl|bash|powershell|matlab|vba|excel formulas?|apps script|solidity|"
          r"swiftui|numpy|pytorch|tensorflow|dockerfile|regex|json|yaml|arduino|\.net|laravel|spring boot")
_LANGS_REQ = _LANGS + r"|shell|rust|react|angular|vue|pandas|flask|swift|ruby|go|c|r|excel|sheets|docker"
_OBJECTS = (r"code|script|function|program|class|method|query|queries|regex|regular expression|snippet|"
            r"component|endpoint|api|module|algorithm|unit tests?|bot|app|command|macro|formulas?|loop")
_VERBS = (r"write|create|generate|build|implement|make|give me|show me|fix|debug|refactor|optimi[sz]e|convert|"
          r"translate|rewrite|modify|update|change|add|explain|review|complete|correct|port")
_B, _E = r"(?<![\w.+#])", r"(?![\w+#])"  # word edges that also work for c++, c#, .net
_REQUEST = re.compile(
    rf"\b(?:{_VERBS})\b[^.?!\n]{{0,60}}?{_B}(?:{_LANGS_REQ}){_E}[^.?!\n]{{0,30}}?\b(?:{_OBJECTS})\b|"
    rf"{_B}(?:{_LANGS_REQ}){_E}\s+(?:{_OBJECTS})\b|"
    rf"\b(?:{_VERBS})\s+(?:(?:the|a|an|some|me|my|this|your|following)\s+){{0,2}}(?:code|program)\b(?!\s+of\b)",
    re.I)
# "... in Rust"; not "in Excel" or "in Docker": there one works in a tool, not in a language
_REQUEST_IN = re.compile(rf"\b(?:{_VERBS})\b[^.?!\n]{{0,40}}\bin\s+(?:{_LANGS}|shell|rust|swift|ruby|go|r|"
                         rf"c(?!\s+(?:major|minor|sharp|flat)\b)){_E}", re.I)
_OBJECT_NEEDLES = ("code", "script", "function", "program", "class", "method", "quer", "regex", "regular expression",
                   "snippet", "component", "endpoint", "api", "module", "algorithm", "test", "bot", "app", "command",
                   "macro", "formula", "loop")


def _request(text: str) -> str | None:
    """A request for code: "fix this JavaScript function", "write code that ...", "... in Rust"."""
    lower = text.lower()
    m = _REQUEST.search(text) if any(n in lower for n in _OBJECT_NEEDLES) else None
    m = m or (_REQUEST_IN.search(text) if " in " in lower else None)
    return m.group(0) if m else None


_LANGUAGE = re.compile(rf"{_B}(?:{_LANGS}){_E}", re.I)
_CODE_PHRASE = re.compile(
    r"\b(?:source|sample|example|following|above|below|my|your|this|updated|modified|full|complete|"
    r"whole|entire|rest of the)\s+code\b(?!\s+(?:of|word|name)\b)|\bcode\s+(?:snippet|block|review|base)\b|"
    r"\bcodebase\b|\blines? of code\b|\bwrite (?:the|a|some) code\b|\b(?:compile|syntax|runtime) error\b|"
    r"\bstack trace\b|\bfunction call\b|\breturn value\b|\bvariable\b|\barray\b|\bdebug\w*\b", re.I)
_INLINE = re.compile(r"`[^`\n]*[()_.=<>/\[\]{}][^`\n]*`")


def _fenced_code(text: str) -> str | None:
    for m in _FENCE.finditer(text):
        lines = [ln for ln in m.group(2).splitlines() if ln.strip()]
        codeish = [ln for ln in lines if _CODE_LINE.match(ln) and not _PROSE_LINE.match(ln)]
        if codeish and (len(codeish) >= 3 or len(codeish) / len(lines) >= 0.3):
            return codeish[0].strip()
    return None


def _pasted_code(text: str) -> str | None:
    """Three or more lines of code outside fences: ShareGPT users paste programs unfenced."""
    lines = [ln for ln in _FENCE.sub("", text).splitlines() if _CODE_LINE.match(ln) and not _PROSE_LINE.match(ln)]
    return lines[0].strip() if len(lines) >= 3 else None


def _inline_code(text: str) -> str | None:
    spans = _INLINE.findall(text)
    return spans[0] if len(spans) >= 2 else None


# -- math rules ---------------------------------------------------------------------------------
# Atoms and operators are atomic groups: whitespace can belong to an operator or to the next atom,
# and without (?>...) a long list such as '* 100\n* 101\n...' (no '=') backtracks exponentially.
# Neither crosses a line break, so a bulleted list of numbers is not a product.

_NUM = r"[$€£]?\d[\d,]*(?:\.\d+)?%?"
_ATOM = rf"(?>(?:sqrt|√)?[(|]*[ \t]*{_NUM}(?:[ \t]*[)|])*(?:\^\d+)?(?:[ \t]*[)|])*)"  # ((|3.209 - 2.978|) / 3.209), (1.5)^2
_OP = r"(?>[ \t]*(?:\\?\*|×|÷|x(?=[ \t])|\^)[ \t]*|[ \t]+[-+/][ \t]+|[ \t]*[+][ \t]*)"
_ARITH = re.compile(
    rf"(?<![\w.:/-]){_ATOM}(?:{_OP}{_ATOM})+\s*=\s*\??\s*-?(?:{_NUM})?(?![\w/-])|"  # 17 * 23 = 391, 12 \* 12 = ?
    rf"(?<![\w.:/-]){_NUM}\s*/\s*{_NUM}\s*=\s*{_NUM}|"  # 6/36 = 1/6
    rf"(?<![\w.:/-]){_ATOM}{_OP}{_ATOM}(?:{_OP}{_ATOM})+(?![\w/-])|"  # 17 * 23 + 4
    rf"\b(?:what is|what's|calculate|compute|evaluate|how much is)\s+{_NUM}"
    rf"(?:{_OP}|\s+(?:times|plus|minus|divided by|multiplied by)\s+){_NUM}", re.I)  # what is 12 times 7
_EQUATION = re.compile(
    r"(?<![\w.])\d*[a-z](?:\^\d+|²|³)?\s*[-+*/×]\s*\d+(?:\.\d+)?\s*=\s*-?\d|"  # 3x + 5 = 20
    r"\b[a-z]\^\d|\b[fgh]\([a-z]\)\s*=|\bd[xy]/d[xyt]\b|\bd/dx\b|"
    r"(?<![\w.])(?:log|ln|sin|cos|tan)\([a-z0-9]|\blim_|\b\d+[a-z]\s*=\s*\d+\b")
_LATEX = re.compile(r"\\(?:frac|dfrac|sum|prod|int|iint|sqrt|mathbb|mathbf|mathcal|cdot|times|leq|geq|neq|"
                    r"alpha|beta|gamma|theta|lambda|sigma|mu|pi|infty|partial|nabla|lim|binom|"
                    r"begin\{(?:align|equation|bmatrix|pmatrix|cases|matrix)\*?\})(?![a-z])|\$\$[^$]+\$\$")
_SYMBOL_STRONG = re.compile(r"[∫∑∏√∂∇]")
# π counts next to a number or an operand: alone it is as often a Greek letter in Greek text
_SYMBOL_HINT = re.compile(r"[≤≥≠±∞≈²³]|\dπ|π\s*[r\d(*×/]|\b\d+\s*[<>]=?\s*[a-z]\b")
_MATH_REQUEST = re.compile(
    r"\bsolve\b[^.?!\n]{0,20}?\b(?:for [a-z]\b|(?:the |this |these |following )?(?:equations?|inequalit\w+|"
    r"system of|integral|limit|quadratic))|"
    r"\b(?:find|calculate|compute|evaluate|simplify|prove|derive|differentiate|integrate|factori[sz]e)\b"
    r"[^.?!\n]{0,40}\b(?:equations?|integral|derivative|limit|probability|expression|sum of|roots?|eigen\w+|"
    r"determinant|area|volume|value of [a-z]\b|gcd|lcm|perimeter|hypotenuse)\b|"
    r"\bwhat(?: is|'s) the (?:derivative|integral|probability|value of [a-z]\b|sum of \d|square root)|"
    r"\b(?:probability that|word problems?|maths? (?:problems?|questions?|homework|exercises?|equations?|"
    r"puzzles?|tests?|quiz)|prove that)\b", re.I)
_QUANT_QUESTION = re.compile(r"\b(?:how (?:many|much|long|far|fast)|what (?:is|was|will be) the (?:total|"
                             r"average|percentage|ratio|speed|area|volume|cost|profit|price|probability))\b",
                             re.I)
_MATH_TERMS = re.compile(
    r"\b(?:equations?|derivatives?|integrals?|theorems?|polynomials?|quadratic|logarithms?|eigen\w+|"
    r"probabilit(?:y|ies)|variance|standard deviation|algebra\w*|calculus|geometry|trigonometr\w+|"
    r"hypotenuse|arithmetic|fractions?|denominator|numerator|proofs?|lemma|vector spaces?|integers?|"
    r"prime numbers?|exponents?|inequalit(?:y|ies)|formula for)\b", re.I)
_MATH_WORD = re.compile(r"\bmath(?:s|ematics|ematical)?\b", re.I)


def _word_problem(text: str) -> str | None:
    """A quantitative question with three or more numbers in one (user) turn."""
    q = _QUANT_QUESTION.search(text)
    numbers = [n for n in re.findall(r"(?<![\w.])\d[\d,]*(?:\.\d+)?", text) if not re.fullmatch(r"(?:19|20)\d\d", n)]
    if q and len(text) < 1500 and len(numbers) >= 3:  # years are dates, not quantities
        return q.group(0)
    return None


# -- the rule table -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Rule:
    label: str
    name: str
    weight: float
    find: Callable[[str], str | None]
    roles: tuple[str, ...] = ("user", "assistant")
    prose_only: bool = False  # run on the text with fenced blocks removed
    needles: tuple[str, ...] = ()  # the regex runs only if the lowercased text holds one (speed)


def _search(pattern: re.Pattern[str]) -> Callable[[str], str | None]:
    def find(text: str) -> str | None:
        m = pattern.search(text)
        return m.group(0) if m else None
    return find


def _words(spec: str) -> tuple[str, ...]:
    return tuple(spec.split("|"))


_LANG_NEEDLES = _words("python|javascript|typescript|java|c++|c#|php|sql|postgres|html|css|jquery|react|vue|node|"
                       "next.js|django|fastapi|kotlin|golang|ruby|scala|perl|bash|powershell|matlab|vba|excel "
                       "formula|apps script|solidity|swiftui|numpy|pytorch|tensorflow|dockerfile|regex|json|yaml|"
                       "arduino|.net|laravel|spring boot")
_RULES = (
    _Rule("code", "code-block", STRONG, _fenced_code, needles=("```",)),
    _Rule("code", "traceback", STRONG, _search(_TRACE),
          needles=_words('traceback|file "|exception|error|segmentation fault')),
    _Rule("code", "sql", STRONG, _search(_SQL),
          needles=_words("select|insert|create table|alter table|drop table|delete from|update")),
    _Rule("code", "request", STRONG, _request, roles=("user",)),
    _Rule("code", "pasted-code", STRONG, _pasted_code),
    _Rule("code", "language", HINT, _search(_LANGUAGE), needles=_LANG_NEEDLES),
    _Rule("code", "code-phrase", HINT, _search(_CODE_PHRASE),
          needles=_words("code|error|stack trace|function call|return value|variable|array|debug")),
    _Rule("code", "inline-code", HINT, _inline_code, needles=("`",)),
    _Rule("math", "arithmetic", STRONG, _search(_ARITH), prose_only=True,
          needles=_words("*|×|÷|^|+| - |/| x | times | plus | minus |divided by|multiplied by")),
    _Rule("math", "equation", STRONG, _search(_EQUATION), prose_only=True, needles=_words("=|^|/d|(|lim_")),
    _Rule("math", "latex", STRONG, _search(_LATEX), prose_only=True, needles=("\\", "$$")),
    _Rule("math", "math-symbol", STRONG, _search(_SYMBOL_STRONG), prose_only=True, needles=tuple("∫∑∏√∂∇")),
    _Rule("math", "solve-request", STRONG, _search(_MATH_REQUEST), roles=("user",), prose_only=True,
          needles=_words("solve|find|calculat|comput|evaluat|simplif|prove|derive|differentiat|integrat|"
                         "factori|what|probability|word problem|math")),
    _Rule("math", "word-problem", STRONG, _word_problem, roles=("user",), prose_only=True,
          needles=("how ", "what ")),
    _Rule("math", "math-hint", HINT, _search(_SYMBOL_HINT), prose_only=True, needles=tuple("≤≥≠±∞≈π²³<>")),
    _Rule("math", "math-terms", HINT, _search(_MATH_TERMS), prose_only=True,
          needles=_words("equation|derivativ|integral|theorem|polynomial|quadratic|logarithm|eigen|probabilit|"
                         "variance|standard deviation|algebra|calculus|geometry|trigonometr|hypotenuse|"
                         "arithmetic|fraction|denominator|numerator|proof|lemma|vector space|integer|"
                         "prime number|exponent|inequalit|formula for")),
    _Rule("math", "math-word", HINT, _search(_MATH_WORD), prose_only=True, needles=("math",)),
)


def _short(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def classify(conv: Conversation) -> Verdict:
    """Labels {code, math} for one conversation, with every rule that fired (each rule counts once)."""
    views = []  # per turn: (role, {prose_only: (text, lowercased)})
    for msg in conv.messages:
        prose = _FENCE.sub("\n", msg.content) if "```" in msg.content else msg.content
        views.append((msg.role, {False: (msg.content, msg.content.lower()), True: (prose, prose.lower())}))
    evidence: list[Evidence] = []
    for rule in _RULES:
        for turn, (role, view) in enumerate(views):
            text, lower = view[rule.prose_only]
            if role not in rule.roles or (rule.needles and not any(n in lower for n in rule.needles)):
                continue
            hit = rule.find(text)
            if hit:
                evidence.append(Evidence(rule.label, rule.name, rule.weight, turn, _short(hit)))
                break
    score = {label: sum(e.weight for e in evidence if e.label == label) for label in ("code", "math")}
    return Verdict(code=score["code"] >= THRESHOLD, math=score["math"] >= THRESHOLD, evidence=tuple(evidence))


# -- filters ------------------------------------------------------------------------------------


def keyword_match(conv: Conversation, keywords: Sequence[str]) -> str | None:
    """The first keyword any turn mentions (case-insensitive word prefix), as ``data.keyword_filter``."""
    pattern = re.compile(r"\b(?:" + "|".join(re.escape(k) for k in keywords) + ")", re.I)
    for msg in conv.messages:
        m = pattern.search(msg.content)
        if m:
            return next(k for k in keywords if m.group(0).lower() == k.lower())
    return None


def check_filter(rule: str | None, keywords: Sequence[str], where: str) -> str | None:
    """A study's ``filter`` / ``filter_keywords`` pair, checked before any data is read."""
    if rule is not None and rule not in RULES:
        raise UsageError(f"{where} filter: unknown rule {rule!r}; choose from: {', '.join(RULES)}")
    if rule == "keywords" and not keywords:
        raise UsageError(f'{where} filter = "keywords" needs filter_keywords, e.g. filter_keywords = ["code", "math"]')
    if rule not in (None, "keywords") and keywords:
        raise UsageError(f'{where} filter_keywords is only used with filter = "keywords"; '
                         f'remove it or set filter = "keywords"')
    return rule


def filter_conversations(convs: Sequence[Conversation], rule: str, keywords: Sequence[str] = ()
                         ) -> tuple[list[Conversation], list[Removed]]:
    """Drop the conversations ``rule`` marks: "classifier" (code or math), "keywords" or "none"."""
    if rule not in RULES:
        raise UsageError(f"unknown filter rule {rule!r}; choose from: {', '.join(RULES)}")
    if rule == "keywords" and not keywords:
        raise UsageError('filter = "keywords" needs filter_keywords, e.g. filter_keywords = ["code", "math"]')
    kept: list[Conversation] = []
    removed: list[Removed] = []
    for conv in convs:
        if rule == "none":
            kept.append(conv)
        elif rule == "keywords":
            hit = keyword_match(conv, keywords)
            kept.append(conv) if hit is None else removed.append(Removed(conv, (hit,), f"keyword {hit!r}"))
        else:
            verdict = classify(conv)
            kept.append(conv) if not verdict.labels else removed.append(
                Removed(conv, verdict.labels, verdict.explain()))
    return kept, removed
