"""Read safetensors files with numpy only, lazily (memory-mapped).

The format: a little-endian u64 header length, a JSON header mapping each
tensor name to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets
into the buffer that follows the header), then the raw little-endian buffer.
``BF16`` has no numpy type of its own; ``ml_dtypes.bfloat16`` (a JAX
dependency) reads it bit-exactly.

A checkpoint is one ``model.safetensors`` or several shards named by
``model.safetensors.index.json``'s ``weight_map``. Tensors are returned as
read-only memory maps: slicing one reads only the slice from disk, which is
how each host loads just its own shards of the model.
"""

from __future__ import annotations

import json
import os
import struct

import ml_dtypes
import numpy as np

DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}
INDEX_FILE = "model.safetensors.index.json"


class SafetensorsError(ValueError):
    """A safetensors file or index that cannot be read; one line naming the file."""


def read_header(path: str) -> tuple[dict, int]:
    """(header without ``__metadata__``, byte offset where the buffer starts)."""
    try:
        with open(path, "rb") as f:
            raw_len = f.read(8)
            if len(raw_len) != 8:
                raise SafetensorsError(f"{path}: too short to be a safetensors file")
            (header_len,) = struct.unpack("<Q", raw_len)
            if header_len > os.path.getsize(path) - 8:
                raise SafetensorsError(f"{path}: header length {header_len} exceeds the file size")
            header = json.loads(f.read(header_len))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SafetensorsError(f"{path}: not a safetensors file ({type(e).__name__}: {e})") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path}: header is not a JSON object")
    header.pop("__metadata__", None)
    return header, 8 + header_len


def open_file(path: str) -> dict[str, np.ndarray]:
    """Every tensor of one file as a read-only memory map."""
    header, start = read_header(path)
    size = os.path.getsize(path)
    tensors = {}
    for name, entry in header.items():
        dtype = DTYPES.get(entry.get("dtype"))
        if dtype is None:
            raise SafetensorsError(f"{path}: tensor {name} has unsupported dtype {entry.get('dtype')!r}")
        shape = tuple(int(d) for d in entry["shape"])
        begin, end = (int(o) for o in entry["data_offsets"])
        expected = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        if end - begin != expected or start + end > size:
            raise SafetensorsError(
                f"{path}: tensor {name} has {end - begin} bytes for shape "
                f"{list(shape)} {entry['dtype']} (expected {expected}) or runs past the end"
            )
        if expected == 0:
            tensors[name] = np.zeros(shape, dtype)
            continue
        tensors[name] = np.memmap(
            path, dtype=np.dtype(dtype).newbyteorder("<"), mode="r", offset=start + begin, shape=shape
        )
    return tensors


def open_checkpoint(directory: str) -> dict[str, np.ndarray]:
    """Every tensor of an HF checkpoint directory (single file or sharded)."""
    index_path = os.path.join(directory, INDEX_FILE)
    if os.path.isfile(index_path):
        try:
            with open(index_path) as f:
                weight_map = json.load(f)["weight_map"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise SafetensorsError(f"{index_path}: unreadable weight_map ({type(e).__name__}: {e})") from None
        files = sorted(set(weight_map.values()))
    else:
        files = sorted(name for name in os.listdir(directory) if name.endswith(".safetensors"))
        weight_map = None
    if not files:
        raise SafetensorsError(f"{directory}: no *.safetensors files")
    tensors: dict[str, np.ndarray] = {}
    for name in files:
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            raise SafetensorsError(f"{index_path}: names missing shard {name}")
        for key, value in open_file(path).items():
            if key in tensors:
                raise SafetensorsError(f"{path}: tensor {key} appears in two files")
            tensors[key] = value
    if weight_map is not None:
        missing = sorted(set(weight_map) - set(tensors))
        if missing:
            raise SafetensorsError(f"{index_path}: weight_map names {missing[0]} but no shard holds it")
    return tensors


def save_file(path: str, tensors: dict[str, np.ndarray]) -> None:
    """Write ``tensors`` as one safetensors file (the tests' fixtures and bad inputs)."""
    names = {np.dtype(v): k for k, v in DTYPES.items()}
    header, offset, buffers = {}, 0, []
    for name, array in tensors.items():
        data = np.ascontiguousarray(array).astype(np.dtype(array.dtype).newbyteorder("<")).tobytes()
        header[name] = {
            "dtype": names[np.dtype(array.dtype)],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        buffers.append(data)
        offset += len(data)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw + b"".join(buffers))
