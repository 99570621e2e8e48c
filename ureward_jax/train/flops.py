"""Analytic model FLOPs of the LLaVA-OneVision steps, and the accelerator peaks that model-FLOPs utilisation divides
by (the diffusion tasks count their UNet's forward with XLA: `tasks.diffusion_dpo.DiffusionDPO.flops`).

XLA's cost analysis counts a scanned layer once, so utilisation comes from the architecture instead: 6 FLOPs per
parameter per token for the forward and backward matmuls, plus causal attention.
"""

from __future__ import annotations

# Dense bf16 peak FLOP/s per device as `jax.Device.device_kind` names it (vendor data sheets; TPU v5p/v4 per chip).
PEAK_FLOPS = {
    "TPU v4": 275e12, "TPU v5": 459e12, "TPU v5p": 459e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12,
    "TPU v6 lite": 918e12, "TPU v6e": 918e12,
    "NVIDIA A100-SXM4-80GB": 312e12, "NVIDIA A100-SXM4-40GB": 312e12, "NVIDIA H100 80GB HBM3": 989e12,
    "NVIDIA H200": 989e12,
}


def peak_flops(device_kind: str) -> float | None:
  """The dense bf16 peak of a device kind, or None when unknown (e.g. CPU): utilisation is then not reported."""
  return PEAK_FLOPS.get(device_kind)


def model_flops_per_step(model, tokens: int, patches: int, length: int) -> float:
  """Training FLOPs of one step over `tokens` text positions (sequences of `length`) and `patches` tower inputs.

  6 · parameters · tokens for the matmuls of both towers, plus causal attention (half of 12 · L · D · T per token);
  `model` is a `LlavaOnevisionConfig`.
  """
  text, vision = model.text, model.vision
  text_params = text.num_hidden_layers * (2 * text.hidden_size * text.num_attention_heads * text.head_dim
                                          + 2 * text.hidden_size * text.num_key_value_heads * text.head_dim
                                          + 3 * text.hidden_size * text.intermediate_size) \
      + text.hidden_size * text.vocab_size
  vision_params = vision.num_hidden_layers * (4 * vision.hidden_size**2 + 2 * vision.hidden_size *
                                              vision.intermediate_size)
  vision_tokens = patches * vision.tokens_per_side**2
  attention = 6 * text.num_hidden_layers * text.num_attention_heads * text.head_dim * length * tokens
  vision_attention = 12 * vision.num_hidden_layers * vision.hidden_size * vision.tokens_per_side**2 * vision_tokens
  return 6 * text_params * tokens + 6 * vision_params * vision_tokens + attention + vision_attention
