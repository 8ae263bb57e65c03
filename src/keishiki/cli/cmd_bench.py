"""``keishiki bench MODEL``: speed, memory and agreement of each backend on the same request."""

from __future__ import annotations

from pathlib import Path

import typer

from ._app import JSON_OPTION, app
from .args import HF_HELP, model_path
from .render import console, human_bytes, print_json, table


@app.command()
def bench(
    model: Path = typer.Argument(
        ...,
        metavar="MODEL",
        parser=model_path,
        help="HF folder, ONNX file/folder, TorchScript or GGUF file." + HF_HELP,
    ),
    backends: str = typer.Option(
        None,
        "--backends",
        help="Comma-separated, of torch, onnxruntime, torchscript, vllm "
        "(default for a HF folder: torch,onnxruntime,torchscript).",
    ),
    prompt_len: int = typer.Option(32, "--prompt-len", help="Prompt tokens per sequence."),
    gen_len: int = typer.Option(32, "--gen-len", help="Generated tokens per sequence."),
    batch: int = typer.Option(1, "--batch", help="Sequences generated together."),
    repeats: int = typer.Option(3, "--repeats", help="Timed runs (the median is shown)."),
    tokenizer: Path = typer.Option(None, "--tokenizer", help="Folder with tokenizer.json."),
    trust_remote_code: bool = typer.Option(
        False,
        "--trust-remote-code",
        help="Load a model that scan rates dangerous or unknown (RUNS code from it).",
    ),
    json_out: bool = JSON_OPTION,
) -> int:
    """Load time, time to first token, decode tokens/s and peak memory per backend (each in
    its own process; a HF folder is exported to ONNX/TorchScript into a cache first), and
    whether the greedy outputs agree."""
    from ..runtimes.bench import bench as run_bench

    names = [b.strip() for b in backends.split(",") if b.strip()] if backends else None
    report = run_bench(
        model,
        names,
        prompt_len=prompt_len,
        gen_len=gen_len,
        batch=batch,
        tokenizer=str(tokenizer) if tokenizer else None,
        repeats=repeats,
        trust_remote_code=trust_remote_code,
    )
    if json_out:
        print_json(report, schema="keishiki.bench/1")
        return 0
    agreement = report["agreement"]
    rows = []
    for r in report["results"]:
        if "error" in r:
            rows.append((r["backend"], "-", "-", "-", "-", f"error: {r['error']}"))
            continue
        agree = agreement.get(r["backend"])
        agrees = (
            "reference"
            if agreement.get("reference") == r["backend"]
            else f"{agree['identical']}/{agree['of']} identical"
            if agree
            else "-"
        )
        rows.append(
            (
                r["backend"],
                f"{r['load_s']:.2f} s",
                f"{r['ttft_s'] * 1000:.1f} ms",
                f"{r['decode_tok_s']:.1f}",
                human_bytes(r["peak_rss"]),
                agrees,
            )
        )
    s = report["settings"]
    table(
        f"{model} ({report['format']}): prompt {s['prompt_len']}, generate {s['gen_len']}, "
        f"batch {s['batch']}, greedy",
        ["backend", "load", "first token", "decode tok/s", "peak RSS", "greedy agreement"],
        rows,
        justify_right=["load", "first token", "decode tok/s", "peak RSS"],
    )
    for r in report["results"]:
        if "backend_reason" in r:
            console.print(f"[dim]{r['backend']}: {r['backend_reason']}[/dim]")
    return 1 if any("error" in r for r in report["results"]) else 0
