"""`python -m apr_jax.convert`: a Hugging Face Llama-family model -> a checkpoint
this project trains from.

    python -m apr_jax.convert --hf_dir=DIR --out=OUT [--config=configs/NAME.py] [--config.a.b=v]

Reads ``DIR/config.json``, its safetensors (one file or shards named by
``model.safetensors.index.json``) and its tokenizer (``tokenizer.json`` or
``tokenizer.model``), adds the protocol tokens, and writes under ``OUT``:

- ``checkpoints/0/``: the parameters (orbax, in the config's mesh layout and
  ``model.param_dtype``) with the config and tokenizer, the form that
  ``config.train.init_from`` and ``config.rl.init_from`` read;
- ``tokenizer.apr.json``: the tokenizer, for ``config.data.tokenizer``;
- ``config.py`` / ``config.json``: the base config (``--config``, default
  ``configs/default.py``, with the overrides) whose ``model`` section now
  describes the pretrained architecture and which trains from ``OUT``.

On several hosts every process runs the same command; each reads only the
slices of the tensors its devices hold.
"""

from __future__ import annotations

import base64
import json
import os
import sys

import jax
import ml_collections
from flax import nnx

from apr_jax.cli import Command, Flag, parse_command_line, run_command
from apr_jax.config import loading as config_lib
from apr_jax.model.config import ModelConfig
from apr_jax.model.transformer import Transformer
from apr_jax.pretrained.hf_config import ConversionError, read_architecture
from apr_jax.pretrained.safetensors_io import open_checkpoint
from apr_jax.pretrained.tokenizer import FILE_NAME, PretrainedTokenizer, convert_tokenizer
from apr_jax.pretrained.weights import check_tensors, load_state
from apr_jax.runtime import sharding
from apr_jax.runtime.checkpoint import Checkpointer, CheckpointError

COMMAND = Command(
    "python -m apr_jax.convert",
    "Convert a Hugging Face Llama-family model into a checkpoint this project trains from.",
    flags=(
        Flag(
            "hf_dir",
            "the Hugging Face model directory (config.json, safetensors, tokenizer)",
            value="DIR",
            required=True,
        ),
        Flag("out", "where the checkpoint, tokenizer and config.py go", value="OUT", required=True),
        Flag("config", "the base config (default configs/default.py)", value="FILE"),
    ),
    overrides="set one key of the base config, e.g. --config.model.param_dtype=bfloat16",
    examples=(
        "python -m apr_jax.convert --hf_dir=models/Qwen2.5-0.5B --out=runs/qwen_base "
        "--config.model.param_dtype=bfloat16",
    ),
)
CONFIG_PY = '''"""Config of the model converted from {source}.
Base: {base}. Train from it: python -m apr_jax.train --config={path} --workdir=runs/NAME"""

import json

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(json.loads(CONFIG))


CONFIG = r"""
{config}
"""
'''


def converted_config(
    base: ml_collections.ConfigDict, model_fields: dict, tokenizer: PretrainedTokenizer, out: str, hf_dir: str
) -> ml_collections.ConfigDict:
    """``base`` with the pretrained architecture, tokenizer and starting point."""
    config = ml_collections.ConfigDict(base.to_dict())
    for name, value in model_fields.items():
        config.model[name] = value
    config.data.vocab_size = tokenizer.vocab_size
    config.data.tokenizer = os.path.join(out, FILE_NAME)
    config.train.init_from = out
    config.name = f"{base.name}_{os.path.basename(os.path.normpath(hf_dir))}"
    config_lib.validate(config)
    return config


def convert(hf_dir: str, out: str, base: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Convert ``hf_dir`` into ``out``; returns the written config."""
    hf_dir, out = os.path.abspath(hf_dir), os.path.abspath(out)
    if not os.path.isdir(hf_dir):
        raise ConversionError(f"--hf_dir={hf_dir} is not a directory")
    if os.path.isdir(os.path.join(out, "checkpoints")):
        raise ConversionError(f"--out={out} already holds checkpoints; choose an empty directory")
    arch = read_architecture(hf_dir)
    tensors = open_checkpoint(hf_dir)
    check_tensors(arch, tensors, hf_dir)
    tokenizer = convert_tokenizer(
        hf_dir, arch.vocab_size, bos_token_id=arch.bos_token_id, eos_token_id=arch.eos_token_id
    )
    config = converted_config(base, arch.model_fields(), tokenizer, out, hf_dir)

    mesh = sharding.make_mesh(sharding.MeshConfig.from_config(config.mesh))
    model_cfg = ModelConfig.from_config(config.model, tokenizer.vocab_size)
    abstract = nnx.eval_shape(lambda: Transformer(model_cfg, rngs=nnx.Rngs(0)))
    params = load_state(
        nnx.state(abstract), arch, tensors, mesh, new_rows=tokenizer.added_ids, mean_rows=tokenizer.original_size
    )

    if jax.process_index() == 0:
        os.makedirs(out, exist_ok=True)
        tokenizer.save(os.path.join(out, FILE_NAME))
        with open(os.path.join(out, "config.json"), "w") as f:
            f.write(config_lib.to_json(config))
        with open(os.path.join(out, "config.py"), "w") as f:
            f.write(
                CONFIG_PY.format(
                    source=hf_dir,
                    base=base.get("name"),
                    path=os.path.join(out, "config.py"),
                    config=config_lib.to_json(config),
                )
            )
    checkpointer = Checkpointer(out, keep=1, async_save=False)
    meta = {
        "config": config.to_dict(),
        "tokenizer_b64": base64.b64encode(tokenizer.model_bytes()).decode(),
        "converted_from": hf_dir,
    }
    checkpointer.save_params(0, params, meta)
    checkpointer.close()
    return config


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv

    def body() -> None:
        flags, overrides = parse_command_line(argv, COMMAND)
        sharding.initialize_distributed()
        base = config_lib.load_config(flags.get("config"), overrides)
        config = convert(flags["hf_dir"], flags["out"], base)
        if jax.process_index() == 0:
            out = os.path.abspath(flags["out"])
            print(
                f"converted {flags['hf_dir']} -> {out}/checkpoints/0 "
                f"({json.dumps(dict(config.model))}, vocab {config.data.vocab_size})"
            )
            print(f"train from it: python -m apr_jax.train --config={out}/config.py --workdir=runs/NAME")

    return run_command(body, usage=(ValueError, CheckpointError, ImportError))


if __name__ == "__main__":
    sys.exit(main())
