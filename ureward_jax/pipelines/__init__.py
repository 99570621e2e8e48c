"""Sampling pipelines built on the runners; importing the package registers each pipeline's checkpoint loader."""

from ureward_jax.pipelines import sdxl, t2v_turbo  # noqa: F401
