"""Every strategy's stage lists, pinned to the definitions of Dong et al. 2023."""

from __future__ import annotations

import pytest

from harness.core.errors import UsageError
from harness.core.records import Message
from harness.train import strategies as S
from harness.train.data import Conversation


def _src(name: str, n: int) -> list[Conversation]:
    return [Conversation(f"{name}:{i}", name, (Message("user", f"{name} q{i}"), Message("assistant", f"a{i}")))
            for i in range(n)]


@pytest.fixture()
def sources():
    return {"math": _src("math", 40), "code": _src("code", 20), "general": _src("general", 30)}


def test_single_and_multi_task(sources):
    (st,) = S.build("single", sources, source="code")
    assert st.counts() == {"code": 20}
    (mt,) = S.build("multi_task", sources)
    assert mt.counts() == {"math": 40, "code": 20, "general": 30}
    assert mt.examples == tuple(sources["math"] + sources["code"] + sources["general"])


def test_sequential_paper_order_and_custom_order(sources):
    stages = S.build("sequential", sources)
    assert [s.name for s in stages] == ["code", "math", "general"]
    assert [s.counts() for s in stages] == [{"code": 20}, {"math": 40}, {"general": 30}]
    assert [s.name for s in S.build("sequential", sources, order=("general", "math"))] == ["general", "math"]
    with pytest.raises(UsageError, match="needs sources"):
        S.build("sequential", sources, order=("code", "poetry"))


def test_mixed_sequential(sources):
    first, second = S.build("mixed_sequential", sources)
    assert first.counts() == {"math": 40, "code": 20} and second.counts() == {"general": 30}


def test_dmt_stage_two_replays_round_k_n(sources):
    for k in (1, 1 / 4, 1 / 16, 1 / 64, 1 / 256):
        first, second = S.build("dmt", sources, k=k)
        assert first == S.build("mixed_sequential", sources)[0]
        counts = second.counts()
        assert counts["general"] == 30
        assert counts.get("math", 0) == round(k * 40) and counts.get("code", 0) == round(k * 20)
    assert S.build("dmt", sources, k=0.25)[1].counts() == {"general": 30, "math": 10, "code": 5}


def test_dmt_k0_is_exactly_mixed_sequential(sources):
    assert S.build("dmt", sources, k=0) == S.build("mixed_sequential", sources)


def test_dmt_rejects_k_outside_unit_interval(sources):
    for k in (-0.1, 1.5):
        with pytest.raises(UsageError, match=r"k must be in \[0, 1\]"):
            S.build("dmt", sources, k=k)


def test_fractions_scale_sources_first(sources):
    (mt,) = S.build("multi_task", sources, fractions={"math": 0.25, "code": 0.5})
    assert mt.counts() == {"math": 10, "code": 10, "general": 30}
    with pytest.raises(UsageError, match="unknown sources"):
        S.build("multi_task", sources, fractions={"poetry": 0.5})


def test_custom_stages(sources):
    stages = S.build("custom", sources, stages=[["math", "code@0.5"], ["general", "math@0.25"]])
    assert [s.counts() for s in stages] == [{"math": 40, "code": 10}, {"general": 30, "math": 10}]
    assert [s.name for s in stages] == ["math+code@0.5", "general+math@0.25"]


def test_hashes_depend_on_content_only(sources):
    a = S.build("sequential", sources)
    b = S.build("sequential", {k: list(v) for k, v in sources.items()})
    assert [s.sha256 for s in a] == [s.sha256 for s in b]
    assert len({s.sha256 for s in a}) == 3
    assert S.build("dmt", sources, k=1, seed=1)[1].sha256 == S.build("dmt", sources, k=1, seed=2)[1].sha256
    assert S.build("dmt", sources, k=0.5, seed=1)[1].sha256 != S.build("dmt", sources, k=0.5, seed=2)[1].sha256


def test_unknown_strategy(sources):
    with pytest.raises(UsageError, match="unknown strategy 'dmtt'; choose from"):
        S.build("dmtt", sources)
