"""The readers take the plot axes from run metadata (``metadata["axes"]``, written by ``harness study``)."""

from __future__ import annotations

from types import SimpleNamespace

from harness.readout.compare import run_axes
from harness.readout.plots import composition_params, series_key


def _run(label: str, **meta) -> SimpleNamespace:
    return SimpleNamespace(label=label, metadata=meta)


def test_declared_x_axes_decide_which_composition_plots_exist():
    dmt = _run("dmt-k0.25", strategy="dmt", k=0.25, fraction=1.0, stage=2,
               axes={"x": ["k"], "series": ["strategy", "stage"]})
    mixed = _run("mixed_sequential", strategy="mixed_sequential", k=None, fraction=1.0, stage=2,
                 axes={"x": [], "series": ["strategy", "stage"]})
    # fraction is 1.0 on every run, but no run declares it an axis: no fraction plot
    assert composition_params(SimpleNamespace(runs=[dmt, mixed])) == ["k"]
    scaled = _run("dmt-k0.25-f0.5", strategy="dmt", k=0.25, fraction=0.5, stage=2,
                  axes={"x": ["k", "fraction"], "series": ["strategy"]})
    assert composition_params(SimpleNamespace(runs=[dmt, scaled])) == ["k", "fraction"]


def test_a_new_axis_needs_no_reader_change():
    run = _run("x", strategy="mystery", temperature_mix=0.5, axes={"x": ["temperature_mix"], "series": ["strategy"]})
    assert composition_params(SimpleNamespace(runs=[run])) == ["temperature_mix"]
    assert series_key(run, "temperature_mix") == "mystery"


def test_series_split_by_the_other_x_axes():
    scaled = _run("dmt-k0.25-f0.5", strategy="dmt", k=0.25, fraction=0.5, stage=2,
                  axes={"x": ["k", "fraction"], "series": ["strategy", "stage"]})
    assert series_key(scaled, "k") == "dmt 2 fraction=1/2"
    assert series_key(scaled, "fraction") == "dmt 2 k=1/4"


def test_runs_without_declared_axes_keep_the_old_fields():
    old = _run("old", strategy="dmt", source=None, k=0.5, fraction=1.0, stage=1)
    assert run_axes(old, "x") == ("k", "fraction") and run_axes(old, "series") == ("strategy", "source", "stage")
    assert composition_params(SimpleNamespace(runs=[old])) == ["k", "fraction"]


def test_report_columns_include_any_declared_axis():
    from harness.readout.model import metadata_columns

    custom = _run("custom-general_first", strategy="custom", custom="general_first", k=None, fraction=1.0, stage=2,
                  axes={"x": [], "series": ["strategy", "custom", "stage"]})
    dmt = _run("dmt-k1", strategy="dmt", k=1.0, fraction=1.0, stage=2, axes={"x": ["k"], "series": ["strategy"]})
    assert metadata_columns(SimpleNamespace(runs=[custom, dmt])) == ["strategy", "k", "fraction", "stage", "custom"]
    old = _run("old", strategy="dmt", k=0.5)
    assert metadata_columns(SimpleNamespace(runs=[old])) == ["strategy", "k"]
