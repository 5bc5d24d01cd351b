"""Pretrained checkpoints: the converted fixtures (tiny random models saved by
the transformers library, tests/fixtures/make_hf_fixtures.py) reproduce the
library's logits and greedy continuation; tokenizers carry the protocol
tokens; bad checkpoints and tokenizers fail with one line naming the file and
the field; SFT starts from a converted model."""

from __future__ import annotations

import json
import os
import pickle
import shutil

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx
from helpers.paths import HF_FIXTURES

from apr_jax import protocol
from apr_jax.config import loading as config_lib
from apr_jax.config.loading import load_run_config
from apr_jax.convert import convert, main
from apr_jax.decode.protocol_ids import ProtocolIds
from apr_jax.evaluation.loading import load_for_inference
from apr_jax.pretrained import safetensors_io
from apr_jax.pretrained.tokenizer import PretrainedTokenizer

FIXTURES = HF_FIXTURES
BASE = ["data.seq_len=64"]  # the fixtures' max_position_embeddings is 64
SWITCHES = {  # what each fixture's config.json asks of the model
    "llama": {
        "qkv_bias": False,
        "qk_norm": False,
        "tie_embeddings": False,
        "rope_theta": 25.0,
        "norm_eps": 1e-5,
        "head_dim": 8,
        "num_kv_heads": 2,
        "rope_scaling_factor": 4.0,
        "rope_low_freq_factor": 1.0,
        "rope_high_freq_factor": 4.0,
        "rope_original_max_len": 8,
    },
    "qwen2": {"qkv_bias": True, "qk_norm": False, "tie_embeddings": True, "rope_theta": 40.0},
    "qwen3": {
        "qkv_bias": False,
        "qk_norm": True,
        "tie_embeddings": True,
        "rope_theta": 60.0,
        "head_dim": 16,
        "d_model": 32,
    },
}


def converted(tmp_path, name: str, *overrides: str):
    out = str(tmp_path / f"out_{name}")
    config = convert(os.path.join(FIXTURES, name), out, config_lib.load_config(None, [*BASE, *overrides]))
    return config, out, load_for_inference(out)


@nnx.jit
def _forward(model, tokens_BxL):
    b, length = tokens_BxL.shape
    return model(tokens_BxL, jnp.broadcast_to(jnp.arange(length), (b, length)), jnp.ones((b, length), jnp.int32))


@nnx.jit
def _decode(model, tokens_BxT, positions_BxT, cache):
    return model.decode(tokens_BxT, positions_BxT, cache)


def greedy(model, prompt: np.ndarray, steps: int, vocab: int) -> list[int]:
    """Greedy continuation through the KV-cache decode path (one token a step)."""
    cache = model.init_cache(1, len(prompt) + steps)
    tokens = jnp.asarray(prompt[None], jnp.int32)
    positions = jnp.arange(len(prompt), dtype=jnp.int32)[None]
    out = []
    for _ in range(steps):
        logits, cache = _decode(model, tokens, positions, cache)
        nxt = int(jnp.argmax(logits[0, -1, :vocab]))
        out.append(nxt)
        tokens = jnp.asarray([[nxt]], jnp.int32)
        positions = positions[:, -1:] + 1
    return out


@pytest.mark.parametrize(
    "name,mesh",
    [
        ("llama", ()),
        ("qwen2", ("mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2")),
        ("qwen3", ("mesh.data=1", "mesh.fsdp=4", "mesh.tensor=2")),
    ],
)
def test_converted_fixture_matches_transformers(tmp_path, name, mesh):
    config, _, loaded = converted(tmp_path, name, *mesh)
    expected = np.load(os.path.join(FIXTURES, name, "expected.npz"))
    logits = np.asarray(_forward(loaded.model, jnp.asarray(expected["tokens"])))
    vocab = loaded.tokenizer.original_size  # rows past it were (re)initialised for added tokens
    np.testing.assert_allclose(logits[..., :vocab], expected["logits"][..., :vocab], atol=2e-5, rtol=1e-5)
    assert greedy(loaded.model, expected["prompt"], len(expected["greedy"]), vocab) == expected["greedy"].tolist()
    assert config.train.init_from.endswith(f"out_{name}")
    assert {k: config.model[k] for k in SWITCHES[name]} == SWITCHES[name]


@pytest.mark.parametrize("name", ["llama", "qwen3"])
def test_added_token_rows_are_the_mean_embedding(tmp_path, name):
    _, _, loaded = converted(tmp_path, name)
    tok = loaded.tokenizer
    hf = np.asarray(safetensors_io.open_checkpoint(os.path.join(FIXTURES, name))["model.embed_tokens.weight"])
    embed = np.asarray(loaded.model.embed_VxD.get_value())
    mean = hf[: tok.original_size].astype(np.float64).mean(axis=0)
    assert embed.shape[0] == tok.vocab_size == max(hf.shape[0], tok.original_size + len(tok.added_ids))
    np.testing.assert_allclose(embed[tok.added_ids], np.broadcast_to(mean, (len(tok.added_ids), mean.size)), atol=1e-6)
    np.testing.assert_array_equal(embed[: tok.original_size], hf[: tok.original_size])
    if name == "llama":  # untied: the head's new columns are the mean output row
        head = np.asarray(loaded.model.head_DxV.get_value())
        lm = np.asarray(safetensors_io.open_checkpoint(os.path.join(FIXTURES, name))["lm_head.weight"])
        np.testing.assert_allclose(
            head[:, tok.added_ids].T, np.broadcast_to(lm.mean(axis=0), (len(tok.added_ids), lm.shape[1])), atol=1e-6
        )


@pytest.mark.parametrize("name,kind", [("llama", "sentencepiece"), ("qwen2", "tokenizers")])
def test_tokenizer_has_single_protocol_tokens(tmp_path, name, kind):
    _, out, loaded = converted(tmp_path, name)
    tok = loaded.tokenizer
    assert isinstance(tok, PretrainedTokenizer) and tok.kind == kind
    ids = ProtocolIds.from_tokenizer(tok)  # distinct pad/bos/eos and protocol ids
    assert ids.child == tok.original_size
    # Llama names <s> and </s> and has no pad; Qwen has no BOS and pads with its EOS.
    want = {"llama": ("<s>", "</s>", "<pad>"), "qwen2": ("<bos>", "<|endoftext|>", "<pad>")}[name]
    assert tuple(tok.id_to_piece(i) for i in (tok.bos_id, tok.eos_id, tok.pad_id)) == want
    for symbol, token_id in tok.protocol_ids.items():
        assert tok.encode(symbol) == [token_id]
    text = "the fox " + protocol.spawn_block(["count 1", "count 2"]) + protocol.join_block(["3", "4"]) + " done"
    encoded = tok.encode(text)
    assert tok.protocol_ids[protocol.SPAWN_OPEN] in encoded and tok.decode(encoded) == text
    assert tok.decode([tok.bos_id, *encoded, tok.eos_id, tok.pad_id]) == text
    clone = pickle.loads(pickle.dumps(tok))
    assert clone.encode(text) == encoded and clone.model_bytes() == tok.model_bytes()
    with open(os.path.join(out, "tokenizer.apr.json"), "rb") as f:
        assert f.read() == tok.model_bytes()


def test_safetensors_reader_reads_bf16_and_rejects_damage(tmp_path):
    rng = np.random.default_rng(0)
    values = {"a": rng.normal(size=(3, 5)).astype(ml_dtypes.bfloat16), "b": np.arange(4, dtype=np.int32)}
    path = str(tmp_path / "x.safetensors")
    safetensors_io.save_file(path, values)
    read = safetensors_io.open_file(path)
    assert read["a"].dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(np.asarray(read["a"]).view(np.uint16), values["a"].view(np.uint16))
    np.testing.assert_array_equal(read["b"], values["b"])
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 4)
    with pytest.raises(safetensors_io.SafetensorsError, match=r"x\.safetensors: tensor b has .* runs past"):
        safetensors_io.open_file(path)


def _copy(name: str, tmp_path) -> str:
    target = str(tmp_path / f"bad_{name}")
    shutil.copytree(os.path.join(FIXTURES, name), target)
    return target


def _edit_config(directory: str, **changes) -> None:
    path = os.path.join(directory, "config.json")
    with open(path) as f:
        raw = json.load(f)
    raw.update(changes)
    with open(path, "w") as f:
        json.dump(raw, f)


def _run_cli(capsys, hf_dir: str, out: str) -> str:
    assert main([f"--hf_dir={hf_dir}", f"--out={out}", *(f"--config.{o}" for o in BASE)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_bad_checkpoints_fail_with_one_line(tmp_path, capsys):
    gpt2 = _copy("llama", tmp_path / "a")
    _edit_config(gpt2, model_type="gpt2", architectures=["GPT2LMHeadModel"])
    err = _run_cli(capsys, gpt2, str(tmp_path / "o1"))
    assert "config.json: field model_type='gpt2'" in err and "not supported" in err

    wide = _copy("llama", tmp_path / "b")
    _edit_config(wide, intermediate_size=64)
    err = _run_cli(capsys, wide, str(tmp_path / "o2"))
    assert (
        "tensor model.layers.0.mlp.gate_proj.weight has shape [48, 32] but config.json fields "
        "intermediate_size, hidden_size give [64, 32]"
    ) in err

    scaled = _copy("qwen3", tmp_path / "c")
    _edit_config(scaled, rope_scaling={"rope_type": "yarn", "factor": 4.0})
    err = _run_cli(capsys, scaled, str(tmp_path / "o3"))
    assert "config.json: field rope_scaling=" in err and "'yarn'" in err

    mixed = _copy("llama", tmp_path / "d")  # a 300-token tokenizer on a 120-row embedding
    os.remove(os.path.join(mixed, "tokenizer.model"))
    for file in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(FIXTURES, "qwen2", file), os.path.join(mixed, file))
    err = _run_cli(capsys, mixed, str(tmp_path / "o4"))
    assert (
        "tokenizer.json: vocabulary of 300 tokens does not fit the checkpoint's embedding of 120 rows "
        "(config.json field vocab_size)" in err
    )

    stray = _copy("llama", tmp_path / "e")
    tensors = {k: np.asarray(v) for k, v in safetensors_io.open_file(os.path.join(stray, "model.safetensors")).items()}
    tensors["model.layers.0.self_attn.o_proj.bias"] = np.zeros(32, np.float32)
    safetensors_io.save_file(os.path.join(stray, "model.safetensors"), tensors)
    err = _run_cli(capsys, stray, str(tmp_path / "o5"))
    assert "tensor model.layers.0.self_attn.o_proj.bias has no place in the model" in err
    assert not os.path.exists(tmp_path / "o1") and not os.path.exists(tmp_path / "o5")


def test_missing_dataset_tokenizer_is_named():
    from apr_jax.data.build import cache_dir

    config = load_run_config(None, ["data.tokenizer=/nope/tokenizer.apr.json"])
    with pytest.raises(ValueError, match=r"config.data.tokenizer='/nope/tokenizer.apr.json' does not exist"):
        cache_dir(config)


@pytest.mark.slow
def test_sft_starts_from_a_converted_model(tmp_path):
    from helpers.rl_toy import TOY

    from apr_jax.training.loop import TrainingError
    from apr_jax.training.sft import run_sft

    task = [o.removeprefix("config.") for o in TOY if not o.startswith("config.model.")]
    _, out, start = converted(tmp_path, "qwen2", *task, f"data.dir={tmp_path / 'data'}")
    run = [
        "train.steps=1",
        "train.lr=1e-9",
        "train.warmup_steps=0",
        "train.batch_size=8",
        "train.log_every=1",
        "train.eval_every=100",
        "train.eval_batches=1",
        "train.checkpoint_every=100",
    ]
    config = load_run_config(os.path.join(out, "config.py"), run)
    assert config.data.tokenizer == os.path.join(out, "tokenizer.apr.json")
    run_sft(config, str(tmp_path / "sft"))
    trained = load_for_inference(str(tmp_path / "sft"))
    assert trained.tokenizer.model_bytes() == start.tokenizer.model_bytes()
    for before, after in zip(jax.tree.leaves(nnx.state(start.model)), jax.tree.leaves(nnx.state(trained.model))):
        np.testing.assert_allclose(np.asarray(after), np.asarray(before), atol=1e-6)

    other = load_run_config(os.path.join(out, "config.py"), [*run, "model.d_ff=64"])
    with pytest.raises(
        TrainingError,
        match=r"config.train.init_from: .*checkpoints/0 holds another model: "
        r"config.model.d_ff \(checkpoint 48, now 64\)",
    ):
        run_sft(other, str(tmp_path / "sft_other"))


def test_bfloat16_checkpoint_converts_bit_exactly(tmp_path):
    """Real checkpoints are mostly bf16: their values reach the model unchanged."""
    directory = _copy("llama", tmp_path)
    path = os.path.join(directory, "model.safetensors")
    bf16 = {k: np.asarray(v).astype(ml_dtypes.bfloat16) for k, v in safetensors_io.open_file(path).items()}
    safetensors_io.save_file(path, bf16)
    out = str(tmp_path / "out")
    convert(
        directory,
        out,
        config_lib.load_config(
            None, [*BASE, "model.param_dtype=bfloat16", "mesh.data=1", "mesh.fsdp=4", "mesh.tensor=2"]
        ),
    )
    model = load_for_inference(out).model
    gate = np.asarray(model.blocks[1].mlp.gate_DxF.get_value())
    assert gate.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(gate.view(np.uint16), bf16["model.layers.1.mlp.gate_proj.weight"].T.view(np.uint16))
    q = np.asarray(model.blocks[0].attn.q_DxNxH.get_value())
    np.testing.assert_array_equal(
        q.view(np.uint16),
        bf16["model.layers.0.self_attn.q_proj.weight"].reshape(4, 8, 32).transpose(2, 0, 1).view(np.uint16),
    )


def test_each_device_reads_only_its_slice():
    """The loader indexes the memory-mapped tensors at each device's shard:
    on a 4-way fsdp x 2-way tensor mesh no read covers a whole sharded matrix."""
    from flax import nnx as nnx_

    from apr_jax.model.config import ModelConfig
    from apr_jax.model.transformer import Transformer
    from apr_jax.pretrained.hf_config import read_architecture
    from apr_jax.pretrained.weights import load_state
    from apr_jax.runtime import sharding

    directory = os.path.join(FIXTURES, "qwen3")
    arch = read_architecture(directory)
    reads: dict[str, list[int]] = {}

    class Recording:
        def __init__(self, name, array):
            self.name, self.array, self.shape, self.ndim = name, array, array.shape, array.ndim

        def reshape(self, *shape):
            return RecordingView(self.name, self.array.reshape(*shape))

        @property
        def T(self):
            return RecordingView(self.name, self.array.T)

        def __getitem__(self, index):
            part = self.array[index]
            reads.setdefault(self.name, []).append(int(np.size(part)))
            return part

    class RecordingView(Recording):
        def transpose(self, *axes):
            return RecordingView(self.name, self.array.transpose(*axes))

    tensors = {k: RecordingView(k, v) for k, v in safetensors_io.open_checkpoint(directory).items()}
    mesh = sharding.make_mesh(sharding.MeshConfig(data=1, fsdp=4, tensor=2))
    fields = dict(arch.model_fields(), vocab_size=arch.vocab_size)
    cfg = ModelConfig(**fields)
    abstract = nnx_.state(nnx_.eval_shape(lambda: Transformer(cfg, rngs=nnx_.Rngs(0))))
    params = load_state(abstract, arch, tensors, mesh, new_rows=[], mean_rows=arch.vocab_size)
    q = params["blocks"][0]["attn"]["q_DxNxH"]
    assert q.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor", None)
    full = int(np.prod(tensors["model.layers.0.self_attn.q_proj.weight"].shape))
    assert max(reads["model.layers.0.self_attn.q_proj.weight"]) == full // 8
    assert max(reads["model.layers.0.mlp.down_proj.weight"]) == full * 48 // 64 // 8


@pytest.mark.slow
def test_two_processes_convert_into_one_checkpoint(tmp_path):
    """Two processes (4 devices each) convert as one 1x4x2 mesh, each reading
    its devices' slices; the checkpoint they write together reproduces the
    transformers logits in one process."""
    import sys

    from helpers.local_cluster import PROCESSES, free_port, run_processes, worker_env

    out, port = str(tmp_path / "out"), free_port()
    argv = [
        sys.executable,
        "-m",
        "apr_jax.convert",
        f"--hf_dir={os.path.join(FIXTURES, 'qwen3')}",
        f"--out={out}",
        *(f"--config.{o}" for o in BASE),
        "--config.mesh.data=1",
        "--config.mesh.fsdp=4",
        "--config.mesh.tensor=2",
    ]
    results = run_processes([(argv, worker_env(port, i, PROCESSES, 60)) for i in range(PROCESSES)], timeout_s=180)
    for code, _, stderr in results:
        assert code == 0, stderr[-2000:]
    assert "converted" in results[0][1] and "converted" not in results[1][1]
    loaded = load_for_inference(out)
    expected = np.load(os.path.join(FIXTURES, "qwen3", "expected.npz"))
    vocab = loaded.tokenizer.original_size
    logits = np.asarray(_forward(loaded.model, jnp.asarray(expected["tokens"])))
    np.testing.assert_allclose(logits[..., :vocab], expected["logits"][..., :vocab], atol=2e-5, rtol=1e-5)
