"""Judging with UnifiedReward: the official prompts, answer parsers, and scoring of pairs and points."""

from ureward_jax.reward.inputs import BadInput, InputOptions
from ureward_jax.reward.parsing import parse_pairwise, parse_pointwise
from ureward_jax.reward.scoring import Judge

__all__ = ["BadInput", "InputOptions", "Judge", "parse_pairwise", "parse_pointwise"]
