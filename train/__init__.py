"""Training: SFT checkpoints under the data-composition strategies of Dong et al. 2023.

``data`` loads sources into conversations, ``strategies`` turns them into
stages, ``sft`` trains the stages with transformers' Trainer, and ``study``
runs a declarative grid end to end (``harness study STUDY.toml``). Nothing
here imports torch at module import time except ``sft``'s training functions.
"""
