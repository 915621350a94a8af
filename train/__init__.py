"""Training: SFT checkpoints under the data-composition strategies of Dong et al. 2023.

``data`` loads sources into conversations (``classify`` filters the general
one), ``strategies`` turns them into stages, ``sft`` trains the stages with
transformers' Trainer (hyperparameters in ``config``, chat templates in
``templates``), ``study_file`` reads and type-checks a study file
(``schema``) and ``study`` runs the grid end to end (``harness study
STUDY.toml``). Nothing here imports torch at module import time; ``sft``'s
training functions and ``tiny`` import it when called.
"""
