"""The training stages: the judge head and losses, one training loop, and the stages built on it.

:mod:`.trainer` (the :class:`~.trainer.Trainer` recipe: set-up, loop, evaluation, save and resume)
runs on :mod:`.backends` (plain PyTorch or DeepSpeed), :mod:`.batches` and :mod:`.checkpoints`;
:mod:`.stages` turns pretrain, finetune and distill into jobs for it and scores the teachers.
"""
