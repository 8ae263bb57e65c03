"""Tokenizers between Hugging Face ``tokenizer.json`` (byte-level BPE) and GGUF's
``tokenizer.ggml.*`` arrays (the ``gpt2`` tokenizer model of llama.cpp).

GGUF token types (llama.cpp): 1 normal, 2 unknown, 3 control (special), 4 user-defined,
5 unused (padding up to the config's vocab size), 6 byte.  SentencePiece (``tokenizer.model``)
vocabularies are not converted: the caller gets a warning instead.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5


def vocab_from_hf(folder: Path, vocab_size: int) -> dict[str, Any] | None:
    """``{"model", "pre", "tokens", "token_types", "merges", "chat_template"}`` from an HF
    folder's tokenizer.json (byte-level BPE only); None when there is none to convert."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    model = data.get("model") or {}
    if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        return None
    by_id: dict[int, str] = {int(i): tok for tok, i in model["vocab"].items()}
    types: dict[int, int] = {}
    for added in data.get("added_tokens") or []:
        by_id[int(added["id"])] = added["content"]
        types[int(added["id"])] = CONTROL if added.get("special") else USER_DEFINED
    size = max(vocab_size, max(by_id) + 1 if by_id else 0)
    tokens, token_types = [], []
    for i in range(size):
        if i in by_id:
            tokens.append(by_id[i])
            token_types.append(types.get(i, NORMAL))
        else:  # llama.cpp pads the vocab to the embedding rows the same way
            tokens.append(f"[PAD{i}]")
            token_types.append(UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    return {"model": "gpt2", "pre": "default", "tokens": tokens, "token_types": token_types,
            "merges": merges, "chat_template": _chat_template(folder)}


def _chat_template(folder: Path) -> str | None:
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    config = folder / "tokenizer_config.json"
    if config.is_file():
        value = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
        return value if isinstance(value, str) else None
    return None


def write_hf_tokenizer(out: Path, kv: dict[str, Any]) -> list[str]:
    """Write tokenizer.json / tokenizer_config.json (and chat_template.jinja) into ``out`` from
    GGUF ``tokenizer.ggml.*`` metadata of a ``gpt2`` vocabulary; returns the files written
    ([] when the vocabulary is of another kind)."""
    if kv.get("tokenizer.ggml.model") != "gpt2" or "tokenizer.ggml.tokens" not in kv:
        return []
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
    specials = [(i, t, ty) for i, (t, ty) in enumerate(zip(tokens, types))
                if ty in (CONTROL, USER_DEFINED)]
    for i, text, ty in specials:  # added in id order so they keep their ids
        added = AddedToken(text, special=ty == CONTROL, normalized=False)
        (tok.add_special_tokens if ty == CONTROL else tok.add_tokens)([added])
    tok.save(str(out / "tokenizer.json"))
    config: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast",
                              "model_input_names": ["input_ids", "attention_mask"]}
    for key, name in (("bos_token_id", "bos_token"), ("eos_token_id", "eos_token"),
                      ("padding_token_id", "pad_token"), ("unknown_token_id", "unk_token")):
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
