"""``keishiki demo``: build a tiny model locally, convert it, and inspect every result."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from ._app import app
from .render import console, escape, human_bytes, table


@app.command()
def demo(
    out: Path = typer.Option(Path("demo-out"), "--out", help="Folder for the demo's files."),
    quiet: bool = False,  # -q/--quiet: cli/_app.py
) -> int:
    """Build a 2-layer Llama here (no download), convert it to several formats, and show
    `keishiki info` on each — the tour of what keishiki does."""
    import keishiki

    from ..examples import build_tiny_llama
    from .cmd_info import render_info

    out.mkdir(parents=True, exist_ok=True)
    hf = out / "tiny-llama"
    if not (hf / "config.json").exists():
        console.print(f"[bold]building[/bold] a tiny Llama in {escape(str(hf))} …")
        build_tiny_llama(hf)
    # (target path, --to, options): each a real conversion, verified by keishiki
    steps = [
        (out / "tiny-llama.pt", "pytorch", {}),
        (out / "tiny-llama-bin", "pytorch", {}),
        (out / "tiny-llama-f16.gguf", "gguf", {"quant": "f16"}),
        (out / "tiny-llama-onnx", "onnx", {"opset": 17}),
        (out / "tiny-llama-ts", "torchscript", {"method": "trace"}),
    ]
    shown: list[Path] = [hf, hf / "model.safetensors"]
    for target, to, options in steps:
        source = hf / "model.safetensors" if target.suffix == ".pt" else hf
        if not target.exists():
            console.print(
                f"[bold]convert[/bold] {escape(str(source))} → {escape(str(target))} (--to {to})"
            )
            keishiki.convert(source, target, to=to, quiet=True, **options)
        shown.append(target)
    rows = []
    for path in shown:
        start = time.perf_counter()
        model = keishiki.inspect(path)
        ms = (time.perf_counter() - start) * 1000
        if not quiet:
            console.rule(f"keishiki info {escape(str(path))}")
            render_info(model, str(path))
        rows.append(
            (
                str(path),
                model.format + (f"/{model.variant}" if model.variant else ""),
                f"{model.n_tensors}",
                f"{model.n_parameters:,}",
                human_bytes(model.file_size),
                f"{ms:.1f} ms",
                (model.safety or {}).get("verdict", "-"),
            )
        )
    console.rule("summary")
    table(
        None,
        ["path", "format", "tensors", "parameters", "size", "info took", "scan"],
        rows,
        justify_right=["tensors", "parameters", "size", "info took"],
    )
    return 0
