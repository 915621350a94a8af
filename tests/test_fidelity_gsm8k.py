"""GSM8K agreement checks on real text: the 1,319 reference solutions (docs/fidelity.md)."""

from __future__ import annotations

from harness.core.records import Completion, Example
from harness.tasks.gsm8k import FLEXIBLE_RE, extract_flexible, gold_answer, load_rows, score_one


def lmeval_flexible(text: str) -> str | None:
    """lm-eval's flexible-extract: the last regex match, whatever it holds (group_select -1)."""
    matches = FLEXIBLE_RE.findall(text)
    if not matches:
        return None
    return next(g for g in matches[-1] if g).strip()


def test_reference_solutions_score_full_marks_and_match_lm_eval():
    rows = load_rows(None, "test")
    assert len(rows) == 1319
    for i, row in enumerate(rows):
        res = score_one(Example(id=str(i), data={"gold": gold_answer(row["answer"])}),
                        Completion(id=str(i), texts=(row["answer"],)))
        assert res.scores == {"strict": 1.0, "flexible": 1.0}, i
        # on well-formed text (last match has a digit) our flexible extraction is lm-eval's
        assert extract_flexible(row["answer"]) == lmeval_flexible(row["answer"]), i


def test_the_only_flexible_differences_are_digitless_last_matches():
    for text in ["so $$\\boxed{18}$$", "#### 18\n\nThat is all...", "The answer is 42, ..."]:
        theirs, ours = lmeval_flexible(text), extract_flexible(text)
        assert theirs != ours and not any(c.isdigit() for c in theirs) and any(c.isdigit() for c in ours)
