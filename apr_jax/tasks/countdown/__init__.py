"""Countdown: problems and their oracle difficulty, the exact solver, the
search and its SoS+/APR traces, rendering, the verifier, the TFDS builder,
streamed traces, failure analysis, and the task behind the interface."""
