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


def test_dmt_stage_two_replays_k_n_rounded_half_up_and_never_zero(sources):
    for k in (1, 1 / 4, 1 / 16, 1 / 64, 1 / 256):
        first, second = S.build("dmt", sources, k=k)
        assert first == S.build("mixed_sequential", sources)[0]
        counts = second.counts()
        assert counts["general"] == 30
        assert counts["math"] == max(1, int(k * 40 + 0.5)) and counts["code"] == max(1, int(k * 20 + 0.5))
    assert S.build("dmt", sources, k=0.25)[1].counts() == {"general": 30, "math": 10, "code": 5}


def test_dmt_rounds_half_up_not_to_even():
    """round() is banker's rounding: round(2.5) == 2, round(0.5) == 0. One rule: half up."""
    srcs = {"math": _src("math", 10), "code": _src("code", 2), "general": _src("general", 3)}
    assert S.build("dmt", srcs, k=0.25)[1].counts() == {"general": 3, "math": 3, "code": 1}  # 2.5 -> 3, 0.5 -> 1
    assert S.proportion(10, 0.25) == 3 and S.proportion(2, 0.25) == 1 and S.proportion(50, 0.29) == 15


def test_a_nonzero_k_never_silently_becomes_mixed_sequential(sources):
    """k x n below one half (k = 1/256 of 20 code examples) still replays one example, and says so."""
    stages = S.build("dmt", sources, k=1 / 256)
    assert stages != S.build("mixed_sequential", sources)
    assert stages[1].counts() == {"general": 30, "math": 1, "code": 1}
    notes = " ".join(stages[1].notes)
    assert "code" in notes and "0.078" in notes and "replaying 1" in notes
    assert not S.build("dmt", sources, k=0.25)[1].notes and not S.build("dmt", sources, k=0)[1].notes


def test_proportion_of_an_empty_source_or_zero_is_zero():
    assert S.proportion(0, 0.5) == 0 and S.proportion(40, 0) == 0 and S.proportion(40, 1) == 40


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


def test_registry_declares_parameters_and_expands_grid_points():
    grid = {"k": [0.0, 0.25], "general": "general", "order": ("code", "math"), "single_sources": ("math", "code"),
            "custom": {"general_first": [["general"], ["math"]]}}
    assert set(S.REGISTRY) == {"single", "multi_task", "sequential", "mixed_sequential", "dmt", "custom"}
    dmt = S.variants("dmt", grid)
    assert [v.label for v in dmt] == ["dmt-k0", "dmt-k0.25"]
    assert dmt[1].params == {"k": 0.25, "general": "general"} and dmt[1].meta == {"k": 0.25}
    assert dmt[1].axes == {"x": ("k",), "series": ("strategy",)}
    single = S.variants("single", grid)
    assert [(v.label, v.meta) for v in single] == [("single-math", {"source": "math"}), ("single-code", {"source": "code"})]
    assert single[0].axes == {"x": (), "series": ("strategy", "source")}
    (cu,) = S.variants("custom", grid)
    assert cu.label == "custom-general_first" and cu.meta == {"custom": "general_first"}
    assert cu.params == {"stages": [["general"], ["math"]]}
    assert [v.params for v in S.variants("sequential", grid)] == [{"order": ("code", "math")}]
    assert [v.params for v in S.variants("multi_task", grid)] == [{}]


def test_build_refuses_a_parameter_the_strategy_does_not_take(sources):
    with pytest.raises(UsageError, match="strategy 'multi_task' takes no parameters; got k"):
        S.build("multi_task", sources, k=0.5)
    with pytest.raises(UsageError, match="strategy 'dmt' takes general, k; got order"):
        S.build("dmt", sources, k=0.5, order=("code",))


def test_a_new_strategy_is_one_decorated_function(sources):
    @S.strategy("general_only_twice", S.Param("general", "general"))
    def twice(srcs, general="general"):  # no docstring: registration must not need one
        return [S.make_stage(general, srcs[general])] * 2

    try:
        (v,) = S.variants("general_only_twice", {"general": "general"})
        assert [st.counts() for st in S.build(v.strategy, sources, **v.params)] == [{"general": 30}] * 2
    finally:
        del S.REGISTRY["general_only_twice"]


def test_fraction_scaling_rounds_by_the_same_rule_and_notes_the_minimum(sources):
    (mt,) = S.build("multi_task", sources, fractions={"math": 1 / 256, "code": 0.125})  # 0.156 -> 1, 2.5 -> 3
    assert mt.counts() == {"math": 1, "code": 3, "general": 30}
    assert any("fraction 0.00390625 of math" in n and "keeping 1" in n for n in mt.notes)


def test_each_strategy_declares_which_grid_values_name_sources():
    grid = {"order": ("code", "math"), "general": "chat", "single_sources": ("math",),
            "custom": {"a": [["math", "code@0.5"], ["poetry"]]}, "k": [0.5]}
    assert S.named_sources("sequential", grid) == {"code", "math"}
    assert S.named_sources("dmt", grid) == S.named_sources("mixed_sequential", grid) == {"chat"}
    assert S.named_sources("single", grid) == {"math"}
    assert S.named_sources("custom", grid) == {"math", "code", "poetry"}
    assert S.named_sources("multi_task", grid) == set()


def test_custom_fractions_may_be_written_as_fraction_strings(sources):
    (st,) = S.build("custom", sources, stages=[["code@1/4", "math@0.5"]])
    assert st.counts() == {"code": 5, "math": 20}
    (tiny,) = S.build("custom", sources, stages=[["code@1/64"]])  # 20 / 64 = 0.31 -> 1, noted
    assert tiny.counts() == {"code": 1} and "custom code@1/64: 20 x 0.015625" in tiny.notes[0]
    with pytest.raises(UsageError, match="expected 'source' or 'source@fraction'"):
        S.build("custom", sources, stages=[["code@lots"]])
