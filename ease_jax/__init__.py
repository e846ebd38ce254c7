"""ease-jax: federated multimodal unlearning for CLIP with LoRA adapters, in JAX/Flax."""

__version__ = "0.1.0"
