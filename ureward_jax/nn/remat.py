"""Rematerialisation policies by name, over the `checkpoint_name` tags that the layers set."""

from __future__ import annotations

import flax.linen as nn
import jax

from ureward_jax.errors import UserError

# Tags set in the layers: the layer input and the outputs of the big matmuls.
TAGS = ("layer_input", "query_proj", "key_proj", "value_proj", "attention_out", "mlp_hidden", "mlp_out")

POLICIES = {
    # Recompute everything in the backward pass: least memory.
    "full": jax.checkpoint_policies.nothing_saveable,
    # Keep the matmul outputs that do not depend on the batch (weights-only products); recompute the rest.
    "minimal": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "save_qkv_proj": jax.checkpoint_policies.save_only_these_names("query_proj", "key_proj", "value_proj"),
    "save_dot_except_mlp": jax.checkpoint_policies.save_only_these_names(
        "query_proj", "key_proj", "value_proj", "attention_out"),
    "save_all": jax.checkpoint_policies.everything_saveable,
}


def remat_policy(name: str):
  """The `jax.checkpoint` policy for `name`; "none" means no rematerialisation (returns None)."""
  if name == "none":
    return None
  if name not in POLICIES:
    raise UserError(f"unknown remat policy {name!r}; choose one of {('none',) + tuple(POLICIES)}")
  return POLICIES[name]


def remat(module: type[nn.Module], policy: str, static_argnums: tuple[int, ...] = (),
          scanned: bool = False) -> type[nn.Module]:
  """`module` rematerialised in the backward pass with the named policy; unchanged for "none". `static_argnums`:
  the positions of `__call__`'s Python arguments (a frame count, a train flag), `self` being 0.

  `scanned`: the layer runs as the body of `nn.scan`. Outside a scan the recomputation is fenced off with an
  optimisation barrier; without it XLA merges the backward's recomputation with the forward (common-subexpression
  elimination) and keeps every activation alive, so the remat saves nothing. A scan's loop already keeps them apart
  and needs no barrier (MaxText's rule too: `prevent_cse=not scan_layers`).
  """
  if policy == "none":
    return module
  return nn.remat(module, policy=remat_policy(policy), prevent_cse=not scanned, static_argnums=static_argnums)
