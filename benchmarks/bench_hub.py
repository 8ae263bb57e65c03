"""The Hub, against the loopback fake Hub of the tests (tests/hub/fakehub.py), in one run.

1. Remote ``info`` of a sharded safetensors repository (a Llama-7B layout scaled down:
   4 shards, 291 tensors, 64 MiB each by default): keishiki's ``inspect("hf://...")``
   (config, index, every shard's header, tokenizer config; parameters, memory, vLLM
   support) vs ``huggingface_hub.get_safetensors_metadata`` (the shards' headers only).
   Targets: bytes transferred <= 1% of the weights, time <= 2x huggingface_hub's.
2. ``keishiki.pull`` (snapshot_download, then the scan) vs ``snapshot_download`` alone, each
   into a fresh cache. Target: <= 1.10x.

Rounds alternate the tools; the median of each is compared as a ratio. The server is in
this process (a thread), as the tests run it: ratios, not absolute speeds, are the point.
``--shard-mib`` and ``--rounds`` change the size and the repetitions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _repository(shard_mib: int) -> dict[str, bytes]:
    """config.json, an index and 4 safetensors shards of a 32-layer Llama's 291 names."""
    import numpy as np
    from safetensors.numpy import save

    names = ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"]
    for i in range(32):
        names += [
            f"model.layers.{i}.{n}.weight"
            for n in (
                "self_attn.q_proj",
                "self_attn.k_proj",
                "self_attn.v_proj",
                "self_attn.o_proj",
                "mlp.gate_proj",
                "mlp.up_proj",
                "mlp.down_proj",
                "input_layernorm",
                "post_attention_layernorm",
            )
        ]
    per = shard_mib * 1024 * 1024 // 2 // (len(names) // 4 + 1)  # fp16 elements per tensor
    files: dict[str, bytes] = {}
    weight_map = {}
    for s in range(4):
        part = names[s::4]
        shard = f"model-{s + 1:05d}-of-00004.safetensors"
        files[shard] = save({n: np.zeros(per, dtype=np.float16) for n in part})
        weight_map.update({n: shard for n in part})
    files["model.safetensors.index.json"] = json.dumps(
        {"metadata": {"total_size": sum(map(len, files.values()))}, "weight_map": weight_map}
    ).encode()
    files["config.json"] = json.dumps(
        {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": 4096,
            "intermediate_size": 11008,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 32,
            "vocab_size": 32000,
            "max_position_embeddings": 4096,
        }
    ).encode()
    files["tokenizer_config.json"] = b'{"tokenizer_class": "LlamaTokenizer"}'
    return files


def _point_at(hub, cache: Path) -> None:
    from huggingface_hub import HfFileSystem, constants

    constants.ENDPOINT = hub.endpoint
    constants.HUGGINGFACE_CO_URL_TEMPLATE = (
        hub.endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    )
    constants.HF_HUB_CACHE = str(cache)
    constants.HF_HUB_OFFLINE = False
    constants.HF_HUB_DISABLE_TELEMETRY = True
    HfFileSystem.clear_instance_cache()


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shard-mib", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    import huggingface_hub
    from huggingface_hub.utils import disable_progress_bars

    import keishiki
    from tests.hub.fakehub import FakeHub, Repo

    disable_progress_bars()
    repo_id = "bench/llama-layout"
    files = _repository(args.shard_mib)
    weights = sum(len(v) for k, v in files.items() if k.endswith(".safetensors"))
    hub = FakeHub()
    hub.add(Repo(repo_id, files))
    hub.start()
    ok = True
    try:
        with tempfile.TemporaryDirectory(prefix="keishiki-bench-hub-") as tmp:
            _point_at(hub, Path(tmp) / "cache")
            api = huggingface_hub.HfApi()
            times: dict[str, list[float]] = {"keishiki": [], "hf": []}
            sent: dict[str, int] = {}
            for _ in range(args.rounds):
                for tool, fn in (
                    ("keishiki", lambda: keishiki.inspect(f"hf://{repo_id}")),
                    ("hf", lambda: api.get_safetensors_metadata(repo_id)),
                ):
                    hub.reset()
                    times[tool].append(_timed(fn))
                    sent[tool] = hub.bytes_sent
            info = keishiki.inspect(f"hf://{repo_id}")
            k, h = statistics.median(times["keishiki"]), statistics.median(times["hf"])
            share = sent["keishiki"] / weights
            print(
                f"remote info of {len(files) - 3} shards, {info.n_tensors} tensors, "
                f"{weights / 2**20:.0f} MiB of weights:"
            )
            print(
                f"  keishiki inspect(hf://)          {k * 1000:7.1f} ms  "
                f"{sent['keishiki']:>9,} bytes sent ({share:.3%} of the weights), "
                f"{info.details['remote']['requests']} requests"
            )
            print(
                f"  huggingface_hub metadata         {h * 1000:7.1f} ms  "
                f"{sent['hf']:>9,} bytes sent"
            )
            print(
                f"  ratio keishiki / huggingface_hub {k / h:7.2f}x   (target <= 2x; "
                f"bytes target <= 1%)"
            )
            ok &= k / h <= 2 and share <= 0.01

            pulls: dict[str, list[float]] = {"keishiki": [], "hf": []}
            for r in range(args.rounds):
                for tool in ("keishiki", "hf"):
                    _point_at(hub, Path(tmp) / f"pull-{tool}-{r}")
                    fn = (
                        (lambda: keishiki.pull(repo_id, quiet=True))
                        if tool == "keishiki"
                        else (lambda: huggingface_hub.snapshot_download(repo_id))
                    )
                    pulls[tool].append(_timed(fn))
            k, h = statistics.median(pulls["keishiki"]), statistics.median(pulls["hf"])
            print(f"pull of {sum(map(len, files.values())) / 2**20:.0f} MiB into a fresh cache:")
            print(f"  keishiki.pull (download + scan)  {k * 1000:7.1f} ms")
            print(f"  snapshot_download                {h * 1000:7.1f} ms")
            print(f"  ratio                            {k / h:7.2f}x   (target <= 1.10x)")
            ok &= k / h <= 1.10
    finally:
        hub.stop()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, python "
        f"{platform.python_version()}, huggingface_hub {huggingface_hub.__version__}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
