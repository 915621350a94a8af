"""Core layer: frozen records, errors, files (journals, atomic writes), statistics,
model identity and secret redaction. Imports nothing from any other harness layer."""
