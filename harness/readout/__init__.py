"""Readout layer: load finished runs, compare them with paired statistics, render reports, gate."""
