"""apr_jax: Adaptive Parallel Reasoning trained and decoded end to end in JAX."""

__version__ = "0.1.0"
