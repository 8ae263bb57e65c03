"""A model folder's tokenizer without transformers: ``tokenizer.json`` through the
``tokenizers`` library, special tokens from the config files, chat templates through jinja2.

The chat template is rendered the way transformers renders it (a sandboxed jinja2
environment with ``trim_blocks``/``lstrip_blocks``, ``raise_exception`` and ``tojson``), and the
rendered prompt is encoded without adding special tokens again, as transformers and vLLM do.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .._optional import require
from ..errors import InvalidRequest, RuntimeUnavailable


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def _token_text(value: Any) -> str | None:
    """A special token as written in tokenizer_config.json: a string or an AddedToken dict."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def find_tokenizer_dir(model: Path, tokenizer: str | os.PathLike | None) -> Path:
    """Where the tokenizer files are: ``tokenizer`` if given, else the model folder, else the
    folder holding the model file.

    Raises:
        RuntimeUnavailable: no ``tokenizer.json`` there (says to pass ``tokenizer=``).
    """
    if tokenizer is not None:
        candidates = [Path(tokenizer)]
    else:
        candidates = [model] if model.is_dir() else [model.parent]
    for folder in candidates:
        if folder.is_file() and folder.name == "tokenizer.json":
            return folder.parent
        if (folder / "tokenizer.json").is_file():
            return folder
    where = candidates[0]
    raise RuntimeUnavailable(
        f"{where}: no tokenizer.json there; pass the folder of the model's Hugging Face "
        f"tokenizer (tokenizer=PATH)"
    )


class Tokenizer:
    """Encode/decode with a folder's ``tokenizer.json`` and its special tokens.

    Attributes:
        eos_token_ids: ids that end generation (from generation_config, config and
            tokenizer_config, all of them).
        bos_token_id, pad_token_id: may be None.
        chat_template: the jinja2 template text, or None.
    """

    def __init__(self, folder: str | Path):
        tokenizers = require("tokenizers", extra="hf", purpose="tokenize prompts")
        self.folder = Path(folder)
        self._tok = tokenizers.Tokenizer.from_file(str(self.folder / "tokenizer.json"))
        # padding and truncation saved in tokenizer.json are a training pipeline's settings:
        # transformers (and so vLLM) encode a prompt with neither unless asked, where
        # `tokenizers` would pad it with [PAD] ids or cut it (a BERT folder's prompt became
        # 128 tokens)
        self._tok.no_padding()
        self._tok.no_truncation()
        tok_config = _read_json(self.folder / "tokenizer_config.json")
        gen_config = _read_json(self.folder / "generation_config.json")
        model_config = _read_json(self.folder / "config.json")
        self.special = {
            name: _token_text(tok_config.get(f"{name}_token"))
            for name in ("bos", "eos", "pad", "unk")
        }
        self.bos_token_id = self._id_of(self.special["bos"], gen_config, model_config, "bos")
        self.pad_token_id = self._id_of(self.special["pad"], gen_config, model_config, "pad")
        self.eos_token_ids = self._eos_ids(tok_config, gen_config, model_config)
        template_file = self.folder / "chat_template.jinja"
        template = tok_config.get("chat_template")
        if template_file.is_file():
            template = template_file.read_text(encoding="utf-8")
        if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default") or next(iter(named.values()), None)
        self.chat_template: str | None = template
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)

    def _id_of(
        self, text: str | None, gen_config: dict, model_config: dict, name: str
    ) -> int | None:
        for config in (gen_config, model_config):
            value = config.get(f"{name}_token_id")
            if isinstance(value, list):
                value = value[0] if value else None
            if isinstance(value, int):
                return value
        return self._tok.token_to_id(text) if text else None

    def _eos_ids(self, tok_config: dict, gen_config: dict, model_config: dict) -> list[int]:
        ids: list[int] = []
        for config in (gen_config, model_config):
            value = config.get("eos_token_id")
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, int) and item not in ids:
                    ids.append(item)
        text_id = self._tok.token_to_id(self.special["eos"]) if self.special["eos"] else None
        if text_id is not None and text_id not in ids:
            ids.append(text_id)
        return ids

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text`` (the tokenizer's post-processor adds BOS where it is set to)."""
        return list(self._tok.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        """Text of ``ids``."""
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def render_chat(
        self,
        messages: list[dict],
        add_generation_prompt: bool = True,
        chat_template: str | None = None,
        **kwargs: Any,
    ) -> str:
        """The prompt text for a conversation, rendered with the chat template.

        Raises:
            InvalidRequest: no chat template, malformed messages, or the template refused them.
        """
        template = chat_template or self.chat_template
        if not template:
            raise InvalidRequest(
                f"{self.folder}: the tokenizer has no chat template; "
                f"use generate() with a plain prompt"
            )
        if not messages or not all(
            isinstance(m, dict) and "role" in m and "content" in m for m in messages
        ):
            raise InvalidRequest(
                "messages must be a non-empty list of {'role': ..., 'content': ...} dicts"
            )
        jinja2 = require("jinja2", extra="hf", purpose="render chat templates")
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str):
            raise InvalidRequest(f"chat template: {message}")

        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
        )
        env.filters["tojson"] = lambda value, indent=None, **_: json.dumps(
            value, ensure_ascii=False, indent=indent
        )
        env.globals["raise_exception"] = raise_exception
        values = {name + "_token": text or "" for name, text in self.special.items()}
        try:
            return env.from_string(template).render(
                messages=messages, add_generation_prompt=add_generation_prompt, **values, **kwargs
            )
        except jinja2.TemplateError as exc:
            raise InvalidRequest(f"chat template failed: {exc}") from None
