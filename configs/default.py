"""Default: APR on an easy Countdown-3, end to end on a 2-core CPU in ~10 minutes."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "default"
    c.mode = "sft"  # sft | rl
    c.seed = 0

    c.task = ml_collections.ConfigDict()
    c.task.name = "countdown"  # countdown | jsonl_traces (your own traces: configs/arithmetic_traces.py)
    c.task.num_inputs = 3
    c.task.min_number = 1
    c.task.max_number = 20
    c.task.min_target = 10
    c.task.max_target = 50
    c.task.num_train = 8000  # about all the unique solvable problems in these ranges
    c.task.num_validation = 200
    c.task.num_test = 200
    c.task.seed = 0

    c.trace = ml_collections.ConfigDict()
    c.trace.kind = "apr"  # apr | sosp
    c.trace.style = "terse"  # terse | reference
    c.trace.max_children = 4
    c.trace.spawn_prob = 1.0
    c.trace.max_depth = 1  # nesting depth of spawns (1 = children do not spawn)
    c.trace.beam_size = 4  # successors kept per expanded node
    c.trace.max_nodes = 16  # search budget: nodes visited per branch under the root
    c.trace.condition = False  # prefix with child count (apr) / token budget (sosp)
    c.trace.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.dir = "data_cache"  # relative to the current directory unless absolute
    c.data.vocab_size = 96
    c.data.seq_len = 256
    c.data.packing = True
    c.data.shuffle_seed = 0
    c.data.num_workers = 0
    c.data.tokenizer = ""  # "": train a sentencepiece tokenizer; else a converted model's tokenizer.apr.json

    c.model = ml_collections.ConfigDict()
    c.model.num_layers = 4
    c.model.d_model = 128
    c.model.num_heads = 4
    c.model.num_kv_heads = 2
    c.model.d_ff = 384
    c.model.max_len = 256
    c.model.tie_embeddings = True
    c.model.param_dtype = "float32"
    c.model.compute_dtype = "float32"
    c.model.attention = "auto"  # auto (triton on GPU, splash on TPU, else xla) | xla | triton | cudnn | splash
    c.model.remat = "none"  # none | dots (keep matmul outputs) | full (recompute each block)
    c.model.rope_theta = 10000.0
    c.model.head_dim = 0  # 0: d_model // num_heads
    c.model.qkv_bias = False  # q/k/v projection biases (Qwen2)
    c.model.qk_norm = False  # RMSNorm on q and k per head (Qwen3)
    c.model.norm_eps = 1e-6
    c.model.rope_scaling_factor = 0.0  # Llama 3.1 rotary rescaling; 0: off
    c.model.rope_low_freq_factor = 1.0
    c.model.rope_high_freq_factor = 4.0
    c.model.rope_original_max_len = 8192

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1
    c.mesh.fsdp = 1
    c.mesh.tensor = 1

    c.train = ml_collections.ConfigDict()
    c.train.init_from = ""  # a workdir or WORKDIR/checkpoints/STEP (e.g. python -m apr_jax.convert's --out)
    c.train.batch_size = 16
    c.train.grad_accum = 1
    c.train.steps = 800
    c.train.lr = 3e-3
    c.train.warmup_steps = 40
    c.train.min_lr_ratio = 0.1
    c.train.weight_decay = 0.01
    c.train.b1 = 0.9
    c.train.b2 = 0.98
    c.train.grad_clip = 1.0
    c.train.log_every = 25
    c.train.eval_every = 400
    c.train.eval_batches = 4
    c.train.checkpoint_every = 400
    c.train.keep_checkpoints = 3
    c.train.on_nan = "stop"  # stop | skip
    c.train.time_limit_minutes = 6.5  # 0: no limit; else stop training (checkpointed) after this

    c.eval = ml_collections.ConfigDict()
    c.eval.num_problems = 100
    c.eval.samples = 1
    c.eval.temperature = 0.0
    c.eval.top_p = 1.0
    c.eval.max_children = 4
    c.eval.max_rounds = 2
    c.eval.max_depth = 1
    c.eval.tokens_per_thread = 192
    c.eval.batch_problems = 50
    c.eval.lanes = 0  # KV-cache lanes; 0 = every sample of a batch at once
    c.eval.prefill_chunk = 8  # prompt and join tokens fed per thread per step
    c.eval.row_buckets = 6  # live-row buckets (halvings of the lane pool) the engine compiles
    c.eval.kv_buckets = 3  # KV-length buckets (halvings of the context)
    c.eval.split_by_kv_length = False  # one engine call per KV-length bucket: fewer KV reads, more calls
    # How decode calls read the cache: xla (gather lanes up to a KV bucket), paged (the
    # platform's Pallas paged kernel reads each row's pages below its length; interpreted
    # off GPU/TPU), auto (paged on GPU/TPU when the shapes suit it, else xla).
    c.eval.decode_attention = "xla"
    c.eval.page_size = 16  # cache slots per page: divides the context (TPU: 8k and head_dim 128k; GPU: 2^k)
    return c
