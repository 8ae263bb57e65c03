"""SentencePiece-style (Llama-2/Mistral) tokenizers through HF -> GGUF -> HF.

A tiny SentencePiece BPE model with byte fallback is trained here (Llama's special ids: unk 0,
bos 1, eos 2; pad 3; 512 pieces, so merges build words several levels deep), turned into an HF
Llama tokenizer by transformers, and put next to a 1-layer LlamaForCausalLM with 512 embedding
rows.  The GGUF side is checked with gguf's own readers and transformers' GGUF tokenizer loader.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest

import keishiki
from keishiki.examples import TRAINING_TEXT
from tests.conftest import corpus_path, run_cli

pytest.importorskip("torch")
gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")
spm = pytest.importorskip("sentencepiece")

VOCAB = 520  # embedding rows: a few more than the 512 pieces, padded like llama.cpp does
PIECES = 512
EXTRA = [
    "Tokenizers split text into pieces; the pieces become ids and the ids become vectors.",
    "SentencePiece treats the input as a raw stream and marks spaces with a meta symbol.",
    "Byte fallback turns characters outside the vocabulary into their UTF-8 bytes.",
    "Converting a model should never change how it reads its input, not even by one token.",
    "The llama walked slowly across the mountain, carrying a bundle of woollen blankets.",
    "Quantization trades a little precision for a much smaller file that loads quickly.",
    "東京の天気は晴れです。明日は雨が降るかもしれません。",
    "Numbers like 2024, 3.14159 and 1,000,000 are split into single digits.",
]
TEXT = TRAINING_TEXT + EXTRA * 3
SAMPLES = [
    "Hello, world! The quick brown fox converting tokenizers.",
    "初めまして、東京の天気。",
    "emoji 🦙🚀🎉 ok",
    "digits 0123456789",
    "tabs\tand\nnew   lines",
    "未知の文字 龘",
    "the pieces become vectors quickly",
]
# where transformers 5's LlamaTokenizer and SentencePiece/llama.cpp differ (see gguf_vocab)
SPACED = ["  two leading spaces", " one leading space", "<s>after a special</s> token"]
VOCAB_TESTS = "gguf/llama.cpp-vocab/ggml-vocab-{}.gguf"


def _train_spm(vocab_size: int) -> bytes:
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(TEXT),
        model_writer=buf,
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=3,
        character_coverage=1.0,
        hard_vocab_limit=False,
        split_digits=True,
        minloglevel=2,
        # as Llama's tokenizer.model: no normalization, whitespace kept as it is
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
    )
    return buf.getvalue()


def _llama_folder(
    weights: Path, dest: Path, model: bytes, keep_model: bool, keep_json: bool
) -> Path:
    """The tiny model's weights with an HF Llama tokenizer made from ``model``."""
    shutil.copytree(weights, dest)
    spm_dir = dest.parent / f"{dest.name}-spm"
    spm_dir.mkdir()
    (spm_dir / "tokenizer.model").write_bytes(model)
    # legacy=True: the Llama-2 behaviour (meta-space after special tokens, like SentencePiece)
    tok = transformers.LlamaTokenizer.from_pretrained(
        str(spm_dir),
        legacy=True,
        add_bos_token=True,
        pad_token="<pad>",
        chat_template="{% for m in messages %}{{ m['content'] }}</s>{% endfor %}",
    )
    tok.save_pretrained(str(dest))
    if keep_model:
        shutil.copy(spm_dir / "tokenizer.model", dest / "tokenizer.model")
    if not keep_json:
        (dest / "tokenizer.json").unlink()
    # as Llama-2's tokenizer_config.json says (transformers 5 no longer writes the flags)
    tok_config = json.loads((dest / "tokenizer_config.json").read_text())
    tok_config.update(add_bos_token=True, add_eos_token=False)
    (dest / "tokenizer_config.json").write_text(json.dumps(tok_config))
    return dest


@pytest.fixture(scope="session")
def spm_bytes() -> bytes:
    return _train_spm(PIECES)


@pytest.fixture(scope="session")
def spm_weights(tmp_path_factory) -> Path:
    """A 1-layer LlamaForCausalLM (hidden 32) with VOCAB embedding rows, no tokenizer."""
    import torch

    folder = tmp_path_factory.mktemp("spm-weights") / "weights"
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def spm_folders(spm_weights, spm_bytes, tmp_path_factory) -> dict[str, Path]:
    """Llama folders: both tokenizer files, tokenizer.json only, tokenizer.model only."""
    root = tmp_path_factory.mktemp("spm-llama")
    return {
        "both": _llama_folder(spm_weights, root / "both", spm_bytes, True, True),
        "json": _llama_folder(spm_weights, root / "json", spm_bytes, False, True),
        "model": _llama_folder(spm_weights, root / "model", spm_bytes, True, False),
    }


@pytest.fixture(scope="session")
def spm_ggufs(spm_folders, tmp_path_factory) -> dict[str, tuple[Path, keishiki.convert]]:
    out = tmp_path_factory.mktemp("spm-gguf")
    result = {}
    for kind, folder in spm_folders.items():
        path = out / f"{kind}.gguf"
        result[kind] = (path, keishiki.convert(folder, path, to="gguf", quiet=True))
    return result


def _kv(path: Path) -> dict:
    reader = gguf.GGUFReader(str(path))
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def _gguf_tokenizer(path: Path):
    return transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def _encode_all(tok, add_special_tokens=False) -> list[list[int]]:
    return [list(tok.encode(s, add_special_tokens=add_special_tokens)) for s in SAMPLES]


def test_sentencepiece_written_as_llama_with_real_scores(spm_ggufs, spm_folders):
    path, report = spm_ggufs["both"]
    assert report.passed, report.to_dict()
    step = report.steps[0]
    assert step.details["tokenizer"] == {
        "model": "llama",
        "pre": "default",
        "source": "tokenizer.model",
        "n_tokens": VOCAB,
    }
    check = step.verify["tokenizer"]
    assert check["passed"] is True and check["n_samples"] >= 8 and not check["mismatched"]
    # transformers 5's LlamaTokenizer drops SentencePiece's dummy prefix before a leading
    # space; the GGUF keeps it (as llama.cpp does): a warning, not a failure
    assert len(check["loose_mismatched"]) >= 2
    (note,) = [w for w in step.warnings if w.startswith("tokenizer:")]
    assert "leading spaces" in note and "llama.cpp" in note
    kv = _kv(path)
    assert kv["tokenizer.ggml.model"] == "llama"
    assert "tokenizer.ggml.merges" not in kv  # llama.cpp's SentencePiece tokenizer uses scores
    # the field's own reader of tokenizer.model gives the same pieces, scores and types
    ref = list(gguf.vocab.SentencePieceVocab(spm_folders["both"]).all_tokens())
    n = len(ref)
    assert kv["tokenizer.ggml.tokens"][:n] == [t.decode() for t, _, _ in ref]
    assert kv["tokenizer.ggml.scores"][:n] == pytest.approx([s for _, s, _ in ref])
    assert kv["tokenizer.ggml.token_type"][:n] == [int(k) for _, _, k in ref]
    types = kv["tokenizer.ggml.token_type"]
    tokens = kv["tokenizer.ggml.tokens"]
    assert tokens[4:260] == [f"<0x{b:02X}>" for b in range(256)]
    assert set(types[4:260]) == {6}  # BYTE
    assert types[0] == 2 and types[1] == types[2] == 3  # UNKNOWN, CONTROL
    assert all(
        t == 5 and tok == f"[PAD{i}]" for i, (t, tok) in enumerate(zip(types, tokens)) if i >= n
    )  # padded up to the embedding rows
    assert len(tokens) == VOCAB
    assert (
        kv["tokenizer.ggml.bos_token_id"],
        kv["tokenizer.ggml.eos_token_id"],
        kv["tokenizer.ggml.unknown_token_id"],
        kv["tokenizer.ggml.padding_token_id"],
    ) == (1, 2, 0, 3)
    assert kv["tokenizer.ggml.add_bos_token"] is True
    assert kv["tokenizer.ggml.add_eos_token"] is False
    assert "</s>" in kv["tokenizer.chat_template"]


def test_gguf_tokenizer_encodes_like_the_hf_one(spm_ggufs, spm_folders, spm_bytes):
    from keishiki._convert.gguf_vocab import load_gguf_tokenizer

    hf = transformers.AutoTokenizer.from_pretrained(spm_folders["both"])
    sp = spm.SentencePieceProcessor(model_proto=spm_bytes)
    for kind in ("both", "json", "model"):
        path, _ = spm_ggufs[kind]
        assert _encode_all(_gguf_tokenizer(path)) == _encode_all(hf), kind
        # with keishiki's space fix, texts starting with spaces go like SentencePiece itself
        got = load_gguf_tokenizer(path, _kv(path))
        for text in SAMPLES + SPACED[:2]:
            assert got.encode(text, add_special_tokens=False) == sp.encode(text), (kind, text)
    # byte fallback is really exercised: a character outside the tiny vocabulary
    ids = hf.encode("龘", add_special_tokens=False)
    assert [hf.convert_ids_to_tokens(i) for i in ids[-3:]] == ["<0xE9>", "<0xBE>", "<0x98>"]


def test_byte_fallback_tokenizer_json_is_no_longer_gpt2(spm_ggufs):
    """The old bug: a Llama-2-style tokenizer.json (no tokenizer.model) was written as gpt2."""
    path, report = spm_ggufs["json"]
    assert report.passed and report.steps[0].verify["tokenizer"]["passed"]
    assert report.steps[0].details["tokenizer"]["source"] == "tokenizer.json"
    kv = _kv(path)
    assert kv["tokenizer.ggml.model"] == "llama"
    types, tokens = kv["tokenizer.ggml.token_type"], kv["tokenizer.ggml.tokens"]
    assert [types[tokens.index(f"<0x{b:02X}>")] for b in range(256)] == [6] * 256
    assert types[0] == 2 and types[1] == 3
    assert kv["tokenizer.ggml.add_bos_token"] is True  # from tokenizer.json's post-processor
    # scores recovered from the merge order: a merged token outranks the pieces it joins
    scores = dict(zip(tokens, kv["tokenizer.ggml.scores"]))
    merged = [t for t, ty in zip(tokens, types) if ty == 1 and len(t) > 1][:20]
    assert merged and all(scores[t] > scores[t[-1]] for t in merged)


def test_round_trip_hf_gguf_hf_encodes_identically(spm_ggufs, spm_folders, tmp_path):
    path, _ = spm_ggufs["both"]
    out = tmp_path / "back"
    report = keishiki.convert(path, out, to="hf-model", quiet=True)
    assert report.passed, report.to_dict()
    step = report.steps[0]
    assert {"tokenizer.json", "tokenizer_config.json"} <= set(step.details["files"])
    assert step.verify["tokenizer"]["passed"] is True
    original = transformers.AutoTokenizer.from_pretrained(spm_folders["both"])
    back = transformers.AutoTokenizer.from_pretrained(out)
    assert _encode_all(back) == _encode_all(original)
    assert _encode_all(back, True) == _encode_all(original, True)  # BOS added, as in the source
    assert [back.decode(back.encode(t, add_special_tokens=False)) for t in SAMPLES] == SAMPLES
    assert back.encode("hi")[0] == 1
    data = json.loads((out / "tokenizer.json").read_text())
    assert data["model"]["type"] == "BPE" and data["model"]["byte_fallback"] is True
    assert transformers.AutoModelForCausalLM.from_pretrained(out).config.vocab_size == VOCAB


def test_byte_level_tiny_llama_stays_gpt2(tiny_llama, tmp_path):
    report = keishiki.convert(tiny_llama, tmp_path / "t.gguf", to="gguf", quiet=True)
    assert report.passed
    assert report.steps[0].verify["tokenizer"]["passed"] is True
    kv = _kv(tmp_path / "t.gguf")
    assert kv["tokenizer.ggml.model"] == "gpt2"
    assert "tokenizer.ggml.scores" not in kv and kv["tokenizer.ggml.merges"]


def test_cli_converts_and_reports_the_tokenizer(spm_folders, tmp_path):
    out = tmp_path / "cli.gguf"
    code, stdout, stderr = run_cli(
        "convert", spm_folders["model"], out, "--to", "gguf", "--quant", "f16", "--quiet", "--json"
    )
    assert code == 0, stderr
    report = json.loads(stdout)
    step = report["steps"][0]
    assert report["passed"] is True
    assert step["details"]["tokenizer"]["model"] == "llama"
    assert step["details"]["tokenizer"]["source"] == "tokenizer.model"
    assert step["verify"]["tokenizer"]["passed"] is True
    assert _kv(out)["tokenizer.ggml.model"] == "llama"


def test_tokenizer_mismatch_fails_verification(spm_folders, tmp_path, monkeypatch):
    """The check can fail: scores that merge in the wrong order give exit 1 (Mismatch)."""
    from keishiki._convert import gguf_vocab

    real = gguf_vocab._llama_from_sentencepiece

    def scrambled(*args, **kwargs):
        vocab = real(*args, **kwargs)
        vocab.scores = [-s if ty == 1 else s for s, ty in zip(vocab.scores, vocab.token_types)]
        return vocab

    monkeypatch.setattr(gguf_vocab, "_llama_from_sentencepiece", scrambled)
    out = tmp_path / "bad.gguf"
    code, _, stderr = run_cli("convert", spm_folders["both"], out, "--to", "gguf", "--quiet")
    assert code == 1
    assert "tokenizer encodes differently" in stderr
    assert not out.exists() and (tmp_path / "bad.gguf.unverified").exists()


def test_without_sentencepiece(spm_folders, tmp_path, monkeypatch):
    """tokenizer.model alone needs sentencepiece: a clear warning, the weights still convert;
    with a tokenizer.json next to it, that one is used."""
    from keishiki import _optional

    real = _optional.available
    monkeypatch.setattr(_optional, "available", lambda name: name != "sentencepiece" and real(name))
    report = keishiki.convert(spm_folders["model"], tmp_path / "m.gguf", to="gguf", quiet=True)
    assert report.passed
    (warning,) = [w for w in report.steps[0].warnings if "tokenizer" in w]
    assert "sentencepiece" in warning and "pip install sentencepiece" in warning
    assert "tokenizer.ggml.tokens" not in _kv(tmp_path / "m.gguf")
    report = keishiki.convert(spm_folders["both"], tmp_path / "b.gguf", to="gguf", quiet=True)
    assert report.passed and report.steps[0].details["tokenizer"]["source"] == "tokenizer.json"
    assert _kv(tmp_path / "b.gguf")["tokenizer.ggml.model"] == "llama"


def _vocab_tests(name: str) -> tuple[Path, list[str], list[list[int]]]:
    """llama.cpp's tokenizer test vectors: the vocab-only GGUF, texts and expected ids."""
    path = corpus_path(VOCAB_TESTS.format(name))
    texts = path.with_name(path.name + ".inp").read_text(encoding="utf-8")
    texts = texts.split("\n__ggml_vocab_test__\n")[:-1]
    ids = path.with_name(path.name + ".out").read_text().split("\n")[: len(texts)]
    return path, texts, [[int(i) for i in line.split()] for line in ids]


def test_llama_cpp_llama2_vocab_test_vectors(tmp_path):
    """Llama-2's real vocabulary (32000 pieces, written by llama.cpp's converter): GGUF -> HF
    tokenizer.json -> GGUF again; every step encodes llama.cpp's 46 test texts (spaces,
    newlines, emoji, Cyrillic, CJK...) to exactly llama.cpp's ids."""
    from keishiki._convert.gguf_edges import read_kv
    from keishiki._convert.gguf_vocab import load_gguf_tokenizer, vocab_from_hf, write_hf_tokenizer

    path, texts, expected = _vocab_tests("llama-spm")
    kv = read_kv(gguf.GGUFReader(str(path)))
    folder = tmp_path / "hf"
    folder.mkdir()
    assert {"tokenizer.json", "tokenizer_config.json"} <= set(write_hf_tokenizer(folder, kv, path))
    hf = transformers.AutoTokenizer.from_pretrained(folder)
    assert [hf.encode(t, add_special_tokens=False) for t in texts] == expected
    assert hf.encode("Hello")[0] == 1  # add_bos_token true in the file
    # back to GGUF from tokenizer.json alone: scores recovered from the merge order
    vocab, warnings = vocab_from_hf(folder, 32000)
    assert warnings == [] and vocab.model == "llama" and vocab.source == "tokenizer.json"
    assert vocab.tokens == kv["tokenizer.ggml.tokens"]
    assert vocab.token_types == kv["tokenizer.ggml.token_type"]
    assert vocab.special_ids == {"bos": 1, "eos": 2, "unk": 0}
    assert vocab.add_special["bos"] is True and vocab.add_special["eos"] is False
    mine = tmp_path / "mine.gguf"
    writer = gguf.GGUFWriter(str(mine), "llama")
    vocab.add_to(writer)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    again = load_gguf_tokenizer(mine, read_kv(gguf.GGUFReader(str(mine))))
    assert [again.encode(t, add_special_tokens=False) for t in texts] == expected


def test_llama_cpp_gpt2_vocab_test_vectors(tmp_path):
    from keishiki._convert.gguf_edges import read_kv
    from keishiki._convert.gguf_vocab import write_hf_tokenizer

    path, texts, expected = _vocab_tests("gpt-2")
    write_hf_tokenizer(tmp_path, read_kv(gguf.GGUFReader(str(path))), path)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert [hf.encode(t, add_special_tokens=False) for t in texts] == expected


@pytest.fixture(scope="session")
def llama3_style(tiny_llama, tmp_path_factory) -> Path:
    """The tiny Llama with a Llama-3-style tokenizer: byte-level BPE, ignore_merges, no byte
    fallback, Llama-3's split regex (digits in groups of at most three)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    from keishiki._convert.gguf_vocab import _LLAMA3_SPLIT

    folder = tmp_path_factory.mktemp("llama3") / "llama3"
    shutil.copytree(tiny_llama, folder)
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_LLAMA3,
        show_progress=False,
        special_tokens=["<|begin_of_text|>", "<|end_of_text|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(TEXT + ["1234567890 123456 2024"] * 5, trainer=trainer)
    assert tok.get_vocab_size() == VOCAB_LLAMA3
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (folder / name).unlink(missing_ok=True)
    transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|begin_of_text|>",
        eos_token="<|end_of_text|>",
        model_input_names=["input_ids", "attention_mask"],
    ).save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(bos_token_id=0, eos_token_id=1, pad_token_id=None)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


VOCAB_LLAMA3 = 384  # the tiny Llama's embedding rows


def test_llama3_style_stays_gpt2_with_llama_bpe_pre(llama3_style, tmp_path):
    out = tmp_path / "l3.gguf"
    report = keishiki.convert(llama3_style, out, to="gguf", quiet=True)
    assert report.passed, report.to_dict()
    step = report.steps[0]
    assert step.details["tokenizer"]["model"] == "gpt2"
    assert step.verify["tokenizer"]["passed"] is True and not step.verify["tokenizer"]["warnings"]
    kv = _kv(out)
    assert (kv["tokenizer.ggml.model"], kv["tokenizer.ggml.pre"]) == ("gpt2", "llama-bpe")
    # the pre-tokenizer name matters: digits split in threes, as in the source
    hf = transformers.AutoTokenizer.from_pretrained(llama3_style)
    got = _gguf_tokenizer(out)
    digits = "1234567890 123456"
    assert got.encode(digits, add_special_tokens=False) == hf.encode(
        digits, add_special_tokens=False
    )
    assert all(len(t.strip("Ġ")) <= 3 for t in got.tokenize(digits))


def test_llama3_style_round_trip_keeps_the_split(llama3_style, tmp_path):
    gguf_path = tmp_path / "l3.gguf"
    assert keishiki.convert(llama3_style, gguf_path, to="gguf", quiet=True).passed
    out = tmp_path / "back"
    report = keishiki.convert(gguf_path, out, to="hf-model", quiet=True)
    assert report.passed and report.steps[0].verify["tokenizer"]["passed"] is True
    hf = transformers.AutoTokenizer.from_pretrained(llama3_style)
    back = transformers.AutoTokenizer.from_pretrained(out)
    texts = SAMPLES + ["1234567890 123456", " leading space"]
    assert [back.encode(t, add_special_tokens=False) for t in texts] == [
        hf.encode(t, add_special_tokens=False) for t in texts
    ]


def test_gguf_written_next_to_another_tokenizer(spm_folders, tiny_llama, tmp_path):
    """transformers prefers a tokenizer.json beside a GGUF over the GGUF's own vocabulary: the
    check must still read the GGUF (a GGUF written into a model folder)."""
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_llama / name, tmp_path / name)  # the byte-level one: a decoy
    report = keishiki.convert(spm_folders["both"], tmp_path / "spm.gguf", to="gguf", quiet=True)
    assert report.passed and report.steps[0].verify["tokenizer"]["passed"] is True


def test_vocab_edge_cases(spm_folders, tmp_path):
    """A broken tokenizer.model falls back to tokenizer.json; a tokenizer bigger than the
    embedding is cut with a warning; a pad id of -1 in config.json means none."""
    from keishiki._convert.gguf_vocab import vocab_from_hf

    folder = tmp_path / "broken"
    shutil.copytree(spm_folders["both"], folder)
    (folder / "tokenizer.model").write_bytes(b"not a protobuf")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(dict(config, pad_token_id=-1)))
    vocab, warnings = vocab_from_hf(folder, VOCAB)
    assert vocab.model == "llama" and vocab.source == "tokenizer.json"
    assert any("tokenizer.model not readable" in w for w in warnings)
    assert vocab.special_ids["bos"] == 1 and vocab.special_ids["eos"] == 2
    vocab, warnings = vocab_from_hf(spm_folders["both"], 300)
    assert len(vocab.tokens) == len(vocab.scores) == len(vocab.token_types) == 300
    assert any("left out" in w for w in warnings)


def test_space_prefix_follows_the_source_as_llama_cpp_writes_it(spm_ggufs, spm_weights, tmp_path):
    """llama.cpp's converter writes tokenizer.model's add_dummy_prefix as
    ``tokenizer.ggml.add_space_prefix``: True for Llama-2-style models (also read from a
    tokenizer.json's Prepend normalizer), False for Gemma-style ones, where a reader that
    assumed llama.cpp's default would put "▁" before every text."""
    for kind in ("both", "json", "model"):
        assert _kv(spm_ggufs[kind][0])["tokenizer.ggml.add_space_prefix"] is True, kind
    from keishiki._convert.gguf_vocab import _json_dummy_prefix, vocab_from_hf

    folder = tmp_path / "no-prefix"
    folder.mkdir()
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(TEXT),
        model_writer=buf,
        model_type="bpe",
        vocab_size=PIECES,
        byte_fallback=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=3,
        character_coverage=1.0,
        hard_vocab_limit=False,
        minloglevel=2,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
    )
    (folder / "tokenizer.model").write_bytes(buf.getvalue())
    vocab, _warnings = vocab_from_hf(folder, VOCAB)
    assert (vocab.model, vocab.source, vocab.add_space_prefix) == (
        "llama",
        "tokenizer.model",
        False,
    )
    # a Gemma-style tokenizer.json: spaces replaced by "▁", nothing prepended
    gemma = {"normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}}
    assert _json_dummy_prefix(gemma) is False
    metaspace = {
        "pre_tokenizer": {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first"}
    }
    assert _json_dummy_prefix(metaspace) is True
