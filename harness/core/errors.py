"""Exceptions that the CLI turns into one-line messages.

``UsageError`` is a user's mistake (bad flag, missing checkpoint, malformed
file): exit 2, no traceback, raised before expensive work where possible.
``EngineError`` means an adapter died mid-run (engine OOM, server gone): the
run stops with exit 1 and everything already journaled stays for resume.
"""

from __future__ import annotations


class UsageError(Exception):
    """A user's mistake. The message says what was wrong and how to fix it."""


class EngineError(Exception):
    """The inference engine or server is gone; finished work is kept."""
