"""Integrations with training frameworks.

* :mod:`rlhf_audit_kit.integrations.transformers`: ``AuditCallback``, a ``transformers.TrainerCallback``
  that records a run (every TRL trainer: DPO, GRPO, RLOO/PPO, Reward, SFT, KTO) while it trains.
  Needs the ``train`` extra (``pip install "rlhf-audit-kit[train]"``).
"""
