"""`harness check`: synthetic runs whose per-item scores make the right answer known."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest
from test_report_synth import MT_SPECS, binary_scores, gsm8k, make_run

from harness.cli import main
from harness.core.stats import mcnemar_exact_one_sided
from harness.readout.compare import load_run
from harness.readout.gate import evaluate
from harness.tasks.gsm8k import GSM8K

BASE = [1] * 60 + [0] * 140  # 30% on 200 items


def check(capsys, run, base, *extra):
    code = main(["check", str(run), "--baseline", str(base), *extra])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_identical_pair_passes(tmp_path, capsys):
    base = make_run(tmp_path, "base", gsm8k(BASE))
    same = make_run(tmp_path, "same", gsm8k(BASE))
    code, out, _ = check(capsys, same, base)
    assert code == 0
    assert "PASS" in out and "no drop" in out


def test_large_real_drop_fails_with_numbers(tmp_path, capsys):
    base = make_run(tmp_path, "base", gsm8k(BASE))
    new = make_run(tmp_path, "new", gsm8k([0] * 30 + [1] * 30 + [0] * 140))  # 30 items right -> wrong
    code, out, _ = check(capsys, new, base)
    assert code == 1
    line = next(x for x in out.splitlines() if x.startswith("REGRESSION"))
    assert "gsm8k strict" in line and "30.0 -> 15.0" in line and "30 worse, 0 better" in line
    assert "drop 15.0 points" in line and "p<0.001" in line and "95% CI [10.7, 20.6]" in line
    assert "FAIL" in out


def test_small_drop_inside_noise_passes_and_says_not_significant(tmp_path, capsys):
    base = make_run(tmp_path, "base", gsm8k(BASE))
    # 5 right -> wrong, 1 wrong -> right: a 2-point drop, above the allowed 1.0, but noise
    new = BASE.copy()
    new[0:5] = [0] * 5
    new[100] = 1
    code, out, _ = check(capsys, make_run(tmp_path, "new", gsm8k(new)), base)
    assert code == 0
    assert "not significant" in out and "drop 2.0 points" in out
    assert f"p={mcnemar_exact_one_sided(5, 1):.3f} for any drop" in out


def test_significant_drop_within_the_allowed_margin_passes(tmp_path, capsys):
    # 3 points drop, certain (6 of 200 items flip, none back), but 10 points are allowed
    new = BASE.copy()
    new[0:6] = [0] * 6
    base = make_run(tmp_path, "base", gsm8k(BASE))
    code, out, _ = check(capsys, make_run(tmp_path, "new", gsm8k(new)), base, "--max-drop", "gsm8k=10")
    assert code == 0
    code, out, _ = check(capsys, make_run(tmp_path, "new0", gsm8k(new)), base, "--max-drop", "gsm8k=0")
    assert code == 1  # with no margin the same drop is a regression


def test_exact_mcnemar_keeps_the_gate_conservative_on_few_discordant_items(tmp_path, capsys):
    # 3 right -> wrong, none back: Tango's asymptotic z = sqrt(3) has p = 0.042, but the exact
    # one-sided McNemar p is 1/8; the gate must not fail on it.
    new = BASE.copy()
    new[0:3] = [0] * 3
    base = make_run(tmp_path, "base", gsm8k(BASE))
    code, out, _ = check(capsys, make_run(tmp_path, "new", gsm8k(new)), base, "--max-drop", "gsm8k=0")
    assert code == 0 and "p=0.125 for any drop" in out


def test_mismatched_item_sets_are_refused(tmp_path, capsys):
    base = make_run(tmp_path, "base", gsm8k(BASE))
    fewer = make_run(tmp_path, "fewer", gsm8k(BASE[:150]))
    code, out, err = check(capsys, fewer, base)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "different item sets" in err and "Traceback" not in err


def test_different_task_versions_are_refused(tmp_path, capsys):
    base = make_run(tmp_path, "base", gsm8k(BASE))
    other = make_run(tmp_path, "other", gsm8k(BASE, version="2"))
    code, _, err = check(capsys, other, base)
    assert code == 2 and "task version" in err


@pytest.mark.parametrize("max_drop,message", [("humaneval=2.0", "unknown metric humaneval"),
                                              ("gsm8k.exact=1", "unknown metric gsm8k.exact"),
                                              ("gsm8k=-1", "points >= 0"), ("gsm8k", "TASK=POINTS"),
                                              ("gsm8k=abc", "TASK=POINTS")])
def test_bad_max_drop_exits_2(tmp_path, capsys, max_drop, message):
    base = make_run(tmp_path, "base", gsm8k(BASE))
    code, _, err = check(capsys, base, base, "--max-drop", max_drop)
    assert code == 2 and message in err


@pytest.mark.parametrize("broken", ["no summary", "bad json", "format"])
def test_broken_run_directories_exit_2(tmp_path, capsys, broken):
    base = make_run(tmp_path, "base", gsm8k(BASE))
    new = make_run(tmp_path, "new", gsm8k(BASE))
    if broken == "no summary":
        (new / "summary.json").unlink()
        expected = "did not finish"
    elif broken == "bad json":
        (new / "summary.json").write_text("{not json")
        expected = "corrupt"
    else:
        cfg = json.loads((new / "config.json").read_text())
        (new / "config.json").write_text(json.dumps({**cfg, "format": 99}))
        expected = "written by harness format 99; this harness reads format 1: rerun it or use sft-harness=="
    code, _, err = check(capsys, new, base)
    assert code == 2 and expected in err


def _mt(root, name, scores):
    return make_run(root, name, {"mt_bench": {"scores": {f"m{i}": {"score": s} for i, s in enumerate(scores)},
                                              "specs": MT_SPECS}})


def test_continuous_scores_use_the_paired_bootstrap(tmp_path, capsys):
    rng = random.Random(7)
    base_scores = [rng.uniform(2, 9) for _ in range(80)]
    base = _mt(tmp_path, "base", base_scores)
    # every answer rated one point lower, with rating noise: a real 1.0 drop > 0.2 allowed
    worse = _mt(tmp_path, "worse", [s - 1 + rng.gauss(0, 0.3) for s in base_scores])
    code, out, _ = check(capsys, worse, base)
    assert code == 1 and "mt_bench score" in out and "paired bootstrap" in out
    # 0.1 lower on average with the same noise: inside the allowed 0.2
    close = _mt(tmp_path, "close", [s - 0.1 + rng.gauss(0, 0.3) for s in base_scores])
    code, out, _ = check(capsys, close, base)
    assert code == 0 and "not significant" in out


def test_defaults_and_errored_items(tmp_path):
    base = load_run(make_run(tmp_path, "base", gsm8k(BASE)))
    scores = binary_scores(BASE)
    scores["q000"] = None  # an errored item: not scored, left out of the pairing, warned about
    run = load_run(make_run(tmp_path, "new", {"gsm8k": {"scores": scores}}))
    verdicts, notes = evaluate(run, base, None, 0.05)
    assert verdicts[0].max_drop == GSM8K.default_max_drop and verdicts[0].paired == 199
    assert any("1 errored items in the run vs 0" in n for n in notes)


def test_false_alarm_rate_at_the_margin_is_at_most_alpha():
    """Simulate runs whose true drop equals the allowed margin: the gate fires at most ~alpha of the time."""
    from harness.readout.gate import _judge_binary

    rng = random.Random(11)
    n, fired, sims = 300, 0, 400
    for _ in range(sims):
        base = [int(rng.random() < 0.5) for _ in range(n)]
        # 6% of items flip right -> wrong, 4% wrong -> right: true drop 2 points = the margin
        new = [0 if (b and rng.random() < 0.12) else 1 if (not b and rng.random() < 0.08) else b for b in base]
        v = _judge_binary([float(b) for b in base], [float(x) for x in new], 1.0, 100.0, 2.0, 0.05,
                          dict(task="t", metric="m", scale=100.0, baseline=0, value=0, max_drop=2.0, paired=n))
        fired += v.regression
    assert fired / sims <= 0.05 + 3 * (0.05 * 0.95 / sims) ** 0.5


def test_preflight_refuses_a_baseline_on_other_items_before_the_model_loads(tmp_path):
    from harness.core.errors import UsageError
    from harness.readout.gate import preflight

    base = make_run(tmp_path, "base", gsm8k(BASE))
    ids = sorted(binary_scores(BASE))
    preflight(base, {"gsm8k": ("1", ids), "humaneval": ("1", ["h0"])})  # same items; a task it lacks is fine
    with pytest.raises(UsageError, match="other items"):
        preflight(base, {"gsm8k": ("1", ids[:50])})
    with pytest.raises(UsageError, match="version 1, this run would use version 2"):
        preflight(base, {"gsm8k": ("2", ids)})


def test_a_single_paired_item_is_no_evidence(tmp_path, capsys):
    base = _mt(tmp_path, "base", [8.0])
    worse = _mt(tmp_path, "worse", [2.0])
    code, out, _ = check(capsys, worse, base)
    assert code == 0 and "p=1.000 for drop > 0.20" in out


# -- issue 17: multiplicity (Holm) and power ---------------------------------------------------------

def _five_flips(n=200):
    new = BASE[:n].copy() if n <= len(BASE) else [1] * 60 + [0] * (n - 60)
    new[0:5] = [0] * 5  # 5 right -> wrong, none back: exact one-sided p = 1/32 = 0.031
    return new


def test_one_metric_with_five_flips_fails_at_alpha(tmp_path, capsys):
    base = make_run(tmp_path, "base", gsm8k(BASE))
    code, out, _ = check(capsys, make_run(tmp_path, "new", gsm8k(_five_flips())), base, "--max-drop", "gsm8k=0")
    assert code == 1 and "alpha 0.05" in out


def test_holm_controls_the_family_of_gated_metrics(tmp_path, capsys):
    base = make_run(tmp_path, "base", gsm8k(BASE))
    new = make_run(tmp_path, "new", gsm8k(_five_flips()))
    # strict and flexible both gated: each p = 0.031 alone, but Holm tests the smaller at 0.05 / 2
    code, out, _ = check(capsys, new, base, "--max-drop", "gsm8k=0,gsm8k.flexible=0")
    assert code == 0, out
    assert sum(x.startswith("ok ") and "tested at alpha 0.025" in x for x in out.splitlines()) == 2
    assert "Holm" in out
    code, out, _ = check(capsys, new, base, "--max-drop", "gsm8k=0,gsm8k.flexible=0", "--no-holm")
    assert code == 1 and "alpha 0.05 each" in out and "Holm" not in out


def test_gate_states_the_detectable_drop_and_warns_up_front_when_the_margin_is_below_it(tmp_path, capsys):
    items = [1] * 80 + [0] * 84  # 164 items, as HumanEval
    base = make_run(tmp_path, "base", gsm8k(items))
    code, out, _ = check(capsys, make_run(tmp_path, "same", gsm8k(items)), base, "--max-drop", "gsm8k=1.0")
    assert code == 0
    lines = out.splitlines()
    warn = next(i for i, x in enumerate(lines) if x.startswith("warning:") and "detect" in x)
    verdict = next(i for i, x in enumerate(lines) if x.startswith("ok "))
    assert warn < verdict  # up front, before any verdict
    assert "164 paired items" in lines[warn] and "1.0 points" in lines[warn] and "3.0 points" in lines[warn]
    assert "not evidence" in lines[warn]
    assert "80% power" in lines[verdict]


def test_no_power_warning_when_the_items_can_resolve_the_margin(tmp_path, capsys):
    items = [1] * 600 + [0] * 1400
    base = make_run(tmp_path, "base", gsm8k(items))
    code, out, _ = check(capsys, make_run(tmp_path, "same", gsm8k(items)), base, "--max-drop", "gsm8k=1.0")
    assert code == 0 and not any(x.startswith("warning:") for x in out.splitlines())


def test_a_held_out_probe_keeps_its_allowed_drop_where_no_study_was_parsed():
    """`harness check` on a study's stage runs, in a process that never parsed the study file."""
    code = ("from harness.readout.gate import default_max_drop; from harness.tasks.probes import Probe; "
            "assert default_max_drop('holdout_math') == Probe.default_max_drop > 0, default_max_drop('holdout_math'); "
            "assert default_max_drop('no_such_task') == 0.0")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
