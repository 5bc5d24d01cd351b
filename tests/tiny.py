"""The tiny run shared by the end-to-end tests: a 2-layer d=32 decoder on a
few hundred easy Countdown-3 problems, batch 8 of 128-token rows. Modules add
their own step counts and schedules after it (later overrides win)."""

TINY_RUN = [
    "config.task.num_validation=16", "config.task.num_test=16",
    "config.model.num_layers=2", "config.model.d_model=32", "config.model.num_heads=2",
    "config.model.num_kv_heads=1", "config.model.d_ff=64", "config.model.max_len=128",
    "config.data.seq_len=128", "config.data.num_workers=1", "config.train.batch_size=8",
    "config.train.eval_batches=1",
    "config.eval.row_buckets=2", "config.eval.kv_buckets=1",  # few engine branches: short compiles
]
