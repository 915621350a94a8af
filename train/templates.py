"""Chat templates for training, by name (``chatml``, ``vicuna``) or from a file.

``vicuna`` is FastChat's vicuna_v1.1 conversation (``fastchat/conversation.py``),
the template Dong et al. 2023 used for LLaMA base models, rendered byte for
byte as FastChat renders it; ``chatml`` is the ``<|im_start|>`` format of
SmolLM2 and most instruct checkpoints. The template a stage was trained with
is saved with its checkpoint, so evaluation renders prompts the same way.
Example::

    tokenizer.chat_template = template_text("vicuna")
"""

from __future__ import annotations

from pathlib import Path

from harness.core.errors import UsageError

CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>' + '\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
# FastChat's vicuna_v1.1 conversation (the paper's template for LLaMA), byte for byte: separator
# style ADD_COLON_TWO with sep " " and sep2 "</s>", i.e. system + " ", then "USER: text " and
# "ASSISTANT: text</s>" with nothing between "</s>" and the next "USER:". BOS is rendered because
# we tokenize without special tokens; FastChat's tokenizer adds it instead.
VICUNA = ("{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}"
          "{% else %}{{ 'A chat between a curious user and an artificial intelligence assistant. The assistant "
          "gives helpful, detailed, and polite answers to the user\\'s questions.' }}{% endif %}{{ ' ' }}"
          "{% for m in messages %}{% if m['role'] == 'user' %}{{ 'USER: ' + m['content'] + ' ' }}"
          "{% elif m['role'] == 'assistant' %}{{ 'ASSISTANT: ' + m['content'] + eos_token }}{% endif %}"
          "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}")
TEMPLATES = {"chatml": CHATML, "vicuna": VICUNA}


def template_text(name: str | None) -> str | None:
    if name is None:
        return None
    if name in TEMPLATES:
        return TEMPLATES[name]
    p = Path(name).expanduser()
    if not p.is_file():
        raise UsageError(f"chat_template {name!r} is neither a named template ({', '.join(TEMPLATES)}) nor a file")
    return p.read_text()
