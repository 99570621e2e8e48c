"""Host wrappers with PyTorch-layout numpy I/O; importing the package registers each family's checkpoint loader."""

from ureward_jax.runners import clip_text, llava, unet, vae  # noqa: F401
