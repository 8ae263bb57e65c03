"""``keishiki serve`` under load: batched (concurrent clients) against sequential (one).

Builds the 12-layer, hidden-768 Llama (random weights, as ``bench_runtimes.py``) and its
ONNX export, starts ``keishiki serve`` (onnxruntime backend) in a process of its own, and:

- single stream, paired: ``LLM.generate`` (in another process) and one server client take
  turns, ``--repeat`` times, decode tokens/s each (the server's from the client's side);
- drives the server with 1, 4 and 16 concurrent streaming clients (the ``openai`` async
  client), each sending ``--requests`` requests of ``--gen-len`` tokens (EOS ignored) one
  after the other, and reports

- output tokens/s over the whole run (all clients), and its ratio to one client's;
- time to first token and inter-token latency p50/p99, from the client's side (ITL: a
  request's first-to-last token time over its tokens − 1);
- the server's own counters: decode steps and the mean batch size per step.

    python benchmarks/bench_serve.py                    # ~4 minutes on 2 cores
    python benchmarks/bench_serve.py --model tiny --clients 1 4 16 --json-out rows.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_runtimes import MODELS  # noqa: E402 - the same two model shapes


def build(root: Path, name: str) -> Path:
    """The model's ONNX export folder (built once under ``root``)."""
    from keishiki._convert.onnx_export import export_causal_lm
    from keishiki.examples import build_tiny_llama

    hf, onnx_dir = root / name, root / f"{name}-onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if not (hf / "config.json").exists():
            build_tiny_llama(hf, max_positions=1024, **MODELS[name])
        if not (onnx_dir / "model.onnx").exists():
            export_causal_lm(hf, onnx_dir)
    return onnx_dir


_WORKER = """
import json, sys, time
from keishiki import LLM, SamplingParams
llm = LLM(model=sys.argv[1])
prompt, gen_len = sys.argv[2], int(sys.argv[3])
def t(n):
    p = SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)
    start = time.perf_counter(); llm.generate([prompt], p); return time.perf_counter() - start
t(4)
print("ready", flush=True)
for _ in sys.stdin:
    print(json.dumps((gen_len - 1) / (t(gen_len) - t(1))), flush=True)
"""


class GenerateWorker:
    """``LLM.generate`` on the same model in a process of its own, timed on request:
    decode tokens/s = (gen_len − 1) / (t(gen_len) − t(1)), as bench_runtimes.py."""

    def __init__(self, path: Path, prompt: str, gen_len: int):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(path), prompt, str(gen_len)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout.readline().strip() == "ready"

    def measure(self) -> float:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


async def load(url: str, clients: int, requests: int, prompt: str, gen_len: int) -> dict:
    """Drive the server with ``clients`` concurrent streaming clients."""
    from openai import AsyncOpenAI

    api = AsyncOpenAI(base_url=url + "/v1", api_key="-", max_retries=0, timeout=600)
    ttft, itl, tokens = [], [], 0

    async def one_client(number: int):
        nonlocal tokens
        for r in range(requests):
            sent = time.perf_counter()
            first = last = None
            count_all = 0
            stream = await api.completions.create(
                model="bench",
                prompt=f"{prompt} {number} {r}",
                max_tokens=gen_len,
                temperature=0,
                stream=True,
                extra_body={"ignore_eos": True, "return_token_ids": True},
            )
            async for chunk in stream:
                count = len(chunk.choices[0].token_ids or []) if chunk.choices else 0
                if not count:
                    continue
                last = time.perf_counter()
                if first is None:
                    first = last
                    ttft.append(first - sent)
                count_all += count
            # per request, not per chunk: chunks that arrive in one read would show ~0
            if count_all > 1:
                itl.append((last - first) / (count_all - 1))
            tokens += count_all

    start = time.perf_counter()
    await asyncio.gather(*(one_client(i) for i in range(clients)))
    seconds = time.perf_counter() - start
    await api.close()

    def pct(values, q):
        return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0]

    return {
        "clients": clients,
        "tokens": tokens,
        "seconds": seconds,
        "tok_s": tokens / seconds,
        "ttft_p50": pct(ttft, 50),
        "ttft_p99": pct(ttft, 99),
        "itl_p50": pct(itl, 50),
        "itl_p99": pct(itl, 99),
    }


def counters(url: str) -> dict:
    import httpx

    text = httpx.get(url + "/metrics").text

    def value(name):
        found = re.search(rf"^keishiki:{name}{{[^}}]*}} (\S+)$", text, re.M)
        return float(found.group(1)) if found else 0.0

    return {"steps": value("batch_size_count"), "rows": value("batch_size_sum")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=list(MODELS), default="12L-768")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=2, help="per client, one by one")
    parser.add_argument("--gen-len", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, help="build folder (default: a temp dir)")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    prompt = "The quick brown fox jumps over the lazy dog and keeps on running through"
    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        path = build(root, args.model)
        worker = GenerateWorker(path, prompt, args.gen_len)
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "keishiki",
                "serve",
                str(path),
                "--port",
                "0",
                "--served-model-name",
                "bench",
                "--max-num-seqs",
                str(max(args.clients)),
                "--uvicorn-log-level",
                "warning",
            ],
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            line = server.stderr.readline()
            url = re.search(r"at (http://\S+)/v1", line).group(1)
            asyncio.run(load(url, 1, 1, prompt, 8))  # warm-up
            # paired: LLM.generate and one server client alternate, so load hits both alike
            pairs = []
            for _ in range(args.repeat):
                alone = worker.measure()
                served = asyncio.run(load(url, 1, 1, prompt, args.gen_len))
                pairs.append((alone, 1 / served["itl_p50"]))
            worker.close()
            generate_tok_s = statistics.median(a for a, _ in pairs)
            served_tok_s = statistics.median(b for _, b in pairs)
            ratio = statistics.median(b / a for a, b in pairs)
            print(
                f"single stream, paired x{args.repeat}: LLM.generate {generate_tok_s:.1f} "
                f"tok/s, server (1 client) {served_tok_s:.1f} tok/s: x{ratio:.2f}",
                flush=True,
            )
            rows = []
            for clients in args.clients:
                before = counters(url)
                row = asyncio.run(load(url, clients, args.requests, prompt, args.gen_len))
                after = counters(url)
                steps = after["steps"] - before["steps"]
                row["mean_batch"] = (after["rows"] - before["rows"]) / steps if steps else 0
                rows.append(row)
                print(
                    f"{clients:>3} clients: {row['tok_s']:7.1f} tok/s "
                    f"(x{row['tok_s'] / rows[0]['tok_s']:.2f} of 1 client), "
                    f"TTFT p50 {row['ttft_p50'] * 1e3:.0f} ms p99 "
                    f"{row['ttft_p99'] * 1e3:.0f} ms, ITL p50 {row['itl_p50'] * 1e3:.1f} ms "
                    f"p99 {row['itl_p99'] * 1e3:.1f} ms, mean batch "
                    f"{row['mean_batch']:.1f}",
                    flush=True,
                )
        finally:
            server.terminate()
            server.wait(timeout=60)
            if worker.proc.poll() is None:
                worker.proc.kill()
    if args.json_out:
        args.json_out.write_text(json.dumps({"single_stream_pairs": pairs, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
