"""The reference study's APR setting at its scale: Countdown-4, 228M decoder
(18 layers, d=1024, 16 heads, 4096 context), batch 256, lr 5e-5 cosine,
19k steps, 500k training problems. For TPU pod slices (FSDP over the slice)."""

from apr_jax.config.loading import sibling

RUNS_ON = "tpu"  # what it is sized for: cpu (a laptop), gpu (one GPU) or tpu (a pod slice)

default = sibling(__file__, "default")


def get_config():
    c = default.get_config()
    c.name = "countdown4_apr_228m"
    c.task.num_inputs = 4
    c.task.max_number = 99
    c.task.min_target = 10
    c.task.max_target = 100
    c.task.num_train = 500_000
    c.task.num_validation = 1000
    c.task.num_test = 1000

    c.trace.kind = "apr"
    c.trace.max_children = 10
    c.trace.beam_size = 10
    c.trace.condition = True

    c.data.vocab_size = 512
    c.data.seq_len = 4096
    c.data.num_workers = 0

    c.model.num_layers = 18
    c.model.d_model = 1024
    c.model.num_heads = 16
    c.model.num_kv_heads = 16
    c.model.d_ff = 2752
    c.model.max_len = 4096
    c.model.tie_embeddings = False
    c.model.param_dtype = "float32"
    c.model.compute_dtype = "bfloat16"
    c.model.remat = "full"

    c.mesh.data = 1
    c.mesh.fsdp = -1
    c.mesh.tensor = 1

    c.train.batch_size = 256
    # Two microbatches of 128 x 4096 per 256-row step: the same schedule and loss
    # with half the activations (`python -m apr_jax.aot` plans the memory per chip).
    c.train.grad_accum = 2
    c.train.steps = 19_000
    c.train.lr = 5e-5
    c.train.warmup_steps = 500
    c.train.min_lr_ratio = 0.0
    c.train.weight_decay = 0.01
    c.train.b2 = 0.95
    c.train.log_every = 50
    c.train.eval_every = 1000
    c.train.eval_batches = 8
    c.train.checkpoint_every = 1000
    c.train.time_limit_minutes = 0.0  # a pod run trains all its steps

    c.eval.num_problems = 1000
    c.eval.max_children = 10
    c.eval.max_rounds = 2
    c.eval.tokens_per_thread = 4096
    c.eval.batch_problems = 256
    c.eval.lanes = (
        352  # 22 per v4-32 batch shard: two samples of 11 live threads each (memory per chip: aot --step=engine)
    )
    return c
