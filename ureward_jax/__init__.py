"""UnifiedReward in JAX: the LLaVA-OneVision reward model, scoring, preference pairs and DPO."""

# Importing the runners and pipelines registers every model family's loader, so that `load` reads any folder.
from ureward_jax import pipelines, runners  # noqa: F401
from ureward_jax.pretrained import load

__all__ = ["load"]
