"""Distillation: losses (pure functions), batches from a harvest store, on-policy sampling, and `distill`."""

from stillwatch.distill.losses import full_kd_loss, generalized_jsd, sft_loss, sparse_kd_loss

__all__ = ["full_kd_loss", "generalized_jsd", "sft_loss", "sparse_kd_loss"]
