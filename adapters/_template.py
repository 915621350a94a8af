"""The chat-template rule shared by the HF and vLLM adapters.

A checkpoint is prompted with its own chat template (or ``--chat-template``);
a chat-mode task on a checkpoint without one is a usage error, never a
template guessed from the model's name. Its own module so that ``hf.py`` and
``vllm.py`` need nothing from the package ``__init__``, which imports them.
"""

from __future__ import annotations

from typing import Any

from harness.core.errors import UsageError


def resolve_chat_template(tokenizer: Any, override: str | None, target: str, needs_chat: bool) -> str | None:
    """The checkpoint's own chat template (or ``--chat-template``), set on the tokenizer;
    a chat-mode task with none is a usage error, never a template guessed from the name."""
    if override is not None:
        tokenizer.chat_template = override
    if needs_chat and not tokenizer.chat_template:
        raise UsageError(f"the tokenizer of {target} has no chat template and a chat-mode task was chosen; "
                         "pass one with --chat-template FILE.jinja (or use --humaneval-mode completion)")
    return tokenizer.chat_template
