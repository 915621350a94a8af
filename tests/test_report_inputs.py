"""Reading run directories: samples checked against summary.json, clear messages for
paths that are not runs, labels that cannot break the markdown table (issue 12 items 10, 15, 16)."""

from __future__ import annotations

import json

import pytest
from test_report_synth import gsm8k, make_run

from harness.cli import main
from harness.readout.tables import md_code

BASE = [1] * 12 + [0] * 8


def run_cli(capsys, *argv):
    code = main(list(map(str, argv)))
    out = capsys.readouterr()
    return code, out.out, out.err


def _cut(path, keep: int) -> None:
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:keep]))


@pytest.mark.parametrize("command", ["report", "check"])
def test_samples_cut_at_a_line_boundary_are_refused(tmp_path, capsys, command):
    a = make_run(tmp_path, "a", gsm8k(BASE))
    b = make_run(tmp_path, "b", gsm8k(BASE))
    _cut(b / "gsm8k.samples.jsonl", 5)
    argv = [b, "--baseline", a]
    code, out, err = run_cli(capsys, command, *argv)
    assert code == 2 and "PASS" not in out
    assert "gsm8k.samples.jsonl holds 5 items but summary.json lists 20" in err and err.count("\n") == 1


def test_samples_with_other_item_ids_are_refused(tmp_path, capsys):
    a = make_run(tmp_path, "a", gsm8k(BASE))
    path = a / "gsm8k.samples.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[3]["id"] = "q999"  # same count, one id swapped
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, _, err = run_cli(capsys, "report", a)
    assert code == 2 and "item ids do not match summary.json" in err


def test_a_file_given_as_run_directory_says_so(tmp_path, capsys):
    a = make_run(tmp_path, "a", gsm8k(BASE))
    for command in ("report", "check"):
        code, _, err = run_cli(capsys, command, a / "summary.json", "--baseline", a)
        assert code == 2 and "is a file, not a run directory" in err and "does not exist" not in err


def test_a_directory_that_is_not_a_run_says_so(tmp_path, capsys):
    a = make_run(tmp_path, "a", gsm8k(BASE))
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"name": "some other tool"}))
    for target in (other, tmp_path / "empty"):
        target.mkdir(exist_ok=True)
        for command in ("report", "check"):
            code, _, err = run_cli(capsys, command, target, "--baseline", a)
            assert code == 2 and "not a run directory" in err and "format None" not in err, err


@pytest.mark.parametrize("label", ["two\nlines", "a | b", "back`tick"])
def test_labels_cannot_break_the_markdown_table(tmp_path, capsys, label):
    a = make_run(tmp_path, "a", gsm8k(BASE), label=f"base {label}")
    b = make_run(tmp_path, "b", gsm8k(BASE), label=label)
    code, out, _ = run_cli(capsys, "report", b, "--baseline", a)
    assert code == 0
    table = out.split("\n\n")[1].splitlines()
    assert len(table) == 4  # header, rule, baseline row, run row
    assert len({_cells(line) for line in table}) == 1
    heading = next(line for line in out.splitlines() if line.startswith("## Compared"))
    assert heading.endswith(md_code(f"base {label}")) and "\n" not in heading


def _cells(line: str) -> int:
    """Column separators of a markdown row, escaped pipes not counted."""
    return line.replace("\\|", "").count("|")
