"""Hugging Face Llama-family tensors -> the NNX Transformer's sharded state.

Each model parameter has a source: an HF tensor name, the shape that
``config.json`` implies for it, and a lazy view turning the HF layout into
ours (``[out, in]`` linear weights become ``[in, out]``; q/k/v/o are split
into heads). Views of memory-mapped tensors read nothing until indexed, and
``jax.make_array_from_callback`` indexes each one only at the slices this
host's devices hold, so every host reads just its own shards.

Rotary: HF Llama-family checkpoints are stored for ``rotate_half`` (the first
and second halves of each head form the rotated pairs), which is this model's
half-split convention, so q and k need no permutation.

Rows of tokens added by the conversion (protocol tokens, a missing BOS/PAD)
are set to the mean of the pretrained tokenizer's embedding rows (and, with
an untied head, to the mean of its output rows).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import numpy as np
from flax import nnx

from apr_jax.pretrained.hf_config import ConversionError, HFArchitecture
from apr_jax.runtime import sharding

# Tensors some checkpoints carry that the model computes itself.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


@dataclasses.dataclass(frozen=True)
class Source:
    """Where one model parameter comes from."""

    name: str  # HF tensor name
    shape: tuple[int, ...]  # its shape as config.json implies
    fields: str  # the config.json fields that give that shape
    view: Callable[[np.ndarray], Any]  # HF tensor -> lazily indexable array in our layout


def _linear_heads(heads: int, head_dim: int) -> Callable[[np.ndarray], np.ndarray]:
    """[heads*head_dim, d] -> [d, heads, head_dim]."""
    return lambda w: w.reshape(heads, head_dim, -1).transpose(2, 0, 1)


def _transpose(w: np.ndarray) -> np.ndarray:
    return w.T


def _identity(w: np.ndarray) -> np.ndarray:
    return w


def sources(arch: HFArchitecture) -> dict[tuple, Source]:
    """Model parameter path (as in ``nnx.to_pure_dict``) -> its HF source."""
    d, n, k, h, f, v = (arch.d_model, arch.num_heads, arch.num_kv_heads, arch.head_dim, arch.d_ff, arch.vocab_size)
    out: dict[tuple, Source] = {
        ("embed_VxD",): Source("model.embed_tokens.weight", (v, d), "vocab_size, hidden_size", _identity),
        ("final_norm", "scale"): Source("model.norm.weight", (d,), "hidden_size", _identity),
    }
    if not arch.tie_embeddings:
        out[("head_DxV",)] = Source("lm_head.weight", (v, d), "vocab_size, hidden_size", _transpose)
    heads = "num_attention_heads x head_dim"
    kv_heads = "num_key_value_heads x head_dim"
    for i in range(arch.num_layers):
        p = f"model.layers.{i}."
        layer = {
            ("attn_norm", "scale"): Source(p + "input_layernorm.weight", (d,), "hidden_size", _identity),
            ("mlp_norm", "scale"): Source(p + "post_attention_layernorm.weight", (d,), "hidden_size", _identity),
            ("attn", "q_DxNxH"): Source(
                p + "self_attn.q_proj.weight", (n * h, d), f"{heads}, hidden_size", _linear_heads(n, h)
            ),
            ("attn", "k_DxKxH"): Source(
                p + "self_attn.k_proj.weight", (k * h, d), f"{kv_heads}, hidden_size", _linear_heads(k, h)
            ),
            ("attn", "v_DxKxH"): Source(
                p + "self_attn.v_proj.weight", (k * h, d), f"{kv_heads}, hidden_size", _linear_heads(k, h)
            ),
            ("attn", "o_NxHxD"): Source(
                p + "self_attn.o_proj.weight",
                (d, n * h),
                f"hidden_size, {heads}",
                lambda w: w.reshape(d, n, h).transpose(1, 2, 0),
            ),
            ("mlp", "gate_DxF"): Source(
                p + "mlp.gate_proj.weight", (f, d), "intermediate_size, hidden_size", _transpose
            ),
            ("mlp", "up_DxF"): Source(p + "mlp.up_proj.weight", (f, d), "intermediate_size, hidden_size", _transpose),
            ("mlp", "down_FxD"): Source(
                p + "mlp.down_proj.weight", (d, f), "hidden_size, intermediate_size", _transpose
            ),
        }
        if arch.qkv_bias:
            layer[("attn", "q_bias_NxH")] = Source(
                p + "self_attn.q_proj.bias", (n * h,), heads, lambda b: b.reshape(n, h)
            )
            layer[("attn", "k_bias_KxH")] = Source(
                p + "self_attn.k_proj.bias", (k * h,), kv_heads, lambda b: b.reshape(k, h)
            )
            layer[("attn", "v_bias_KxH")] = Source(
                p + "self_attn.v_proj.bias", (k * h,), kv_heads, lambda b: b.reshape(k, h)
            )
        if arch.qk_norm:
            layer[("attn", "q_norm", "scale")] = Source(p + "self_attn.q_norm.weight", (h,), "head_dim", _identity)
            layer[("attn", "k_norm", "scale")] = Source(p + "self_attn.k_norm.weight", (h,), "head_dim", _identity)
        out.update({("blocks", i, *path): source for path, source in layer.items()})
    return out


def check_tensors(arch: HFArchitecture, tensors: dict[str, np.ndarray], hf_dir: str) -> None:
    """Every needed tensor present with the shape config.json implies, and no
    tensor the model would silently drop; one-line errors."""
    needed = {s.name: s for s in sources(arch).values()}
    for name, source in needed.items():
        if name not in tensors:
            raise ConversionError(
                f"{hf_dir}: the safetensors hold no tensor {name} (config.json "
                f"describes a {arch.model_type} model that needs it)"
            )
        shape = tuple(tensors[name].shape)
        if shape != source.shape:
            raise ConversionError(
                f"{_file_of(tensors[name], hf_dir)}: tensor {name} has shape {list(shape)} but "
                f"config.json fields {source.fields} give {list(source.shape)}"
            )
    tied_head = arch.tie_embeddings and "lm_head.weight" in tensors
    unused = sorted(
        name
        for name in tensors
        if name not in needed and not name.endswith(IGNORED_SUFFIXES) and not (tied_head and name == "lm_head.weight")
    )
    if unused:
        raise ConversionError(
            f"{_file_of(tensors[unused[0]], hf_dir)}: tensor {unused[0]} has no place "
            f"in the model ({len(unused)} "
            f"such tensors; config.json field model_type={arch.model_type!r})"
        )


def _file_of(tensor: np.ndarray, hf_dir: str) -> str:
    """The safetensors file a memory-mapped tensor lives in (else the directory)."""
    return getattr(tensor, "filename", None) or hf_dir


class _RowsWithMean:
    """A lazily indexed table whose rows (along ``axis``) past the checkpoint's,
    or listed in ``new_rows``, are the mean of the first ``mean_of`` rows."""

    def __init__(self, table: Any, axis: int, total_rows: int, new_rows: list[int], mean_of: int):
        self.table, self.axis = table, axis
        self.file_rows = table.shape[axis]
        shape = list(table.shape)
        shape[axis] = total_rows
        self.shape = tuple(shape)
        self.new_rows = np.asarray(new_rows, dtype=np.int64)
        self.mean = self._mean(mean_of)

    def _mean(self, rows: int, chunk: int = 4096) -> np.ndarray:
        total = None
        for start in range(0, rows, chunk):
            index = [slice(None)] * self.table.ndim
            index[self.axis] = slice(start, min(rows, start + chunk))
            part = np.asarray(self.table[tuple(index)], dtype=np.float64).sum(axis=self.axis)
            total = part if total is None else total + part
        return total / rows

    def __getitem__(self, index: tuple[slice, ...]) -> np.ndarray:
        index = tuple(index) + (slice(None),) * (len(self.shape) - len(index))
        rows = np.arange(self.shape[self.axis])[index[self.axis]]
        inside = rows[rows < self.file_rows]
        take = list(index)
        take[self.axis] = slice(int(inside[0]), int(inside[-1]) + 1) if inside.size else slice(0, 0)
        head = np.asarray(self.table[tuple(take)], dtype=np.float64)
        other = list(index)
        other[self.axis] = slice(None)
        mean = np.expand_dims(self.mean[tuple(other[: self.axis] + other[self.axis + 1 :])], self.axis)
        tail_shape = list(head.shape)
        tail_shape[self.axis] = rows.size - inside.size
        out = np.concatenate([head, np.broadcast_to(mean, tail_shape)], axis=self.axis)
        replace = np.isin(rows, self.new_rows)
        if replace.any():
            sel = [slice(None)] * out.ndim
            sel[self.axis] = replace
            out[tuple(sel)] = np.broadcast_to(mean, out[tuple(sel)].shape)
        return out


def load_state(
    abstract_state: nnx.State,
    arch: HFArchitecture,
    tensors: dict[str, np.ndarray],
    mesh: jax.sharding.Mesh,
    *,
    new_rows: list[int],
    mean_rows: int,
) -> dict:
    """The model's parameters as a pure dict of global arrays in their sharded
    layout, each host reading only the slices its devices hold."""
    pure = nnx.to_pure_dict(abstract_state)
    shardings = nnx.to_pure_dict(sharding.model_state_shardings(abstract_state, mesh))
    by_path = sources(arch)

    def load(path, leaf, target):
        key = tuple(p.key if hasattr(p, "key") else p.idx for p in path)
        source = by_path.get(key)
        if source is None:
            raise ConversionError(f"model parameter {'/'.join(map(str, key))} has no Hugging Face source")
        view = source.view(tensors[source.name])
        if key in (("embed_VxD",), ("head_DxV",)):
            axis = 0 if key == ("embed_VxD",) else 1
            view = _RowsWithMean(view, axis, leaf.shape[axis], new_rows, mean_rows)
        if tuple(view.shape) != tuple(leaf.shape):
            raise ConversionError(
                f"tensor {source.name} maps to shape {list(view.shape)}, the model expects {list(leaf.shape)}"
            )
        dtype, slices = leaf.dtype, {}

        def read(index: tuple[slice, ...]) -> np.ndarray:
            # Devices holding the same slice (replicas) share one read.
            key = tuple((s.start, s.stop, s.step) for s in index)
            if key not in slices:
                slices[key] = np.asarray(view[index]).astype(dtype)
            return slices[key]

        return jax.make_array_from_callback(leaf.shape, target, read)

    return jax.tree_util.tree_map_with_path(load, pure, shardings)
