"""``keishiki info hf://org/name[@rev]``: describe a Hub model before downloading it.

What is read, all through huggingface_hub: one ``model_info`` call (the commit the revision
points at, every file and its size), then with HTTP range requests (:mod:`.ranged`):
``config.json``, ``tokenizer_config.json`` and the weights index whole, in parallel, and of
every safetensors shard, in parallel, a prefix holding its 8-byte header length and usually
its whole header (a second request for the rest when it does not).  huggingface_hub's
``get_safetensors_metadata`` is not used: it fetches the first 100 kB of each shard
whatever the file's size (a fifth of a small model) and downloads a sharded model's index
into the cache; the parse here is keishiki's own, which refuses what the safetensors
library refuses.  A GGUF file's header is read from
a prefix that grows until the header fits (64 KiB, then ×4).  Modules: :mod:`.ranged` (the
reads and their count), :mod:`.headers` (the weight headers); this one assembles the view.

The result is the :class:`~keishiki.core.model.ModelInfo` a local folder gives (format
``hf-model``: parameters, dtypes, memory at each precision, KV cache, vLLM support), with
``details["remote"]``: repository, commit, files, the weights' bytes, and how many HTTP
requests and bytes the look took.  Tensors have no loader: reading data means pulling.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..core.model import ModelInfo
from ..core.tensor import TensorInfo
from ..errors import CorruptFile, HubError, InvalidRequest
from . import _hf, remote_files
from .headers import gguf_header, gguf_models, read_shards, safetensors_header
from .ranged import RangedRepo, Traffic


def inspect_remote(path: str) -> ModelInfo:
    """Describe the model at ``hf://org/name[@rev][/file]`` from its config and weight
    headers, read with range requests (nothing is written to the cache).

    Args:
        path: a repository (``hf://org/name``, ``@rev`` optional), or one ``.safetensors``
            or ``.gguf`` file in it (``hf://org/name/model-q4.gguf``).

    Returns:
        A :class:`~keishiki.core.model.ModelInfo` without a tensor loader;
        ``details["remote"]`` has ``requests`` and ``bytes_read`` (what the look cost).

    Raises:
        HubError: repository, revision or file not found; gated; offline; unreachable.
        CorruptFile: a header breaks its format's rules.

    >>> info = keishiki.inspect("hf://Qwen/Qwen3-0.6B")
    >>> info.n_parameters, info.details["remote"]["bytes_read"]
    """
    spec = _hf.parse_hf_path(path)
    with _hf.hub_errors(spec, remote=True), Traffic() as traffic:
        repo = RangedRepo(spec)
        if spec.path_in_repo:
            info = _one_file(repo, spec.path_in_repo)
        else:
            info = _repository(repo)
    weight_bytes = sum(n or 0 for f, n in repo.sizes.items() if _is_weights(f))
    info.path = path
    info.file_size = sum(n or 0 for n in repo.sizes.values())
    info.details["remote"] = {
        "repo_id": spec.repo_id,
        "revision": spec.revision,
        "commit": repo.commit,
        "endpoint": _hf.endpoint(),
        "files": sorted(repo.sizes),
        "repo_bytes": info.file_size,
        "weight_bytes": weight_bytes,
        "requests": traffic.requests,
        "bytes_read": repo.bytes_read,
        "response_bytes": traffic.response_bytes,
    }
    return info


_WEIGHT_SUFFIXES = (
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".ckpt",
    ".gguf",
    ".h5",
    ".msgpack",
    ".onnx",
    ".onnx_data",
)


def _is_weights(name: str) -> bool:
    return name.lower().endswith(_WEIGHT_SUFFIXES)


def _one_file(repo: RangedRepo, name: str) -> ModelInfo:
    if name not in repo.sizes:
        raise HubError(f"{repo.where(name)}: no such file in the repository")
    if name.endswith(".safetensors"):
        tensors, metadata = safetensors_header(repo, name)
        # one file named: its tensors live in it (file=None), as for a local file
        tensors = [dataclasses.replace(t, file=None) for t in tensors]
        return ModelInfo(path=name, format="safetensors", tensors=tensors, metadata=metadata)
    if name.lower().endswith(".gguf"):
        return gguf_header(repo, name)
    return remote_files.inspect_file(repo, name)  # ONNX, torch checkpoints; else refused


# ---- a repository -------------------------------------------------------------------------------


def _repository(repo: RangedRepo) -> ModelInfo:
    """The hf-model view of a repository (config.json + weight headers), or, for a
    repository of GGUF files without a config, its one GGUF model."""
    if "config.json" not in repo.sizes:
        ggufs = gguf_models(repo)
        if len(ggufs) == 1:
            return gguf_header(repo, ggufs[0])
        # adapters (adapter_model.safetensors), several quantizations: the user picks one
        files = ggufs or [f for f in sorted(repo.sizes) if f.endswith(".safetensors")]
        hint = f"; name one: hf://{repo.spec.repo_id}/{files[0]}" if files else ""
        raise InvalidRequest(
            f"hf://{repo.spec.label}: no config.json and {len(ggufs) or 'no'} GGUF models{hint}"
        )
    # the JSON a description needs, in one round trip rather than one each
    repo.prefetch_json(
        [
            "config.json",
            "model.safetensors.index.json",
            "pytorch_model.bin.index.json",
            "tokenizer_config.json",
        ]
    )
    config = repo.read_json("config.json")
    if not isinstance(config, dict):
        raise CorruptFile(repo.where("config.json"), "config.json is not a JSON object")
    shards, weights = _shards(repo)
    tensors, metadata = read_shards(repo, shards)
    safety = None
    fmt = "safetensors" if shards else None
    if not shards:  # pickled weights only: their data.pkl, read by range, gives the tensors
        shards, weights = _pickle_shards(repo)
        tensors, safety = _read_pickle_shards(repo, shards)
        fmt = "pytorch" if shards else None
    warnings = _weight_warnings(repo, shards, weights)
    weights.update(
        format=fmt, files=shards, sharded=len(shards) > 1, formats_present=_formats_present(repo)
    )
    hf = _hf_facts(repo, config, tensors, weights)
    return ModelInfo(
        path=repo.spec.repo_id,
        format="hf-model",
        tensors=tensors,
        metadata=metadata,
        config=config,
        warnings=warnings,
        details={"hf": hf},
        safety=safety,
    )


def _shards(repo: RangedRepo) -> tuple[list[str], dict[str, Any]]:
    """The safetensors files transformers would load, in its order, and facts for the
    ``weights`` entry (index name, its total_size)."""
    if "model.safetensors.index.json" in repo.sizes:
        return _indexed(repo, "model.safetensors.index.json")
    if "model.safetensors" in repo.sizes:
        return ["model.safetensors"], {}
    # adapters, Mistral's consolidated files: any safetensors at the top of the repository
    return [n for n in sorted(repo.sizes) if n.endswith(".safetensors") and "/" not in n], {}


def _pickle_shards(repo: RangedRepo) -> tuple[list[str], dict[str, Any]]:
    """The pickled checkpoint files transformers loads when there is no safetensors: the
    shards ``pytorch_model.bin.index.json`` names, or ``pytorch_model.bin``."""
    if "pytorch_model.bin.index.json" in repo.sizes:
        return _indexed(repo, "pytorch_model.bin.index.json")
    return (["pytorch_model.bin"] if "pytorch_model.bin" in repo.sizes else []), {}


def _indexed(repo: RangedRepo, index: str) -> tuple[list[str], dict[str, Any]]:
    """The shards a ``*.index.json`` names (those present, in its order) and its facts."""
    data = repo.read_json(index)
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict):
        raise CorruptFile(repo.where(index), "no weight_map of tensor name -> shard file")
    shards = list(dict.fromkeys(str(v) for v in weight_map.values()))
    missing = [s for s in shards if s not in repo.sizes]
    facts = {
        "index": index,
        "index_total_size": (data.get("metadata") or {}).get("total_size"),
        "missing_files": missing,
    }
    return [s for s in shards if s in repo.sizes], facts


def _read_pickle_shards(
    repo: RangedRepo, shards: list[str]
) -> tuple[list[TensorInfo], dict | None]:
    """Every shard's tensors (named by shard) and the worst of their scan verdicts."""
    tensors: list[TensorInfo] = []
    verdicts = []
    for shard in shards:
        info = remote_files.inspect_file(repo, shard)
        tensors += [dataclasses.replace(t, file=shard) for t in info.tensors]
        verdicts.append(info.safety or {"verdict": "safe"})
    if not verdicts:
        return tensors, None
    rank = {"safe": 0, "unknown": 1, "error": 2, "dangerous": 3}
    return tensors, max(verdicts, key=lambda v: rank.get(v.get("verdict"), 2))


def _formats_present(repo: RangedRepo) -> list[str]:
    kinds = {
        ".safetensors": "safetensors",
        ".bin": "pytorch",
        ".pt": "pytorch",
        ".pth": "pytorch",
        ".gguf": "gguf",
        ".h5": "keras-h5",
        ".msgpack": "flax-msgpack",
        ".onnx": "onnx",
    }
    found = {kinds[s] for f in repo.sizes for s in kinds if f.lower().endswith(s)}
    return sorted(found)


def _weight_warnings(repo: RangedRepo, shards: list[str], weights: dict[str, Any]) -> list[str]:
    warnings = []
    if weights.get("missing_files"):
        warnings.append(
            f"the index names shards the repository lacks: {', '.join(weights['missing_files'])}"
        )
    if not shards:
        ggufs = gguf_models(repo)
        others = [f for f in sorted(repo.sizes) if _is_weights(f) and f not in ggufs]
        if ggufs:
            why = (
                f"GGUF files ({', '.join(ggufs[:3])}): name one to read its header, "
                f"hf://{repo.spec.repo_id}/{ggufs[0]}"
            )
        elif others:
            why = (
                f"{', '.join(others[:4])}: name one to read it by range, "
                f"hf://{repo.spec.repo_id}/{others[0]}"
            )
        else:
            why = "config.json without weights"
        warnings.append(f"no safetensors weights: {why}; sizes below come from config.json")
    return warnings


def _hf_facts(
    repo: RangedRepo, config: dict, tensors: list[TensorInfo], weights: dict[str, Any]
) -> dict[str, Any]:
    """The ``hf`` section a local folder gets (formats.hf_model), from remote reads."""
    from ..formats import hf_model
    from ..formats._hf_sizes import kv_cache

    facts = hf_model.config_facts(config)
    n_params = sum(t.numel for t in tensors)
    estimate = hf_model._estimate(config, n_params)
    vllm = hf_model.vllm_support(facts["architectures"])
    facts.update(
        weights=weights,
        total_parameters=n_params,
        **hf_model._memory(n_params, estimate),
        parameters_from_config=estimate,
        kv_cache=kv_cache(config),
        vllm_supported=vllm["supported"],
        vllm_task=vllm["task"],
        vllm_tasks=vllm["tasks"],
        vllm_version=vllm["version"],
        vllm_supported_until=vllm["supported_until"],
        **_tokenizer_facts(repo),
        sentence_transformers="modules.json" in repo.sizes,
    )
    return facts


def _tokenizer_facts(repo: RangedRepo) -> dict[str, Any]:
    """Tokenizer files present, and tokenizer_config.json's class and chat template."""
    from ..core.atomic import TOKENIZER_FILES

    names = set(repo.sizes)
    tokenizer_config: Any = {}
    if "tokenizer_config.json" in names:
        try:
            tokenizer_config = repo.read_json("tokenizer_config.json")
        except CorruptFile:  # as for a folder: a broken tokenizer config is no model fact
            tokenizer_config = {}
    if not isinstance(tokenizer_config, dict):
        tokenizer_config = {}
    return {
        "tokenizer_files": [n for n in TOKENIZER_FILES if n in names],
        "tokenizer_class": tokenizer_config.get("tokenizer_class"),
        "chat_template": bool(tokenizer_config.get("chat_template"))
        or bool({"chat_template.jinja", "chat_template.json"} & names),
        "generation_config": "generation_config.json" in names,
    }
