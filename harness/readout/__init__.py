"""Readout layer: load finished runs, compare them with paired statistics, render reports, gate.

For notebooks: ``load_runs(paths)`` returns the report's numbers as pandas DataFrames
(harness/readout/frames.py).
"""

from harness.readout.frames import Results, load_runs

__all__ = ["Results", "load_runs"]
