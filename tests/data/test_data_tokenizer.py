"""Tokenizer: protocol ids, round trips on traces and random text, pickling."""

import pickle
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apr_jax import protocol
from apr_jax.config.trace import TraceConfig
from apr_jax.data.tokenizer import Tokenizer, required_vocab_size
from apr_jax.tasks.countdown.problems import make_splits
from apr_jax.tasks.countdown.traces import make_trace

CASES = [(n, kind, style) for n in (3, 4) for kind in ("apr", "sosp") for style in ("terse", "reference")]


def _trees(num_inputs, kind, style, count, seed):
    max_number, max_target = (20, 50) if num_inputs == 3 else (99, 100)
    splits = make_splits(count, 0, 0, num_inputs=num_inputs, max_number=max_number, max_target=max_target, seed=seed)
    cfg = TraceConfig(kind=kind, style=style)
    return [make_trace(p, cfg) for p in splits["train"]]


def _texts(trees):
    return [t.text for tree in trees for t in tree.threads]


@pytest.fixture(scope="module")
def terse_tokenizer(tmp_path_factory):
    trees = _trees(3, "apr", "terse", 60, seed=0) + _trees(3, "sosp", "terse", 60, seed=0)
    return Tokenizer.train(_texts(trees), 96, tmp_path_factory.mktemp("tok") / "t.model")


@pytest.fixture(scope="module")
def byte_tokenizer(tmp_path_factory):
    trees = _trees(3, "apr", "reference", 40, seed=0)
    return Tokenizer.train(_texts(trees), 400, tmp_path_factory.mktemp("tok") / "b.model")


@pytest.mark.parametrize("num_inputs,kind,style", CASES)
def test_round_trip_on_generated_traces(tmp_path, num_inputs, kind, style):
    train = _trees(num_inputs, kind, style, 40, seed=1)
    held_out = _trees(num_inputs, kind, style, 40, seed=2)
    tok = Tokenizer.train(_texts(train), 96, tmp_path / "m.model")
    assert tok.vocab_size <= 96
    for tree in held_out:
        for thread in tree.threads:
            assert tok.decode(tok.encode(thread.text)) == thread.text
            for seg in thread.segments:
                assert tok.decode(tok.encode(seg.text)) == seg.text


def test_special_and_protocol_ids_are_fixed(terse_tokenizer):
    tok = terse_tokenizer
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2, 3)
    assert list(tok.protocol_ids) == list(protocol.RESERVED)
    for offset, symbol in enumerate(protocol.RESERVED):
        assert tok.protocol_ids[symbol] == 4 + offset
        assert tok.encode(symbol) == [4 + offset]
        ids = tok.encode("12 " + symbol + "3>")
        assert ids.count(4 + offset) == 1
        assert tok.decode(ids) == "12 " + symbol + "3>"


def test_child_prompt_is_child_id_then_message(terse_tokenizer):
    tok = terse_tokenizer
    message = "19-16=3 | 12 3 -> 23"
    assert tok.encode(protocol.child_prompt(message)) == [tok.protocol_ids["<child>"]] + tok.encode(message)


def test_newlines_and_digits(terse_tokenizer):
    tok = terse_tokenizer
    ids = tok.encode("123\n\n45")
    assert tok.decode(ids) == "123\n\n45"
    pieces = [tok.id_to_piece(i) for i in tok.encode("987")]
    assert pieces == ["9", "8", "7"]  # split_digits


def test_decode_skips_special_and_out_of_range_ids(terse_tokenizer):
    tok = terse_tokenizer
    text = "5 7 -> 12"
    ids = tok.encode(text)
    noisy = [tok.bos_id, tok.pad_id] + ids[:2] + [-1, tok.vocab_size, 10**9, tok.eos_id] + ids[2:]
    assert tok.decode(noisy) == text
    assert tok.decode([]) == ""
    assert tok.decode([tok.pad_id] * 5) == ""


def test_pickles_without_the_processor(terse_tokenizer):
    tok = terse_tokenizer
    tok.encode("1 2")  # force the processor
    clone = pickle.loads(pickle.dumps(tok))
    assert clone._processor is None
    assert clone.encode("1 2 -> 3") == tok.encode("1 2 -> 3")
    assert clone.model_bytes() == tok.model_bytes()


def _alphabet(texts):
    """Characters of ``texts`` outside the protocol symbols (what the model knows)."""
    text = "".join(texts)
    for symbol in protocol.RESERVED:
        text = text.replace(symbol, "")
    return sorted(set(text))


_TERSE_ALPHABET = _alphabet(_texts(_trees(3, "apr", "terse", 60, seed=0) + _trees(3, "sosp", "terse", 60, seed=0)))


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.one_of(st.text(alphabet=_TERSE_ALPHABET, max_size=30), st.sampled_from(protocol.RESERVED)), max_size=6)
)
def test_hypothesis_round_trip_trace_alphabet(terse_tokenizer, parts):
    text = "".join(parts)
    assert terse_tokenizer.decode(terse_tokenizer.encode(text)) == text


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(string.printable + "éß→€中😀"), max_size=60))
def test_hypothesis_round_trip_printable_with_byte_fallback(byte_tokenizer, text):
    assert byte_tokenizer.byte_fallback
    assert byte_tokenizer.decode(byte_tokenizer.encode(text)) == text


def test_vocab_too_small_names_the_minimum(tmp_path):
    texts = ["1 2 -> 3\n> 1+2=3 goal"] * 20
    minimum = required_vocab_size(texts, byte_fallback=False)
    with pytest.raises(ValueError, match=f"at least {minimum}"):
        Tokenizer.train(texts, minimum - 1, tmp_path / "m.model")
    assert Tokenizer.train(texts, minimum, tmp_path / "m.model").vocab_size == minimum
    with pytest.raises(ValueError, match=f"at least {minimum + 256}"):
        Tokenizer.train(texts, minimum + 10, tmp_path / "m.model", byte_fallback=True)


def test_bad_arguments_are_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match="model_type"):
        Tokenizer.train(["a"], 96, tmp_path / "m.model", model_type="word")
    with pytest.raises(ValueError, match="no text"):
        Tokenizer.train([], 96, tmp_path / "m.model")
    with pytest.raises(ValueError, match="does not exist"):
        Tokenizer(tmp_path / "missing.model")
    (tmp_path / "junk.model").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="sentencepiece"):
        Tokenizer(tmp_path / "junk.model")
