"""UnifiedReward in JAX: the LLaVA-OneVision reward model, scoring, preference pairs and DPO."""

from ureward_jax.pretrained import load

__all__ = ["load"]
