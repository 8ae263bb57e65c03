"""Hugging Face model folders: ``config.json`` plus weights in any of transformers' layouts.

The weights are read by the registry's own readers (safetensors, pytorch, keras-h5,
flax-msgpack, gguf), one shard at a time and header-only, so a sharded 100 GB model is
described from its headers.  Shard names come from ``*.index.json`` files and are resolved
inside the folder only.  On top of the tensors this module reports the config facts people
ask for first (layers, hidden size, heads, KV heads, vocabulary, context length, dtype),
the memory the weights need at common precisions, the parameter count and KV cache that
config.json alone implies (``_hf_sizes``: a folder can be sized before its download), the
tokenizer files present, and which of vLLM's model lists name the architecture
(``data/vllm_supported.json``, with the vLLM version it was taken from).
"""

from __future__ import annotations

import dataclasses
import json
from functools import lru_cache
from importlib import resources
from typing import Any, Callable

from ..core.atomic import TOKENIZER_FILES
from ..core.lazy_numpy import np  # numpy on first use (start-up time)
from ..core.model import ModelInfo
from ..core.source import Source
from ..core.tensor import TensorInfo
from ..errors import CorruptFile, KeishikiError, UnknownFormat
from ._hf_sizes import LAYOUTS, kv_cache, parameters_from_config
from .registry import Match

FORMAT = "hf-model"

# (weights format, single-file name, index file name), in transformers' loading preference
WEIGHT_LAYOUTS = [
    ("safetensors", "model.safetensors", "model.safetensors.index.json"),
    ("pytorch", "pytorch_model.bin", "pytorch_model.bin.index.json"),
    ("keras-h5", "tf_model.h5", "tf_model.h5.index.json"),
    ("flax-msgpack", "flax_model.msgpack", "flax_model.msgpack.index.json"),
]
# bytes per parameter for the memory estimate
PRECISIONS = {"fp32": 4.0, "fp16": 2.0, "int8": 1.0, "int4": 0.5}

# config.json facts: (reported name, keys that different model families use for it)
CONFIG_FACTS = [
    ("num_hidden_layers", ("num_hidden_layers", "n_layer", "num_layers", "n_layers")),
    ("hidden_size", ("hidden_size", "n_embd", "n_embed", "d_model", "dim")),
    ("num_attention_heads", ("num_attention_heads", "n_head", "num_heads", "n_heads")),
    (
        "num_key_value_heads",
        ("num_key_value_heads", "num_kv_heads", "n_kv_heads", "multi_query_group_num"),
    ),
    ("intermediate_size", ("intermediate_size", "n_inner", "ffn_dim", "d_ff")),
    ("vocab_size", ("vocab_size", "padded_vocab_size", "n_vocab")),
    (
        "max_position_embeddings",
        (
            "max_position_embeddings",
            "n_positions",
            "max_seq_len",
            "seq_length",
            "n_ctx",
            "max_sequence_length",
        ),
    ),
    ("head_dim", ("head_dim",)),
]


# ---- sniffing -----------------------------------------------------------------------------------


def _config(src: Source) -> dict[str, Any] | None:
    if not src.is_dir or not src.has("config.json"):
        return None
    try:
        config = src.read_json("config.json")
    except KeishikiError:
        return None
    if not isinstance(config, dict) or not ("model_type" in config or "architectures" in config):
        return None
    return config


def _weight_files(src: Source) -> list[tuple[str, list[str], str | None]]:
    """[(weights format, files, index file)] for every layout present in the folder."""
    names = src.files()
    found = []
    for fmt, single, index in WEIGHT_LAYOUTS:
        if index in names:
            found.append((fmt, [], index))
        elif single in names:
            found.append((fmt, [single], None))
    if not any(fmt == "safetensors" for fmt, _f, _i in found):
        # adapters, diffusers and Mistral's consolidated files use other safetensors names
        other = [n for n in names if n.endswith(".safetensors") and src.has(n)]
        if other:
            found.insert(0, ("safetensors", other, None))
    from .gguf_split import is_later_split

    # a split GGUF is read whole from any of its files: list its first split only
    ggufs = [
        n for n in names if n.lower().endswith(".gguf") and src.has(n) and not is_later_split(n)
    ]
    if ggufs:
        found.append(("gguf", ggufs, None))
    return found


def sniff(src: Source) -> Match | None:
    config = _config(src)
    if config is None:
        return None
    if not _weight_files(src):
        if sum(n.lower().endswith(".onnx") for n in src.files()) == 1:
            return None  # an ONNX export with its config beside it: the onnx reader's job
        from . import export_folder_member

        if export_folder_member(src) is not None:
            return None  # an exported graph/archive with its config: that reader's job
    return Match(FORMAT, None, reason="folder with config.json (model_type/architectures)")


# ---- reading ------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def vllm_registry() -> dict[str, Any]:
    """The packaged list of vLLM's supported architectures (with the vLLM version)."""
    # a data file of the keishiki package (pyproject: package-data "data/*.json")
    text = resources.files("keishiki").joinpath("data", "vllm_supported.json").read_text()
    return json.loads(text)


def vllm_lists(registry: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """vLLM's model lists by their registry.py name: ``{name: {"task", "architectures"}}``.

    The order is the data file's, which puts text generation first: it decides the main
    task of an architecture on several lists (``LlamaForCausalLM`` generates and embeds).
    """
    registry = vllm_registry() if registry is None else registry
    return registry.get("lists") or {}


def vllm_architectures(registry: dict[str, Any] | None = None) -> set[str]:
    """Every architecture name on any of vLLM's lists: what ``ModelRegistry.get_supported_archs()``
    of that vLLM version returns."""
    return {a for entry in vllm_lists(registry).values() for a in entry["architectures"]}


def vllm_support(architectures: list[str]) -> dict[str, Any]:
    """Whether the vLLM version of the packaged list serves any of ``architectures``.

    Returns ``{"supported", "task", "tasks", "lists", "version", "supported_until"}``:
    ``task`` is the first list's task ("generate", "multimodal generate", "embed",
    "score", ...), ``tasks`` and ``lists`` every match, ``supported_until`` the last vLLM
    version for an architecture vLLM has dropped (Mllama: "0.10.2"), else None.

    >>> vllm_support(["Gemma3ForConditionalGeneration"])["task"]
    'multimodal generate'
    """
    registry = vllm_registry()
    matched = [
        (name, entry["task"])
        for name, entry in vllm_lists(registry).items()
        if any(a in entry["architectures"] for a in architectures)
    ]
    previous = registry.get("previously_supported") or {}
    until = next((previous[a] for a in architectures if a in previous), None)
    tasks = list(dict.fromkeys(task for _name, task in matched))
    return {
        "supported": bool(matched),
        "task": tasks[0] if tasks else None,
        "tasks": tasks,
        "lists": [name for name, _task in matched],
        "version": registry["vllm_version"],
        "supported_until": None if matched else until,
    }


def config_facts(config: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of a config.json (text_config of multimodal models as fallback)."""
    scopes = [config] + [
        config[k]
        for k in ("text_config", "llm_config", "language_config")
        if isinstance(config.get(k), dict)
    ]

    def lookup(keys: tuple[str, ...]) -> Any:
        for scope in scopes:
            for key in keys:
                if scope.get(key) is not None:
                    return scope[key]
        return None

    facts: dict[str, Any] = {
        "model_type": config.get("model_type"),
        "architectures": list(config.get("architectures") or []),
    }
    for name, keys in CONFIG_FACTS:
        facts[name] = lookup(keys)
    if facts["num_key_value_heads"] is None:
        facts["num_key_value_heads"] = facts["num_attention_heads"]  # plain multi-head attention
    layout = LAYOUTS.get(facts["model_type"])
    if facts["head_dim"] is None and layout is not None and layout.head_dim:
        facts["head_dim"] = layout.head_dim  # Qwen3, Gemma: the class default, not hidden/heads
    if (
        facts["head_dim"] is None
        and isinstance(facts["hidden_size"], int)
        and isinstance(facts["num_attention_heads"], int)
        and facts["num_attention_heads"]
    ):
        facts["head_dim"] = facts["hidden_size"] // facts["num_attention_heads"]
    facts["context_length"] = facts["max_position_embeddings"]
    facts["dtype"] = lookup(("dtype", "torch_dtype"))
    facts["tie_word_embeddings"] = config.get("tie_word_embeddings")
    facts["transformers_version"] = config.get("transformers_version")
    return facts


def missing_sizes(config: dict[str, Any]) -> list[str]:
    """The size entries (layers, hidden size, vocabulary) a config.json leaves out.

    transformers fills a missing one with its class default: ``{"model_type": "llama"}``
    alone builds a 7B Llama in float32 (killed for memory at 24 GB), so a loader must not be
    handed such a config.
    """
    facts = config_facts(config)
    return [
        name
        for name in ("num_hidden_layers", "hidden_size", "vocab_size")
        if not isinstance(facts.get(name), int) or isinstance(facts.get(name), bool)
    ]


def _shards_from_index(src: Source, index: str) -> tuple[list[str], dict[str, str], dict]:
    data = src.read_json(index)
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        raise CorruptFile(src.child(index), "no weight_map of tensor name -> shard file")
    shards = list(dict.fromkeys(weight_map.values()))
    return shards, weight_map, data.get("metadata") or {}


class _Shards:
    """Reads every weights file with the registry's readers and merges their tensors."""

    def __init__(self, src: Source):
        self.src = src
        self.tensors: list[TensorInfo] = []
        self.loaders: dict[tuple[str, str], tuple[Callable, TensorInfo]] = {}
        self.metadata: dict[str, Any] = {}
        self.warnings: list[str] = []
        self.formats: list[str] = []
        self.missing: list[str] = []

    def read_file(self, rel: str) -> None:
        from . import identify, read

        path = self.src.child(rel)  # refuses names that leave the folder
        if not path.is_file():
            self.missing.append(rel)
            return
        with Source(path) as child:
            try:
                match = identify(child)
            except UnknownFormat:
                self.warnings.append(f"{rel}: no keishiki reader recognises this weights file")
                return
            info = read(child, match)
        self.formats.append(match.format)
        for key, value in (info.metadata or {}).items():
            self.metadata.setdefault(key, value)
        for t in info.tensors:
            extra = dict(t.extra)
            if t.file is not None:
                extra["member"] = t.file  # where the shard's own reader keeps the bytes
            merged = dataclasses.replace(t, file=rel, extra=extra)
            self.tensors.append(merged)
            if info.tensor_loader is not None:
                self.loaders[(rel, t.name)] = (info.tensor_loader, t)

    def loader(self) -> Callable[[TensorInfo], np.ndarray]:
        loaders = self.loaders

        def load(info: TensorInfo) -> np.ndarray:
            try:
                fn, original = loaders[(info.file or "", info.name)]
            except KeyError:
                raise CorruptFile(
                    info.file or "?", f"no reader can load tensor {info.name!r}"
                ) from None
            return fn(original)

        return load


def _one_per_name(shards: _Shards, weight_map: dict[str, str]) -> list[str]:
    """Keep one tensor per name when shards repeat one (the shard weight_map names, else the
    first): transformers loads each name once, and the parameter count counted it twice."""
    seen: dict[str, int] = {}
    for t in shards.tensors:
        seen[t.name] = seen.get(t.name, 0) + 1
    twice = {name for name, n in seen.items() if n > 1}
    if not twice:
        return []
    kept, taken = [], set()
    for t in sorted(shards.tensors, key=lambda t: t.file != weight_map.get(t.name)):
        if t.name not in taken:
            taken.add(t.name)
            kept.append(t)
    order = {id(t): i for i, t in enumerate(shards.tensors)}
    shards.tensors = sorted(kept, key=lambda t: order[id(t)])
    first = sorted(twice)[0]
    return [
        f"{len(twice)} tensors are in more than one shard (first: {first}); each is "
        f"listed once, from the shard the index names (else the first)"
    ]


def _check_weight_map(shards: _Shards, index: str, weight_map: dict[str, str]) -> list[str]:
    present = {(t.file, t.name) for t in shards.tensors}
    read_files = {t.file for t in shards.tensors}
    problems = []
    absent = [
        name for name, f in weight_map.items() if f in read_files and (f, name) not in present
    ]
    if absent:
        problems.append(
            f"{index}: {len(absent)} tensors listed in weight_map are not in their "
            f"shard (first: {absent[0]})"
        )
    listed = set(weight_map)
    unlisted = [t.name for t in shards.tensors if t.name not in listed]
    if unlisted:
        problems.append(
            f"{index}: {len(unlisted)} tensors in the shards are not in weight_map "
            f"(first: {unlisted[0]})"
        )
    return problems


def _tokenizer_facts(src: Source) -> dict[str, Any]:
    names = set(src.files())
    tokenizer_config: dict[str, Any] = {}
    if "tokenizer_config.json" in names:
        try:
            loaded = src.read_json("tokenizer_config.json")
            tokenizer_config = loaded if isinstance(loaded, dict) else {}
        except KeishikiError:
            tokenizer_config = {}
    chat_template = bool(tokenizer_config.get("chat_template")) or bool(
        {"chat_template.jinja", "chat_template.json"} & names
    )
    generation_config = None
    if "generation_config.json" in names:
        try:
            generation_config = src.read_json("generation_config.json")
        except KeishikiError:
            generation_config = None
    return {
        "tokenizer_files": [n for n in TOKENIZER_FILES if n in names],
        "tokenizer_class": tokenizer_config.get("tokenizer_class"),
        "chat_template": chat_template,
        "generation_config": "generation_config.json" in names,
        "generation_defaults": {
            k: generation_config[k]
            for k in (
                "bos_token_id",
                "eos_token_id",
                "pad_token_id",
                "do_sample",
                "temperature",
                "top_p",
                "top_k",
                "max_new_tokens",
            )
            if k in generation_config
        }
        if isinstance(generation_config, dict)
        else None,
    }


def _estimate(config: dict[str, Any], n_params: int) -> dict[str, Any]:
    """parameters_from_config, its memory, and how far the weights present are from it."""
    estimate = parameters_from_config(config)
    if estimate.get("estimated"):
        total = estimate["total"]
        estimate["memory_bytes"] = {p: int(total * b) for p, b in PRECISIONS.items()}
        if n_params:
            # a gap means missing shards, a vision tower outside the scope, or a layout
            # this estimate does not know (extra heads, padded vocabularies)
            estimate["vs_weights"] = {
                "weights": n_params,
                "difference": n_params - total,
                "relative": round((n_params - total) / total, 6),
            }
    return estimate


def _memory(n_params: int, estimate: dict[str, Any]) -> dict[str, Any]:
    """memory_bytes from the weights, or from the config estimate when there are none."""
    if n_params or not estimate.get("estimated"):
        return {
            "memory_bytes": {p: int(n_params * b) for p, b in PRECISIONS.items()},
            "memory_note": "weights only: activations and the KV cache (kv_cache) come on top",
        }
    return {
        "memory_bytes": estimate["memory_bytes"],
        "memory_note": "estimated from config.json (no weights in the folder): weights "
        "only, activations and the KV cache (kv_cache) come on top",
    }


def read(src: Source, match) -> ModelInfo:
    config = _config(src)
    if config is None:
        raise CorruptFile(src.path, "config.json is missing or has no model_type/architectures")
    layouts = _weight_files(src)
    shards = _Shards(src)
    warnings: list[str] = []
    hf: dict[str, Any] = config_facts(config)
    weights: dict[str, Any] = {"formats_present": [fmt for fmt, _f, _i in layouts]}
    if layouts:
        fmt, files, index = layouts[0]  # the layout transformers would load
        weight_map: dict[str, str] = {}
        if index is not None:
            files, weight_map, index_meta = _shards_from_index(src, index)
            weights["index"] = index
            weights["index_total_size"] = (index_meta or {}).get("total_size")
        for rel in files:
            shards.read_file(rel)
        warnings.extend(_one_per_name(shards, weight_map))
        weights.update(format=fmt, sharded=index is not None or len(files) > 1, files=files)
        if shards.missing:
            weights["missing_files"] = shards.missing
            named = ", ".join(shards.missing[:8])
            more = len(shards.missing) - 8
            warnings.append(
                f"weights files missing from the folder: {named}"
                + (f" and {more:,} more" if more > 0 else "")
                + " (incomplete download?)"
            )
        if index is not None:
            warnings.extend(_check_weight_map(shards, index, weight_map))
        if len(layouts) > 1:
            warnings.append(
                f"several weight layouts present ({', '.join(weights['formats_present'])})"
                f"; listing {fmt}, which transformers loads first"
            )
    else:
        warnings.append("no weights: config.json without model weights in the folder")
    warnings.extend(shards.warnings)
    n_params = sum(t.numel for t in shards.tensors)
    estimate = _estimate(config, n_params)
    vllm = vllm_support(hf["architectures"])
    hf.update(
        weights=weights,
        total_parameters=n_params,
        **_memory(n_params, estimate),
        parameters_from_config=estimate,
        kv_cache=kv_cache(config),
        vllm_supported=vllm["supported"],
        vllm_task=vllm["task"],
        vllm_tasks=vllm["tasks"],
        vllm_version=vllm["version"],
        vllm_supported_until=vllm["supported_until"],
        **_tokenizer_facts(src),
        sentence_transformers=src.has("modules.json"),
    )
    return ModelInfo(
        path=str(src.path),
        format=FORMAT,
        tensors=shards.tensors,
        metadata=shards.metadata,
        config=config,
        warnings=warnings,
        details={"hf": hf},
        tensor_loader=shards.loader(),
    )
