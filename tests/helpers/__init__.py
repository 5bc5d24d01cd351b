"""What the tests share: the tiny model and runs, the toy RL setting, CPU
flags, a fake TPU slice, a local multi-process cluster, the reference
engine loop and the repository's paths."""
