"""A pretrained model's tokenizer with the protocol tokens added.

Two kinds are read from a Hugging Face model directory:

- ``tokenizer.model``: a sentencepiece model (Llama 2 and kin); the protocol
  strings are appended as user-defined pieces (matched whole in any text),
  and the dummy prefix (a space before every encoded text) is turned off,
  since threads are encoded segment by segment;
- ``tokenizer.json``: a ``tokenizers`` tokenizer (Llama 3, Qwen); the protocol
  strings are added as special tokens. Needs the optional ``tokenizers``
  package (``pip install -e ".[hf]"``), imported only here.

New tokens take the ids after the tokenizer's last one. BOS, EOS and PAD come
from ``tokenizer_config.json`` (or the sentencepiece model); a missing one,
or a PAD equal to EOS (the engine needs them distinct), is added as a new
special token (``<bos>``, ``<pad>``). ``vocab_size`` is the model's embedding
size: at least the checkpoint's rows (Qwen pads its embedding past the
tokenizer) and enough for the added tokens.

The whole tokenizer serialises to one JSON document (``model_bytes``), which
checkpoints store as they store the project's own sentencepiece model.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
from typing import Any, Callable, Sequence

import numpy as np

from apr_jax import protocol

FORMAT = "apr_jax.pretrained_tokenizer/1"
FILE_NAME = "tokenizer.apr.json"
ADDED_BOS, ADDED_EOS, ADDED_PAD = "<bos>", "<eos>", "<pad>"


class TokenizerMismatch(ValueError):
    """A tokenizer that does not fit the checkpoint; one line naming the file and field."""


def is_pretrained(data: bytes) -> bool:
    """Whether ``data`` is a serialised ``PretrainedTokenizer``."""
    return data[:1] == b"{" and FORMAT.encode() in data[:200]


class PretrainedTokenizer:
    """The project's tokenizer interface over a pretrained tokenizer."""

    def __init__(self, data: bytes, model_path: str | None = None):
        try:
            doc = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"not a pretrained tokenizer document: {e}") from None
        if doc.get("format") != FORMAT:
            raise ValueError(f"not a pretrained tokenizer document (format {doc.get('format')!r})")
        self._doc, self._data, self.model_path = doc, data, model_path
        self._backend: Any = None
        self.kind: str = doc["kind"]

    # ---- pickling: ship the document, rebuild the backend on demand ----
    def __getstate__(self) -> dict:
        return {"data": self._data, "model_path": self.model_path}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["data"], state["model_path"])

    @property
    def _impl(self) -> Any:
        if self._backend is None:
            if self.kind == "sentencepiece":
                import sentencepiece as spm

                processor = spm.SentencePieceProcessor()
                processor.LoadFromSerializedProto(base64.b64decode(self._doc["model_b64"]))
                self._backend = processor
            else:
                self._backend = _tokenizers_module().Tokenizer.from_str(self._doc["tokenizer_json"])
        return self._backend

    # ---- ids --------------------------------------------------------------
    @property
    def pad_id(self) -> int:
        return int(self._doc["pad_id"])

    @property
    def bos_id(self) -> int:
        return int(self._doc["bos_id"])

    @property
    def eos_id(self) -> int:
        return int(self._doc["eos_id"])

    @property
    def unk_id(self) -> int:
        return int(self._doc.get("unk_id", self.pad_id))

    @property
    def vocab_size(self) -> int:
        """Rows of the model's embedding (>= the tokenizer's own size)."""
        return int(self._doc["vocab_size"])

    @property
    def protocol_ids(self) -> dict[str, int]:
        return {s: int(self._doc["protocol_ids"][s]) for s in protocol.RESERVED}

    @property
    def added_ids(self) -> list[int]:
        """Ids of the tokens the conversion added (protocol and missing specials)."""
        return [int(i) for i in self._doc["added_ids"]]

    @property
    def original_size(self) -> int:
        """The pretrained tokenizer's own size before any token was added."""
        return int(self._doc["original_size"])

    @property
    def byte_fallback(self) -> bool:
        return self.kind == "tokenizers" or self._impl.piece_to_id("<0x00>") != self._impl.unk_id()

    def model_bytes(self) -> bytes:
        return self._data

    def id_to_piece(self, token_id: int) -> str:
        if self.kind == "sentencepiece":
            return self._impl.id_to_piece(int(token_id))
        return self._impl.id_to_token(int(token_id)) or ""

    # ---- encode / decode ----------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no BOS/EOS added)."""
        if not isinstance(text, str):
            raise ValueError(f"encode expects a str, got {type(text).__name__}")
        if self.kind == "sentencepiece":
            return list(self._impl.encode(text))
        return list(self._impl.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text of ``ids``; pad/bos/eos and ids the tokenizer lacks are skipped."""
        size = self._doc["tokenizer_size"]
        skip = {self.pad_id, self.bos_id, self.eos_id}
        kept = [i for i in np.asarray(ids, dtype=np.int64).reshape(-1).tolist() if 0 <= i < size and i not in skip]
        if self.kind == "sentencepiece":
            return self._impl.decode(kept)
        return self._impl.decode(kept, skip_special_tokens=False)

    def save(self, path: str) -> None:
        with open(path, "wb") as f:
            f.write(self._data)


def _tokenizers_module():
    try:
        import tokenizers
    except ImportError:
        raise ImportError('reading tokenizer.json needs the tokenizers package: pip install -e ".[hf]"') from None
    return tokenizers


def _special_strings(hf_dir: str) -> dict[str, str | None]:
    """bos/eos/pad/unk token strings named by ``tokenizer_config.json`` (if any)."""
    path = os.path.join(hf_dir, "tokenizer_config.json")
    if not os.path.isfile(path):
        return {}
    try:
        with open(path) as f:
            raw = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise TokenizerMismatch(f"{path}: unreadable ({type(e).__name__}: {e})") from None
    out = {}
    for name in ("bos", "eos", "pad", "unk"):
        value = raw.get(f"{name}_token")
        out[name] = value.get("content") if isinstance(value, dict) else value
    return out


@dataclasses.dataclass
class _Source:
    """A pretrained tokenizer file being extended."""

    path: str
    kind: str  # "sentencepiece" | "tokenizers"
    original_size: int  # ids before anything is added
    lookup: Callable[[str], int | None]  # token string -> id, None when absent
    add: Callable[[list[str]], dict[str, Any]]  # append tokens; the document fields of the result
    default_ids: dict[str, int]  # bos/eos ids the file itself names
    fields: dict[str, Any] = dataclasses.field(default_factory=dict)  # more document fields


def convert_tokenizer(
    hf_dir: str, embedding_rows: int, *, bos_token_id: int | None = None, eos_token_id: int | None = None
) -> PretrainedTokenizer:
    """The tokenizer of ``hf_dir`` with the protocol tokens added, sized for a
    checkpoint whose embedding has ``embedding_rows`` rows."""
    sp_path, json_path = os.path.join(hf_dir, "tokenizer.model"), os.path.join(hf_dir, "tokenizer.json")
    if os.path.isfile(json_path):
        source = _tokenizers_json(json_path)
    elif os.path.isfile(sp_path):
        source = _sentencepiece(sp_path)
    else:
        raise TokenizerMismatch(f"{hf_dir}: no tokenizer.json or tokenizer.model")
    original = source.original_size
    if original > embedding_rows:
        raise TokenizerMismatch(
            f"{source.path}: vocabulary of {original} tokens does not fit the checkpoint's embedding of "
            f"{embedding_rows} rows (config.json field vocab_size)"
        )
    specials = _special_strings(hf_dir)

    def find(name: str, fallback_id: int | None) -> int | None:
        text = specials.get(name)
        if text is not None:
            found = source.lookup(text)
            if found is None:
                raise TokenizerMismatch(
                    f"{os.path.join(hf_dir, 'tokenizer_config.json')}: field "
                    f"{name}_token={text!r} is not a token of {source.path}"
                )
            return found
        if name in specials:  # named as null: the tokenizer has none
            return None
        return fallback_id if fallback_id is not None and 0 <= fallback_id < original else None

    bos = find("bos", bos_token_id if bos_token_id is not None else source.default_ids.get("bos"))
    eos = find("eos", eos_token_id if eos_token_id is not None else source.default_ids.get("eos"))
    if eos is None:
        raise TokenizerMismatch(f"{source.path}: no end-of-text token (set eos_token in tokenizer_config.json)")
    pad = find("pad", None)
    to_add = list(protocol.RESERVED)
    if bos is None or bos == eos:
        to_add.append(ADDED_BOS)
    if pad is None or pad in (eos, bos):
        to_add.append(ADDED_PAD)
    existing = [s for s in to_add if source.lookup(s) is not None]
    if existing:
        raise TokenizerMismatch(
            f"{source.path}: already holds the token {existing[0]!r} that the "
            f"protocol adds; such a tokenizer is not supported"
        )
    extended = source.add(to_add)
    ids = {s: original + i for i, s in enumerate(to_add)}
    size = original + len(to_add)
    doc = {
        "format": FORMAT,  # first: ``is_pretrained`` looks at the start
        "kind": source.kind,
        "source": os.path.abspath(source.path),
        "original_size": original,
        "tokenizer_size": size,
        "vocab_size": max(embedding_rows, size),
        "bos_id": ids.get(ADDED_BOS, bos),
        "eos_id": eos,
        "pad_id": ids.get(ADDED_PAD, pad),
        "added_ids": list(ids.values()),
        "protocol_ids": {s: ids[s] for s in protocol.RESERVED},
        **source.fields,
        **extended,
    }
    return PretrainedTokenizer(json.dumps(doc).encode())


def _tokenizers_json(path: str) -> _Source:
    tokenizers = _tokenizers_module()
    try:
        tok = tokenizers.Tokenizer.from_file(path)
    except Exception as e:  # the library raises a bare Exception on bad files
        raise TokenizerMismatch(f"{path}: not a tokenizers file ({e})") from None
    original = tok.get_vocab_size(with_added_tokens=True)

    def add(strings: list[str]) -> dict[str, Any]:
        tok.add_special_tokens([tokenizers.AddedToken(s, special=True, normalized=False) for s in strings])
        ids = [tok.token_to_id(s) for s in strings]
        if ids != list(range(original, original + len(strings))):
            raise TokenizerMismatch(f"{path}: added tokens got ids {ids}, expected consecutive ids from {original}")
        return {"tokenizer_json": tok.to_str()}

    return _Source(path, "tokenizers", original, tok.token_to_id, add, default_ids={})


def _sentencepiece(path: str) -> _Source:
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as model_pb2

    proto = model_pb2.ModelProto()
    try:
        with open(path, "rb") as f:
            proto.ParseFromString(f.read())
        processor = spm.SentencePieceProcessor()
        processor.LoadFromSerializedProto(proto.SerializeToString())
    except Exception as e:  # protobuf and sentencepiece raise assorted errors
        raise TokenizerMismatch(f"{path}: not a sentencepiece model ({type(e).__name__})") from None
    # Threads are encoded segment by segment; a dummy prefix would put a space
    # in front of every segment.
    proto.normalizer_spec.add_dummy_prefix = False

    def lookup(text: str) -> int | None:
        found = processor.piece_to_id(text)
        return None if found == processor.unk_id() and text != processor.id_to_piece(found) else found

    def add(strings: list[str]) -> dict[str, Any]:
        for s in strings:
            proto.pieces.append(
                model_pb2.ModelProto.SentencePiece(
                    piece=s, score=0.0, type=model_pb2.ModelProto.SentencePiece.USER_DEFINED
                )
            )
        return {"model_b64": base64.b64encode(proto.SerializeToString()).decode()}

    return _Source(
        path,
        "sentencepiece",
        len(proto.pieces),
        lookup,
        add,
        default_ids={"bos": processor.bos_id(), "eos": processor.eos_id()},
        fields={"unk_id": processor.unk_id()},
    )
