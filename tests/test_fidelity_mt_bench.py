"""MT-Bench's headline score is FastChat's show_result average: all valid judgment rows, pooled."""

from __future__ import annotations

import pytest

from harness.core.records import Result
from harness.tasks import mt_bench as mt


def _item(qid: str, turn1: float | None, turn2: float | None, category: str = "writing") -> Result:
    """A question as MTBench._result records it: per-turn ratings, their mean and how many turns were judged."""
    turns = {k: v for k, v in (("turn1", turn1), ("turn2", turn2)) if v is not None}
    scores = dict(turns)
    if turns:
        scores |= {"score": sum(turns.values()) / len(turns), "score_turns": float(len(turns))}
    return Result(id=qid, scores=scores, info={"category": category, "repeats": 1, "judge_errors": 2 - len(turns),
                                               "turn_errors": {}})


def fastchat_average(rows: list[tuple[int, float]]) -> float:
    """show_result.py: drop score == -1 rows, then the mean of every remaining row, turns pooled."""
    kept = [score for _, score in rows if score != -1]
    return sum(kept) / len(kept)


def test_one_failed_turn_does_not_double_the_other():
    results = [_item("mt_bench/81", 10.0, 2.0), _item("mt_bench/82", 4.0, None)]
    agg = mt.MTBench().aggregate(results)
    expected = fastchat_average([(1, 10.0), (2, 2.0), (1, 4.0), (2, -1)])
    assert expected == pytest.approx(16 / 3)
    assert agg["score"] == pytest.approx(expected)  # 5.33; the per-question mean was 5.00
    assert agg["question_mean"] == pytest.approx(5.0)  # kept, named as what it is
    assert agg["turn1"] == pytest.approx(7.0) and agg["turn2"] == pytest.approx(2.0)


def test_pooled_equals_the_per_question_mean_when_every_turn_is_judged():
    results = [_item(f"q{i}", float(i % 9 + 1), float((i * 3) % 9 + 1)) for i in range(20)]
    agg = mt.MTBench().aggregate(results)
    assert agg["score"] == pytest.approx(agg["question_mean"])


def test_categories_pool_rows_too():
    results = [_item("a", 10.0, 2.0, "math"), _item("b", 4.0, None, "math"), _item("c", 8.0, 8.0, "coding")]
    agg = mt.MTBench().aggregate(results)
    assert agg["category/math"] == pytest.approx(16 / 3) and agg["category/coding"] == 8.0


def test_metric_specs_pool_rows_within_questions():
    task = mt.MTBench()
    score = next(m for m in task.metrics if m.name == "score")
    assert score.primary and score.weight == "score_turns" and score.unit == "question"
    question_mean = next(m for m in task.metrics if m.name == "question_mean")
    assert question_mean.key == "score" and question_mean.weight is None and not question_mean.primary
