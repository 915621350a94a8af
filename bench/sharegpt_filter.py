"""The ShareGPT "no code / no math" filter: classifier and keyword rule against hand labels.

Reads ShareGPT texts from ``../shared/data`` (or ``--data``, your own copy in
FastChat's format) and the hand labels committed in
``train/examples/sharegpt_labels.jsonl`` (conversation ids, a hash of the
text and the labels; no ShareGPT text is committed, its terms are unclear).
A label is matched by id and text hash, so a copy whose conversation differs
is counted as unmatched, not scored against the wrong text.

For each rule it prints precision and recall of "should be removed" (code or
math) on the seeded sample alone (an unbiased estimate) and with the
deliberately picked hard cases, then how many of the file's conversations
the rule removes. ``--show`` lists disagreements (or every removal) with the
classifier's evidence, to audit it.

    python bench/sharegpt_filter.py
    python bench/sharegpt_filter.py --data ~/sharegpt_clean.json --show disagreements
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import random
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

from harness.core.errors import UsageError
from harness.core.stats import wilson_interval
from harness.train.classify import classify, keyword_match
from harness.train.data import Conversation, from_sharegpt, read_records

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "sharegpt" / "sharegpt_v3_unfiltered_cleaned_split.PREFIX_17671.json.gz"
LABELS = ROOT / "train" / "examples" / "sharegpt_labels.jsonl"


def text_sha256(rec: dict) -> str:
    """The labels' text hash: every turn's value joined by newlines (FastChat's raw record)."""
    turns = rec.get("conversations") or []
    return hashlib.sha256("\n".join(t.get("value") or "" for t in turns).encode()).hexdigest()[:16]


def load_labels(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for r in rows:
        if not {"id", "text_sha256", "code", "math", "pick"} <= r.keys():
            raise UsageError(f"{path}: label row {r} lacks id, text_sha256, code, math or pick")
    return rows


def match(labels: list[dict], records: list[tuple[str, dict]]) -> tuple[list[tuple[dict, Conversation]], dict]:
    """(label, conversation) pairs; counts of labels not found and of those the loader drops."""
    by_key = {(rec.get("id"), text_sha256(rec)): (where, rec) for where, rec in records}
    pairs, missing = [], {"not in this file": 0, "dropped by the loader": 0}
    for lab in labels:
        hit = by_key.get((lab["id"], lab["text_sha256"]))
        if hit is None:
            missing["not in this file"] += 1
            continue
        conv = from_sharegpt(hit[1], hit[0], "general")
        if isinstance(conv, str):
            missing["dropped by the loader"] += 1
        else:
            pairs.append((lab, conv))
    return pairs, missing


def pick_for_labelling(records: list[tuple[str, dict]]) -> dict[int, str]:
    """The stable rule that chose the labelled conversations (record index -> pick), for ``--repick``.

    100 seeded indices, then 12 seeded picks from each of two hard groups outside them: text that
    mentions code/math (word prefix) without a fenced block, and text without those words that has a
    fence or a digit-operator-digit run.
    """
    texts = ["\n".join(t.get("value") or "" for t in rec.get("conversations") or []) for _, rec in records]
    seeded = set(random.Random(2310).sample(range(len(texts)), 100))
    kw = re.compile(r"\b(?:code|math)", re.I)
    rest = [i for i in range(len(texts)) if i not in seeded]
    no_fence = [i for i in rest if kw.search(texts[i]) and "```" not in texts[i]]
    symbols = [i for i in rest if not kw.search(texts[i]) and re.search(r"```|\d\s*[-+*/^=]\s*\d", texts[i])]
    picks = dict.fromkeys(seeded, "seeded")
    picks |= dict.fromkeys(random.Random(1).sample(no_fence, 12), "hard:keyword-without-fence")
    picks |= dict.fromkeys(random.Random(2).sample(symbols, 12), "hard:symbols-without-keyword")
    return picks


RULES: dict[str, Callable[[Conversation], bool]] = {
    "classifier": lambda c: bool(classify(c).labels),
    "keywords": lambda c: keyword_match(c, ("code", "math")) is not None,
}


def scores(pairs: list[tuple[dict, Conversation]], rule: Callable[[Conversation], bool]) -> str:
    tp = fp = fn = tn = 0
    for lab, conv in pairs:
        truth, pred = lab["code"] or lab["math"], rule(conv)
        tp, fp, fn, tn = tp + (truth and pred), fp + (pred and not truth), fn + (truth and not pred), \
            tn + (not truth and not pred)
    def ratio(k: int, n: int) -> str:
        if n == 0:
            return "  n/a"
        lo, hi = wilson_interval(k, n)
        return f"{k / n:5.3f} ({k}/{n}, 95% CI {lo:.2f}-{hi:.2f})"
    return f"precision {ratio(tp, tp + fp)}  recall {ratio(tp, tp + fn)}  [tp {tp} fp {fp} fn {fn} tn {tn}]"


def per_label(pairs: list[tuple[dict, Conversation]]) -> str:
    out = []
    for label in ("code", "math"):
        agree = sum((label in classify(c).labels) == lab[label] for lab, c in pairs)
        out.append(f"{label} {agree}/{len(pairs)}")
    return "classifier per-label agreement: " + ", ".join(out)


def removal_counts(records: list[tuple[str, dict]], audit: int) -> None:
    convs, dropped = [], 0
    for where, rec in records:
        conv = from_sharegpt(rec, where, "general")
        dropped += isinstance(conv, str)
        if not isinstance(conv, str):
            convs.append(conv)
    n = len(records)
    print(f"\n{n} records; the loader drops {dropped} (empty, truncated or role-broken), {len(convs)} conversations")
    t0 = time.process_time()
    verdicts = [classify(c) for c in convs]
    cpu = time.process_time() - t0
    removed = sum(bool(v.labels) for v in verdicts)
    code, math = sum(v.code for v in verdicts), sum(v.math for v in verdicts)
    print(f"  classifier removes {removed:6d} of {n} ({removed / n:.1%}), keeps {len(convs) - removed}; "
          f"code {code}, math {math}, both {code + math - removed}  [{cpu:.1f} s CPU]")
    t0 = time.process_time()
    removed = sum(RULES["keywords"](c) for c in convs)
    print(f"  keywords   removes {removed:6d} of {n} ({removed / n:.1%}), keeps {len(convs) - removed}"
          f"  [{time.process_time() - t0:.1f} s CPU]")
    if audit:
        print(f"\nthe first {audit} conversations the classifier removes, with its evidence:")
        removals = ((c, v) for c, v in zip(convs, verdicts, strict=True) if v.labels)
        for conv, verdict in itertools.islice(removals, audit):
            print(f"  {conv.id}  {verdict.explain()}")


def show(pairs: list[tuple[dict, Conversation]], what: str, limit: int) -> None:
    print(f"\n{what} (classifier):")
    shown = 0
    for lab, conv in pairs:
        verdict = classify(conv)
        truth, pred = lab["code"] or lab["math"], bool(verdict.labels)
        if (what == "disagreements" and truth == pred) or (what == "removed" and not pred):
            continue
        if shown == limit:
            break
        shown += 1
        want = ",".join(k for k in ("code", "math") if lab[k]) or "-"
        print(f"  {lab['id']:18s} label {want:9s} [{lab['pick']}] {lab.get('note', '')}\n      {verdict.explain()}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA, help="ShareGPT file in FastChat's format")
    ap.add_argument("--labels", type=Path, default=LABELS)
    ap.add_argument("--show", choices=("disagreements", "removed"), help="list labelled conversations")
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--no-counts", action="store_true", help="skip the whole-file removal counts")
    ap.add_argument("--audit", type=int, default=0, metavar="N", help="print N whole-file removals with evidence")
    ap.add_argument("--repick", action="store_true", help="check the labels' indices against the picking rule")
    args = ap.parse_args()
    try:
        if not args.data.exists():
            raise UsageError(f"{args.data} does not exist; pass --data PATH (a ShareGPT json/jsonl file)")
        records, labels = read_records(str(args.data)), load_labels(args.labels)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.repick:
        picks = pick_for_labelling(records)
        same = picks == {lab["index"]: lab["pick"] for lab in labels}
        print(f"picking rule on this file: {len(picks)} indices, {'equal to' if same else 'DIFFERENT from'} the labels'")
    pairs, missing = match(labels, records)
    print(f"{len(labels)} hand labels; {len(pairs)} scored; {missing}")
    seeded = [p for p in pairs if p[0]["pick"] == "seeded"]
    positives = sum(lab["code"] or lab["math"] for lab, _ in seeded)
    for title, subset in ((f"seeded sample ({len(seeded)}, {positives} code or math)", seeded),
                          (f"seeded + hard cases ({len(pairs)})", pairs)):
        print(f"\n{title}: should be removed = code or math")
        for name, rule in RULES.items():
            print(f"  {name:10s} {scores(subset, rule)}")
    print(per_label(pairs))
    if args.show:
        show(pairs, args.show, args.limit)
    if not args.no_counts:
        removal_counts(records, args.audit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
