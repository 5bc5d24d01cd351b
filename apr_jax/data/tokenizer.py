"""Sentencepiece tokenizer whose protocol strings are single, fixed tokens.

Ids 0-3 are pad, unk, bos and eos; the protocol's reserved strings
(``apr_jax.protocol.RESERVED``, in order) follow as user-defined symbols, so
``<child>`` is id 4, ``<spawn>`` id 5, and so on for every task. Text is not
normalised, no dummy prefix is added and whitespace is kept, so
``decode(encode(text)) == text`` for every text whose characters the model
knows. Byte fallback (256 byte pieces) makes that hold for any text, but it
needs a vocabulary of at least ``256 + required pieces``; below that the
vocabulary covers exactly the characters of the training text.

The sentencepiece processor does not pickle, so a ``Tokenizer`` pickles its
model bytes and loads the processor lazily on first use (e.g. in a grain
worker).
"""

from __future__ import annotations

import io
import os
import re
from typing import Iterable, Sequence

import numpy as np
import sentencepiece as spm

from apr_jax import protocol

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
NUM_SPECIAL = 4
NUM_BYTE_PIECES = 256
MODEL_TYPES = ("bpe", "unigram")


class Tokenizer:
    """A trained sentencepiece model; picklable, processor loaded lazily."""

    def __init__(self, model_path: str | os.PathLike | None = None, *, model_proto: bytes | None = None):
        if (model_path is None) == (model_proto is None):
            raise ValueError("Tokenizer needs exactly one of model_path or model_proto")
        if model_path is not None:
            if not os.path.isfile(model_path):
                raise ValueError(f"tokenizer model {os.fspath(model_path)!r} does not exist")
            with open(model_path, "rb") as f:
                model_proto = f.read()
        self._model_proto: bytes = model_proto
        self.model_path = None if model_path is None else os.fspath(model_path)
        self._processor: spm.SentencePieceProcessor | None = None
        self._protocol_ids: dict[str, int] | None = None
        self._check_layout()

    # ---- pickling: ship the bytes, rebuild the processor on demand ---------
    def __getstate__(self) -> dict:
        return {"model_proto": self._model_proto, "model_path": self.model_path}

    def __setstate__(self, state: dict) -> None:
        self._model_proto = state["model_proto"]
        self.model_path = state["model_path"]
        self._processor = None
        self._protocol_ids = None

    @property
    def _sp(self) -> spm.SentencePieceProcessor:
        if self._processor is None:
            processor = spm.SentencePieceProcessor()
            try:
                processor.LoadFromSerializedProto(self._model_proto)
            except (RuntimeError, OSError) as e:
                raise ValueError(f"not a sentencepiece model: {e}") from None
            self._processor = processor
        return self._processor

    def _check_layout(self) -> None:
        sp = self._sp
        specials = (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id())
        if specials != (PAD_ID, UNK_ID, BOS_ID, EOS_ID):
            raise ValueError(
                f"tokenizer model has pad/unk/bos/eos ids {specials}, expected {(PAD_ID, UNK_ID, BOS_ID, EOS_ID)}"
            )
        for offset, symbol in enumerate(protocol.RESERVED):
            got = sp.piece_to_id(symbol)
            if got != NUM_SPECIAL + offset:
                raise ValueError(
                    f"tokenizer model gives protocol symbol {symbol!r} id {got}, expected {NUM_SPECIAL + offset}"
                )

    # ---- properties --------------------------------------------------------
    @property
    def pad_id(self) -> int:
        return PAD_ID

    @property
    def unk_id(self) -> int:
        return UNK_ID

    @property
    def bos_id(self) -> int:
        return BOS_ID

    @property
    def eos_id(self) -> int:
        return EOS_ID

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    @property
    def protocol_ids(self) -> dict[str, int]:
        """Each reserved protocol string -> its (single) token id."""
        if self._protocol_ids is None:
            self._protocol_ids = {s: NUM_SPECIAL + i for i, s in enumerate(protocol.RESERVED)}
        return dict(self._protocol_ids)

    @property
    def byte_fallback(self) -> bool:
        return self._sp.piece_to_id("<0x00>") != UNK_ID

    def model_bytes(self) -> bytes:
        """The serialised sentencepiece model."""
        return self._model_proto

    def id_to_piece(self, token_id: int) -> str:
        return self._sp.id_to_piece(int(token_id))

    # ---- encode / decode ---------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no BOS/EOS added)."""
        if not isinstance(text, str):
            raise ValueError(f"encode expects a str, got {type(text).__name__}")
        return self._sp.encode(text)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text of ``ids``; pad/bos/eos and out-of-range ids are skipped."""
        vocab_size = self.vocab_size
        kept = []
        for token_id in np.asarray(ids, dtype=np.int64).reshape(-1).tolist():
            if 0 <= token_id < vocab_size and token_id not in (PAD_ID, BOS_ID, EOS_ID):
                kept.append(token_id)
        return self._sp.decode(kept)

    # ---- training ----------------------------------------------------------
    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int,
        model_path: str | os.PathLike,
        *,
        model_type: str = "bpe",
        byte_fallback: bool | None = None,
        num_threads: int | None = None,
    ) -> "Tokenizer":
        """Trains a model on ``texts`` and writes it to ``model_path``.

        ``byte_fallback=None`` turns byte fallback on when ``vocab_size`` has
        room for the 256 byte pieces on top of the required pieces.
        """
        if model_type not in MODEL_TYPES:
            raise ValueError(f"model_type {model_type!r} is not one of {MODEL_TYPES}")
        texts = [t for t in texts if t]
        if not texts:
            raise ValueError("cannot train a tokenizer on no text")
        bad = next((t for t in texts if not isinstance(t, str)), None)
        if bad is not None:
            raise ValueError(f"tokenizer training texts must be str, got {type(bad).__name__}")
        required = required_vocab_size(texts, byte_fallback=False)
        if byte_fallback is None:
            byte_fallback = vocab_size >= required + NUM_BYTE_PIECES
        minimum = required + (NUM_BYTE_PIECES if byte_fallback else 0)
        if vocab_size < minimum:
            raise ValueError(
                f"vocab_size {vocab_size} is too small: this text needs at least "
                f"{minimum} ({required - NUM_SPECIAL - len(protocol.RESERVED)} "
                f"characters + {NUM_SPECIAL} special + {len(protocol.RESERVED)} "
                f"protocol{' + 256 byte' if byte_fallback else ''} pieces)"
            )
        model = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(texts),
                model_writer=model,
                vocab_size=vocab_size,
                model_type=model_type,
                user_defined_symbols=list(protocol.RESERVED),
                pad_id=PAD_ID,
                unk_id=UNK_ID,
                bos_id=BOS_ID,
                eos_id=EOS_ID,
                split_digits=True,
                byte_fallback=byte_fallback,
                normalization_rule_name="identity",
                add_dummy_prefix=False,
                remove_extra_whitespaces=False,
                split_by_whitespace=False,
                character_coverage=1.0,
                max_sentence_length=1 << 24,
                hard_vocab_limit=False,
                num_threads=num_threads or os.cpu_count() or 1,
                minloglevel=2,
            )
        except RuntimeError as e:
            raise ValueError(_explain_training_error(str(e), vocab_size)) from None
        model_path = os.fspath(model_path)
        os.makedirs(os.path.dirname(os.path.abspath(model_path)), exist_ok=True)
        tmp_path = model_path + ".tmp"
        with open(tmp_path, "wb") as f:
            f.write(model.getvalue())
        os.replace(tmp_path, model_path)
        return cls(model_path)


def load_tokenizer(path: str | os.PathLike | None = None, *, data: bytes | None = None):
    """The tokenizer in file ``path`` or serialised in ``data``: the project's
    sentencepiece ``Tokenizer``, or a converted pretrained model's
    (``apr_jax.pretrained.tokenizer``), told apart by content."""
    from apr_jax.pretrained.tokenizer import PretrainedTokenizer, is_pretrained

    if (path is None) == (data is None):
        raise ValueError("load_tokenizer needs exactly one of path or data")
    if path is not None:
        if not os.path.isfile(path):
            raise ValueError(f"tokenizer model {os.fspath(path)!r} does not exist")
        with open(path, "rb") as f:
            data = f.read()
    if is_pretrained(data):
        return PretrainedTokenizer(data, None if path is None else os.fspath(path))
    if path is not None:
        return Tokenizer(path)
    return Tokenizer(model_proto=data)


def required_vocab_size(texts: Iterable[str], *, byte_fallback: bool) -> int:
    """Smallest vocabulary sentencepiece accepts for ``texts``."""
    chars: set[str] = set()
    for text in texts:
        for symbol in protocol.RESERVED:
            text = text.replace(symbol, "")
        chars.update(text)
    return len(chars) + NUM_SPECIAL + len(protocol.RESERVED) + (NUM_BYTE_PIECES if byte_fallback else 0)


def _explain_training_error(message: str, vocab_size: int) -> str:
    too_high = re.search(r"Please set it to a value <= (\d+)", message)
    if too_high:
        return (
            f"vocab_size {vocab_size} is too large for this training text: "
            f"sentencepiece can make at most {too_high.group(1)} pieces"
        )
    too_small = re.search(r"(\d+) vs (\d+)", message)
    if too_small:
        return f"vocab_size {vocab_size} is too small: sentencepiece needs at least {too_small.group(2)}"
    return "sentencepiece training failed: " + message.strip().splitlines()[-1]
