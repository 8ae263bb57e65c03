"""Tokenizers between a Hugging Face folder and GGUF's ``tokenizer.ggml.*`` metadata.

Two of llama.cpp's tokenizer models are written:

- ``llama`` (SentencePiece): Llama-2, Mistral, TinyLlama... Read from ``tokenizer.model`` with
  ``gguf.vocab.SentencePieceVocab`` (real scores; needs the ``sentencepiece`` package), else from
  a ``tokenizer.json`` whose BPE model has ``byte_fallback`` (``<0x00>``..``<0xFF>`` byte tokens,
  ``▁`` meta-space); there the scores are recovered from the merge order, because llama.cpp's
  SentencePiece tokenizer merges by score and ignores merges.
- ``gpt2`` (byte-level BPE, no byte fallback): tokens and merges as they are; a Llama-3 split
  regex is named ``llama-bpe`` so llama.cpp pre-tokenizes like the original.

Special token ids, ``add_bos_token``/``add_eos_token`` and the chat template come from
``gguf.SpecialVocab`` (llama.cpp's own reader of tokenizer_config.json/config.json).  GGUF
token types (llama.cpp): 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused (padding up
to the config's vocab size), 6 byte.  GGUF → HF rebuilds gpt2 vocabularies here and hands
``llama`` ones to transformers' own GGUF tokenizer loader.  :func:`compare_encodings` checks
either direction by encoding sample texts with both tokenizers.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")
# llama.cpp's scores for rows without a token (convert_hf_to_gguf fills them the same way)
PAD_SCORE, ADDED_SCORE = -10000.0, -1000.0
# the split regex of Llama-3's tokenizer.json; llama.cpp calls that pre-tokenizer "llama-bpe"
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


@dataclass
class GGUFVocab:
    """A tokenizer as the ``tokenizer.ggml.*`` keys llama.cpp reads.

    ``scores`` is None for gpt2 (no scores), ``merges`` None for llama (llama.cpp ignores them).
    """

    model: str  # "llama" | "gpt2"
    pre: str
    tokens: list[str]
    token_types: list[int]
    scores: list[float] | None = None
    merges: list[str] | None = None
    source: str = ""  # the file it was read from
    special_ids: dict[str, int] = field(default_factory=dict)
    add_special: dict[str, bool] = field(default_factory=dict)
    chat_template: Any = None
    # SentencePiece's dummy prefix ("▁" before the text); None: leave llama.cpp's default
    add_space_prefix: bool | None = None

    def add_to(self, writer) -> None:
        """Write every tokenizer key into a ``gguf.GGUFWriter``."""
        writer.add_tokenizer_model(self.model)
        writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        if self.scores is not None:
            writer.add_token_scores(self.scores)
        writer.add_token_types(self.token_types)
        if self.merges is not None:
            writer.add_token_merges(self.merges)
        for kind, idx in self.special_ids.items():
            setter = getattr(writer, f"add_{kind}_token_id", None)
            if setter is not None:
                setter(idx)
        for kind, value in self.add_special.items():
            setter = getattr(writer, f"add_add_{kind}_token", None)
            if setter is not None:
                setter(value)
        if self.add_space_prefix is not None:
            writer.add_add_space_prefix(self.add_space_prefix)
        if self.chat_template:
            writer.add_chat_template(self.chat_template)

    def required_keys(self) -> list[str]:
        """The metadata keys a reader must find back for this vocabulary."""
        keys = ["tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type"]
        keys.append("tokenizer.ggml.scores" if self.scores is not None else "tokenizer.ggml.merges")
        return keys


# ---- HF -> GGUF ---------------------------------------------------------------------------


def vocab_from_hf(folder: Path, vocab_size: int) -> tuple[GGUFVocab | None, list[str]]:
    """The folder's tokenizer as a GGUF vocabulary, and warnings.

    Prefers ``tokenizer.model`` (SentencePiece: real scores) when the ``sentencepiece`` package
    is installed; else ``tokenizer.json`` (byte-fallback BPE → ``llama``, byte-level BPE →
    ``gpt2``).  The token list is padded with unused ``[PADn]`` tokens, or cut, to
    ``vocab_size`` (the embedding rows), as llama.cpp's converter does.

    Args:
        folder: the Hugging Face model folder.
        vocab_size: rows of the embedding matrix (config ``vocab_size``).

    Returns:
        (vocab or None when nothing could be converted, warnings for the report).
    """
    warnings: list[str] = []
    spm_file, json_file = folder / "tokenizer.model", folder / "tokenizer.json"
    data = _read_json(json_file)
    model = (data or {}).get("model") or {}
    is_bpe = model.get("type") == "BPE" and isinstance(model.get("vocab"), dict)
    vocab: GGUFVocab | None = None
    if spm_file.is_file():
        from .._optional import available

        if available("sentencepiece"):
            vocab = _llama_from_sentencepiece(folder, vocab_size, data, warnings)
        elif not (is_bpe and model.get("byte_fallback")):
            warnings.append(
                "tokenizer not converted: tokenizer.model needs the sentencepiece "
                "package (pip install sentencepiece) and there is no byte-fallback "
                "tokenizer.json to use instead"
            )
            return None, warnings
    if vocab is None and data is not None:
        if not is_bpe:
            warnings.append(
                f"tokenizer not converted: tokenizer.json model "
                f"{model.get('type')!r} (only BPE tokenizers are written to GGUF)"
            )
            return None, warnings
        if model.get("byte_fallback"):
            vocab = _llama_from_tokenizer_json(data, _unk_token(folder, model))
        else:
            vocab = _gpt2_from_tokenizer_json(data)
    if vocab is None:
        if not warnings:
            warnings.append("tokenizer not converted (no tokenizer.json or tokenizer.model)")
        return None, warnings
    _fit(vocab, vocab_size, warnings)
    _specials(vocab, folder, warnings)
    return vocab, warnings


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _llama_from_sentencepiece(
    folder: Path, vocab_size: int, data: dict | None, warnings: list[str]
) -> GGUFVocab | None:
    """llama.cpp's ``_create_vocab_sentencepiece``: the SentencePiece pieces, scores and types
    (``gguf.vocab.SentencePieceVocab``), then the HF added tokens laid over them."""
    from gguf.vocab import SentencePieceVocab

    try:
        # only called when folder/tokenizer.model exists, so it never looks in folder.parent
        spm = SentencePieceVocab(folder)
        rows = list(spm.all_tokens())
    except Exception as exc:  # a broken protobuf or added_tokens.json: say so, don't crash
        warnings.append(
            f"tokenizer.model not readable by sentencepiece ({exc}); trying tokenizer.json"
        )
        return None
    vocab = GGUFVocab(
        model="llama",
        pre="default",
        source="tokenizer.model",
        tokens=[t.decode("utf-8") for t, _, _ in rows],
        scores=[float(s) for _, s, _ in rows],
        token_types=[int(k) for _, _, k in rows],
        add_space_prefix=_spm_dummy_prefix(spm),
    )
    _fit(vocab, vocab_size, warnings)
    for idx, content, special in _hf_added_tokens(folder, data):
        if idx >= len(vocab.tokens):
            continue
        if vocab.tokens[idx] == content and vocab.token_types[idx] in (CONTROL, UNKNOWN):
            continue  # already special in tokenizer.model: keep its own type and score
        if special:
            vocab.token_types[idx] = CONTROL
        else:  # llama.cpp pre-normalizes the meta-space of user-defined tokens
            content = content.replace("\u2581", " ")
            vocab.token_types[idx] = USER_DEFINED
        vocab.tokens[idx], vocab.scores[idx] = content, ADDED_SCORE
    return vocab


def _spm_dummy_prefix(spm) -> bool | None:
    """The model's ``normalizer_spec.add_dummy_prefix``, which llama.cpp's converter writes as
    ``add_space_prefix``: Llama-2's models set it, Gemma's do not (there llama.cpp would put a
    "▁" before every text the HF tokenizer does not).  Read by encoding one letter, so no
    protobuf module is needed."""
    try:
        pieces = spm.sentencepiece_tokenizer.encode("a", out_type=str)
    except Exception:  # an API change: keep llama.cpp's default
        return None
    return bool(pieces) and pieces[0].startswith("\u2581")


def _json_dummy_prefix(data: dict) -> bool | None:
    """Whether a SentencePiece-style tokenizer.json puts "▁" before the text: a ``Prepend``
    normalizer (transformers' Llama conversion) or a ``Metaspace`` pre-tokenizer that
    prepends; None when neither is there to say."""

    def steps(node: Any) -> list[dict]:
        if not isinstance(node, dict):
            return []
        inner = node.get("normalizers") or node.get("pretokenizers")
        return [n for n in inner if isinstance(n, dict)] if isinstance(inner, list) else [node]

    normalizers = steps(data.get("normalizer"))
    pre = steps(data.get("pre_tokenizer"))
    if any(n.get("type") == "Prepend" and n.get("prepend") == "\u2581" for n in normalizers):
        return True
    for step in pre:
        if step.get("type") == "Metaspace":
            scheme = step.get(
                "prepend_scheme", "always" if step.get("add_prefix_space", True) else "never"
            )
            return scheme != "never"
    return False if any(n.get("type") == "Replace" for n in normalizers) else None


def _hf_added_tokens(folder: Path, data: dict | None) -> list[tuple[int, str, bool]]:
    """(id, content, special) of tokens added on the HF side: tokenizer_config.json's
    ``added_tokens_decoder`` (what llama.cpp reads), else tokenizer.json's ``added_tokens``."""
    config = _read_json(folder / "tokenizer_config.json") or {}
    decoder = config.get("added_tokens_decoder")
    out = []
    if isinstance(decoder, dict) and decoder:
        for key, entry in decoder.items():
            if (
                str(key).isdigit()
                and isinstance(entry, dict)
                and isinstance(entry.get("content"), str)
            ):
                out.append((int(key), entry["content"], bool(entry.get("special"))))
        return out
    for entry in (data or {}).get("added_tokens") or []:
        if isinstance(entry.get("id"), int) and isinstance(entry.get("content"), str):
            out.append((entry["id"], entry["content"], bool(entry.get("special"))))
    return out


def _unk_token(folder: Path, model: dict) -> str | None:
    """The unknown token: the BPE model's, else tokenizer_config.json's (transformers 5 no
    longer writes it into the model)."""
    if isinstance(model.get("unk_token"), str):
        return model["unk_token"]
    value = (_read_json(folder / "tokenizer_config.json") or {}).get("unk_token")
    if isinstance(value, dict):  # an AddedToken written out
        value = value.get("content")
    return value if isinstance(value, str) else None


def _llama_from_tokenizer_json(data: dict, unk: str | None) -> GGUFVocab:
    """A byte-fallback BPE tokenizer.json (SentencePiece converted by transformers) as a
    ``llama`` vocabulary.  llama.cpp merges the adjacent pair whose joined text has the best
    score, so each token scores minus the rank of the first merge that makes it: the merge
    order survives, and transformers' GGUF loader rebuilds the same merges from it."""
    model = data["model"]
    by_id: dict[int, str] = {int(i): tok for tok, i in model["vocab"].items()}
    first_rank: dict[str, int] = {}
    for rank, merge in enumerate(model.get("merges") or []):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        first_rank.setdefault(left + right, rank)
    n_merges = len(first_rank)
    types: dict[int, int] = {}
    for added in data.get("added_tokens") or []:
        by_id[int(added["id"])] = added["content"]
        types[int(added["id"])] = CONTROL if added.get("special") else USER_DEFINED
    size = max(by_id) + 1 if by_id else 0
    tokens, scores, token_types = [], [], []
    for i in range(size):
        text = by_id.get(i)
        if text is None:
            tokens.append(f"[PAD{i}]"), scores.append(PAD_SCORE), token_types.append(UNUSED)
            continue
        kind = types.get(i, NORMAL)
        if text == unk:
            kind = UNKNOWN
        elif kind == NORMAL and _BYTE_TOKEN.fullmatch(text):
            kind = BYTE
        if kind == USER_DEFINED:
            score = ADDED_SCORE
        elif kind != NORMAL:
            score = 0.0  # SentencePiece gives control, unknown and byte pieces 0
        elif text in first_rank:
            score = -float(first_rank[text])
        else:  # single characters: below every merge, as SentencePiece ranks them
            score = -float(n_merges + i)
        tokens.append(text), scores.append(score), token_types.append(kind)
    return GGUFVocab(
        model="llama",
        pre="default",
        tokens=tokens,
        scores=scores,
        token_types=token_types,
        source="tokenizer.json",
        add_space_prefix=_json_dummy_prefix(data),
    )


def _gpt2_from_tokenizer_json(data: dict) -> GGUFVocab:
    """A byte-level BPE tokenizer.json as a ``gpt2`` vocabulary (tokens, merges, types)."""
    model = data["model"]
    by_id: dict[int, str] = {int(i): tok for tok, i in model["vocab"].items()}
    types: dict[int, int] = {}
    for added in data.get("added_tokens") or []:
        by_id[int(added["id"])] = added["content"]
        types[int(added["id"])] = CONTROL if added.get("special") else USER_DEFINED
    size = max(by_id) + 1 if by_id else 0
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(size)]
    token_types = [types.get(i, NORMAL) if i in by_id else UNUSED for i in range(size)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    return GGUFVocab(
        model="gpt2",
        pre=_gpt2_pre(data),
        tokens=tokens,
        token_types=token_types,
        merges=merges,
        source="tokenizer.json",
    )


def _gpt2_pre(data: dict) -> str:
    """llama.cpp's pre-tokenizer name: ``llama-bpe`` for Llama-3's split regex, ``gpt-2`` for
    GPT-2's own (a lone ByteLevel step with its regex), else ``default``.  llama.cpp's
    ``default`` is not GPT-2's split: it groups digits in threes, so "3.14159" and
    "1,000,000" would tokenize differently from the HF tokenizer."""
    pre = data.get("pre_tokenizer") or {}
    for step in pre.get("pretokenizers") or [pre]:
        pattern = (step.get("pattern") or {}) if step.get("type") == "Split" else {}
        if pattern.get("Regex") == _LLAMA3_SPLIT:
            return "llama-bpe"
    return "gpt-2" if is_gpt2_split(pre) else "default"


def is_gpt2_split(pre_tokenizer: dict) -> bool:
    """True for GPT-2's own split: a lone ``ByteLevel`` pre-tokenizer with its regex on."""
    steps = pre_tokenizer.get("pretokenizers") or [pre_tokenizer]
    return (
        len(steps) == 1 and steps[0].get("type") == "ByteLevel" and steps[0].get("use_regex", True)
    )


def _fit(vocab: GGUFVocab, vocab_size: int, warnings: list[str]) -> None:
    """Pad with unused ``[PADn]`` tokens, or cut, to the embedding's ``vocab_size`` rows."""
    n = len(vocab.tokens)
    if n > vocab_size > 0:
        warnings.append(
            f"{vocab.source} has {n} tokens but the model {vocab_size} embedding "
            f"rows: tokens from id {vocab_size} on are left out (as llama.cpp does)"
        )
        del vocab.tokens[vocab_size:], vocab.token_types[vocab_size:]
        if vocab.scores is not None:
            del vocab.scores[vocab_size:]
    for i in range(n, vocab_size):
        vocab.tokens.append(f"[PAD{i}]")
        vocab.token_types.append(UNUSED)
        if vocab.scores is not None:
            vocab.scores.append(PAD_SCORE)


def _specials(vocab: GGUFVocab, folder: Path, warnings: list[str]) -> None:
    """Special ids, add_bos/add_eos and chat template through ``gguf.SpecialVocab``."""
    import logging

    from gguf import SpecialVocab

    # its notes on template details would reach the CLI's stderr through logging's last resort
    log = logging.getLogger("gguf.vocab")
    level = log.level
    log.setLevel(logging.ERROR)
    # a negative id in config.json ("pad_token_id": -1) means none, but SpecialVocab raises on it
    config = _read_json(folder / "config.json") or {}
    kinds = tuple(
        k
        for k in ("bos", "eos", "unk", "sep", "pad", "cls", "mask")
        if not (isinstance(config.get(f"{k}_token_id"), int) and config[f"{k}_token_id"] < 0)
    )
    try:
        special = SpecialVocab(
            folder, load_merges=False, n_vocab=len(vocab.tokens), special_token_types=kinds
        )
    except (ValueError, OSError) as exc:  # e.g. a negative pad_token_id in config.json
        warnings.append(f"special tokens not converted ({exc})")
        return
    finally:
        log.setLevel(level)
    vocab.special_ids = dict(special.special_token_ids)
    vocab.add_special = dict(special.add_special_token)
    vocab.chat_template = special.chat_template or _chat_template(folder)
    data = _read_json(folder / "tokenizer.json") if vocab.source == "tokenizer.json" else None
    post = (data or {}).get("post_processor") or {}
    if vocab.model == "llama" and post.get("type") == "TemplateProcessing":
        # llama.cpp adds BOS to a SentencePiece vocabulary unless told not to, while this
        # tokenizer.json's template says what HF does: write it down explicitly
        single = post.get("single") or []
        vocab.add_special.setdefault("bos", bool(single) and "SpecialToken" in single[0])
        vocab.add_special.setdefault("eos", len(single) > 1 and "SpecialToken" in single[-1])


def _chat_template(folder: Path) -> str | None:
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    value = (_read_json(folder / "tokenizer_config.json") or {}).get("chat_template")
    return value if isinstance(value, str) else None


# ---- GGUF -> HF ---------------------------------------------------------------------------


def write_hf_tokenizer(out: Path, kv: dict[str, Any], gguf_path: Path | None = None) -> list[str]:
    """Write tokenizer.json / tokenizer_config.json (and chat_template.jinja) into ``out``.

    A ``gpt2`` vocabulary with GPT-2's own split (pre ``default``/``gpt-2``) is rebuilt here
    with ``tokenizers``; a ``llama`` (SentencePiece) one, or a gpt2 one with another split
    (``llama-bpe``...), is loaded by transformers' GGUF tokenizer loader from ``gguf_path``
    (which knows those splits) and saved with ``save_pretrained``.

    Returns:
        the file names written ([] for a vocabulary of another kind).
    """
    model = kv.get("tokenizer.ggml.model")
    if "tokenizer.ggml.tokens" not in kv:
        return []
    gpt2_split = kv.get("tokenizer.ggml.pre", "default") in ("default", "gpt-2")
    if model == "gpt2" and (gpt2_split or gguf_path is None):
        return _write_gpt2_hf(out, kv)
    if model in ("llama", "gpt2") and gguf_path is not None:
        return _write_with_transformers(out, kv, gguf_path)
    return []


def load_gguf_tokenizer(gguf_path: Path, kv: dict[str, Any], generic: bool = False):
    """transformers' tokenizer for a GGUF file, BOS/EOS and spaces as llama.cpp handles them.

    Two corrections on top of transformers' GGUF loader (5.x), both checked against
    llama.cpp's own test vectors for the Llama-2 vocabulary (ggml-vocab-llama-spm.gguf.inp/.out):

    - its generic tokenizer class ignores ``add_bos_token``, so the flags are passed explicitly
      (llama.cpp's defaults: BOS on for ``llama``, off for gpt2);
    - for ``llama`` it pre-tokenizes with ``Metaspace(prepend_scheme="first")``, which drops the
      dummy-prefix space before text that already starts with one (" Hello" → ``▁Hello``
      where SentencePiece and llama.cpp give ``▁ ▁Hello``); SentencePiece's own normalizer
      (prepend ``▁`` when ``add_space_prefix``, then every space → ``▁``, as Llama-2's
      tokenizer.json has it) is put in its place.

    Args:
        gguf_path: the GGUF file (only its metadata is read).
        kv: its ``tokenizer.ggml.*`` metadata (model, add_bos/add_eos/add_space_prefix).
        generic: load with transformers' generic ``TokenizersBackend`` (what ``AutoTokenizer``
            picks for an architecture without a tokenizer class of its own) instead of
            ``AutoTokenizer``, which first builds the model's config from the file, and for
            most architectures that needs torch (see :mod:`.encodings`).

    Raises:
        MissingDependency: transformers is not installed.
    """
    import tempfile

    from .._optional import require

    transformers = require("transformers", extra="hf", purpose="load a GGUF tokenizer")
    llama = kv.get("tokenizer.ggml.model") == "llama"
    add_bos = kv.get("tokenizer.ggml.add_bos_token", llama)
    add_eos = kv.get("tokenizer.ggml.add_eos_token", False)
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # its info lines are not ours to print
    # from_pretrained prefers a tokenizer.json/tokenizer.model next to the GGUF over the GGUF
    # itself (a GGUF written into its model's folder): load it alone, through a link
    with tempfile.TemporaryDirectory(prefix="keishiki-gguf-tok-") as alone:
        folder, name = str(gguf_path.parent), gguf_path.name
        try:
            (Path(alone) / "model.gguf").symlink_to(gguf_path.resolve())
            folder, name = alone, "model.gguf"
        except OSError:  # no symlinks here (Windows without the privilege): best effort
            pass
        try:
            loader = transformers.TokenizersBackend if generic else transformers.AutoTokenizer
            tokenizer = loader.from_pretrained(
                folder, gguf_file=name, add_bos_token=bool(add_bos), add_eos_token=bool(add_eos)
            )
        finally:
            transformers.logging.set_verbosity(verbosity)
    if llama and kv.get("general.architecture", "llama") == "llama":
        from tokenizers import normalizers

        steps = [normalizers.Replace(" ", "\u2581")]
        if kv.get("tokenizer.ggml.add_space_prefix", True):
            steps.insert(0, normalizers.Prepend("\u2581"))
        backend = tokenizer.backend_tokenizer
        backend.normalizer = normalizers.Sequence(steps)
        backend.pre_tokenizer = None
    return tokenizer


def _write_with_transformers(out: Path, kv: dict[str, Any], gguf_path: Path) -> list[str]:
    before = {p.name for p in out.iterdir()}
    tokenizer = load_gguf_tokenizer(gguf_path, kv)
    tokenizer.save_pretrained(str(out))
    return sorted({p.name for p in out.iterdir()} - before)


def _write_gpt2_hf(out: Path, kv: dict[str, Any]) -> list[str]:
    from .._optional import require

    require("tokenizers", extra="hf", purpose="rebuild the tokenizer from GGUF")
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    tokens: list[str] = list(kv["tokenizer.ggml.tokens"])
    types: list[int] = list(kv.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens))
    merges = [tuple(m.split(" ", 1)) for m in kv.get("tokenizer.ggml.merges") or []]
    # every token stays in the BPE vocab (as HF trainers put specials there too), so the
    # special tokens added below keep their ids instead of getting new ones
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = [
        (i, t, ty) for i, (t, ty) in enumerate(zip(tokens, types)) if ty in (CONTROL, USER_DEFINED)
    ]
    for _id, text, ty in specials:  # added in id order so they keep their ids
        added = AddedToken(text, special=ty == CONTROL, normalized=False)
        (tok.add_special_tokens if ty == CONTROL else tok.add_tokens)([added])
    flags = _add_special_flags(kv, tokens)
    template = special_template(*flags.values())
    if template is not None:
        tok.post_processor = template
    tok.save(str(out / "tokenizer.json"))
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_input_names": ["input_ids", "attention_mask"],
    }
    # what the template does, said where transformers' Llama-style classes read it
    config.update({f"add_{k}_token": v is not None for k, v in flags.items()})
    for key, name in (
        ("bos_token_id", "bos_token"),
        ("eos_token_id", "eos_token"),
        ("padding_token_id", "pad_token"),
        ("unknown_token_id", "unk_token"),
    ):
        idx = kv.get(f"tokenizer.ggml.{key}")
        if isinstance(idx, int) and 0 <= idx < len(tokens):
            config[name] = tokens[idx]
    written = ["tokenizer.json", "tokenizer_config.json"]
    template = kv.get("tokenizer.chat_template")
    if isinstance(template, str):
        (out / "chat_template.jinja").write_text(template, encoding="utf-8")
        written.append("chat_template.jinja")
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return written


def _add_special_flags(kv: dict[str, Any], tokens: list[str]) -> dict[str, tuple[str, int] | None]:
    """{"bos": (token, id) or None, "eos": ...}: the special tokens llama.cpp adds around
    every text (``tokenizer.ggml.add_bos_token``/``add_eos_token``; both off by default for
    a gpt2 vocabulary, as llama.cpp has it)."""
    out: dict[str, tuple[str, int] | None] = {}
    for kind in ("bos", "eos"):
        idx = kv.get(f"tokenizer.ggml.{kind}_token_id")
        wanted = kv.get(f"tokenizer.ggml.add_{kind}_token") is True
        ok = isinstance(idx, int) and not isinstance(idx, bool) and 0 <= idx < len(tokens)
        out[kind] = (tokens[idx], idx) if wanted and ok else None
    return out


def special_template(bos: tuple[str, int] | None, eos: tuple[str, int] | None):
    """A ``tokenizers`` post-processor adding ``bos``/``eos`` (token, id) around each
    sequence as HF's Llama tokenizers do (``<s> $A </s>``, pairs ``<s> $A </s> <s> $B </s>``);
    None when neither is added.

    Why: a fast tokenizer adds special tokens only through its tokenizer.json post-processor;
    transformers 5's generic class ignores ``add_bos_token`` in tokenizer_config.json.
    """
    if bos is None and eos is None:
        return None
    from tokenizers import processors

    def seq(name: str, type_id: int) -> str:
        parts = [
            f"{bos[0]}:{type_id}" if bos else "",
            f"${name}:{type_id}",
            f"{eos[0]}:{type_id}" if eos else "",
        ]
        return " ".join(p for p in parts if p)

    specials = list(dict.fromkeys(t for t in (bos, eos) if t is not None))
    return processors.TemplateProcessing(
        single=seq("A", 0), pair=f"{seq('A', 0)} {seq('B', 1)}", special_tokens=specials
    )


# ---- verification -------------------------------------------------------------------------

# Text whose tokens must agree: plain text, no leading space, no special-token boundary.
STRICT_SAMPLES = [
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "初めまして、こんにちは。今日はいい天気ですね。",
    "emoji 🦙🚀 and ümlauts, naïve façade",
    "digits 0123456789 and 3.14159 or 1,000,000",
    "inner   spaces,\ttabs and\nnew lines",
]
# Text where HF tokenizers and llama.cpp follow different conventions: transformers 5's
# LlamaTokenizer skips SentencePiece's dummy-prefix space before text that starts with a space
# and after a special token, llama.cpp does not.  A difference here is a warning.
LOOSE_SAMPLES = ["  two leading spaces", " one leading space", "<s>after a special</s> token"]


def compare_encodings(expected_tok, got_tok) -> dict[str, Any]:
    """Encode the sample texts with both tokenizers and compare the ids.

    Each sample is encoded without special tokens (the vocabulary and its merges); the first
    one also with them (whether BOS/EOS are added, i.e. the written flags).

    Args:
        expected_tok: the reference tokenizer (the source's, loaded by transformers).
        got_tok: the converted one (for GGUF, transformers' GGUF loader with the file's flags).

    Returns:
        ``{"method": "encode", "library": "transformers", "passed", "n_samples",
        "mismatched": [...], "warnings": [...]}`` (plus ``reason`` when not passed);
        ``passed`` is False when a strict sample differs; loose samples only add warnings.
    """
    mismatched: list[str] = []
    loose: list[str] = []
    for text, strict in [(t, True) for t in STRICT_SAMPLES] + [(t, False) for t in LOOSE_SAMPLES]:
        want = list(expected_tok.encode(text, add_special_tokens=False))
        got = list(got_tok.encode(text, add_special_tokens=False))
        if want != got:
            line = f"{text!r}: {_ids(want)} != {_ids(got)}"
            (mismatched if strict else loose).append(line)
    notes = []
    if loose:
        notes.append(
            f"{len(loose)} of {len(LOOSE_SAMPLES)} texts with leading spaces or special "
            f"tokens encode differently (the source's space convention is not "
            f"llama.cpp's), e.g. {loose[0]}"
        )
    text = STRICT_SAMPLES[0]
    want, got = list(expected_tok.encode(text)), list(got_tok.encode(text))
    if want != got:
        mismatched.append(
            f"with special tokens (BOS/EOS flags) {text!r}: {_ids(want)} != {_ids(got)}"
        )
    result: dict[str, Any] = {
        "method": "encode",
        "library": "transformers",
        "passed": not mismatched,
        "n_samples": len(STRICT_SAMPLES) + len(LOOSE_SAMPLES),
        "mismatched": mismatched,
        "loose_mismatched": loose,
        "warnings": notes,
    }
    if mismatched:
        result["reason"] = "tokenizer encodes differently: " + "; ".join(mismatched[:2])
    return result


def _ids(ids: list[int]) -> str:
    return str(ids if len(ids) <= 12 else ids[:12] + ["..."])
