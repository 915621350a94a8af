"""sft-harness: evaluation-first benchmark harness for SFT checkpoints."""

__version__ = "0.1.0"

# Version of the on-disk run format (config.json, journals, samples, summary).
# Runs written with another format are refused rather than misread.
RUN_FORMAT = 1
