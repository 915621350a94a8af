"""Run layer: the runner (plan -> generate -> score -> summarize -> report) and the embedded model."""
