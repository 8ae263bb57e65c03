"""``keishiki convert SRC OUT --to FORMAT``: a verified conversion along the format graph."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from ._app import JSON_OPTION, app
from .args import HF_HELP, model_path
from .render import console, escape, human_bytes, print_json, printable, table


@app.command()
def convert(
    src: Path = typer.Argument(
        ...,
        metavar="SRC",
        parser=model_path,
        help="Model file or folder (any readable format)." + HF_HELP,
    ),
    out: Path = typer.Argument(
        ..., metavar="OUT", help="Output file or folder (must not exist without --force)."
    ),
    to: str = typer.Option(
        ..., "--to", help="Target format: safetensors, pytorch, hf-model, gguf, torchscript, onnx."
    ),
    dtype: str = typer.Option(
        None, "--dtype", help="Cast floating weights: float16, bfloat16, float32."
    ),
    key: str = typer.Option(
        None, "--key", help="The state_dict inside a training checkpoint (e.g. model)."
    ),
    shard_size: str = typer.Option(
        None, "--shard-size", help="Max bytes per weight shard (e.g. 5GB) for hf-model outputs."
    ),
    quant: str = typer.Option(
        None,
        "--quant",
        help="GGUF: f32, f16, bf16, q8_0, q4_0, q4_1, "
        "q5_0, q5_1, q2_K, q3_K, q3_K_M, q4_K, q4_K_S, q4_K_M, q5_K, "
        "q5_K_M, q6_K (llama.cpp's types and k-quant mixes); ONNX: int8, "
        "int4.",
    ),
    block_size: int = typer.Option(
        None, "--block-size", help="ONNX --quant int4: values per quantization block (default 32)."
    ),
    split_max_size: str = typer.Option(
        None,
        "--split-max-size",
        help="GGUF: write splits of "
        "at most this much tensor data (e.g. 2G, 500M), named "
        "OUT-00001-of-0000N.gguf...",
    ),
    split_max_tensors: int = typer.Option(
        None, "--split-max-tensors", help="GGUF: write splits of at most N tensors."
    ),
    method: str = typer.Option(
        None, "--method", help="TorchScript: trace (logits), trace-kv (with a KV cache) or script."
    ),
    example_input: str = typer.Option(
        None, "--example-input", help="Traced input, e.g. 1x8:int64."
    ),
    trust: bool = typer.Option(
        False,
        "--trust-remote-code",
        "--trust",
        help="Load a source that scans dangerous or unknown with a "
        "library that can run its code, e.g. a whole pickled module "
        "(RUNS code from the file).",
    ),
    opset: int = typer.Option(None, "--opset", help="ONNX opset."),
    exporter: str = typer.Option(None, "--exporter", help="ONNX exporter: dynamo or torchscript."),
    external_data: bool = typer.Option(
        None,
        "--external-data/--no-external-data",
        help="ONNX weights in an external data file or embedded.",
    ),
    atol: float = typer.Option(None, "--atol", help="Allowed abs difference when running both."),
    no_verify: bool = typer.Option(False, "--no-verify", help="Skip verification."),
    strict: bool = typer.Option(
        False,
        "--strict",
        help="Remove the output when verification fails (default: keep it as OUT.unverified).",
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing output."),
    quiet: bool = False,  # -q/--quiet: cli/_app.py
    json_out: bool = JSON_OPTION,
) -> int:
    """Convert SRC to another format, streaming, and prove the result by reading it back
    (weights) or running both (graphs). Exit 1 when verification fails."""
    options = dict(
        dtype=dtype,
        key=key,
        shard_size=shard_size,
        quant=quant,
        method=method,
        split_max_size=split_max_size,
        split_max_tensors=split_max_tensors,
        block_size=block_size,
        example_input=example_input,
        trust=trust,
        opset=opset,
        exporter=exporter,
        external_data=external_data,
        atol=atol,
        verify=not no_verify,
        strict=strict,
        force=force,
        quiet=quiet,
    )
    return convert_and_report(src, out, to, options, json_out)


def convert_and_report(src: Path, out: Path, to: str, options: dict, json_out: bool) -> int:
    """Run one conversion (options that are None left out) and print its report, as JSON or
    the human view; 1 when verification fails (the report still printed), else 0."""
    from .._convert import convert as run_convert
    from ..errors import Mismatch

    options = {k: v for k, v in options.items() if v is not None}
    try:
        report = run_convert(src, out, to=to, **options).to_dict()
    except Mismatch as exc:
        if json_out:
            print_json(exc.report, schema="keishiki.convert/1")
        elif exc.report:
            render_report(exc.report)
        sys.stderr.write(printable(f"keishiki: verification failed: {exc}") + "\n")
        return 1
    if json_out:
        print_json(report, schema="keishiki.convert/1")
    else:
        render_report(report)
    return 0


def render_report(report: dict) -> None:
    """The short human view: path taken, then one row per step."""
    # paths, warnings and reasons are the user's or a file's text: escaped, never markup
    console.print(
        f"[bold]{escape(str(report['src']))}[/bold] ({report['src_format']}) -> "
        f"[bold]{escape(str(report['out']))}[/bold] ({report['to']})  via "
        + "  ⟶  ".join(report["path"])
    )
    rows = []
    for step in report["steps"]:
        v = step.get("verify") or {}
        if not v:
            verdict = "not verified"
        else:
            verdict = ("ok" if v.get("passed") else "FAILED") + f" ({v.get('method', '?')})"
        diff = v.get("max_abs_diff")
        rows.append(
            (
                step["edge"],
                str(step.get("n_tensors", "")),
                human_bytes(step.get("bytes_written")),
                f"{step.get('seconds', 0):.2f}s",
                verdict,
                "" if diff is None else f"{diff:.3g}",
            )
        )
    table(
        None,
        ["edge", "tensors", "written", "time", "verification", "max abs diff"],
        rows,
        justify_right=["tensors", "written", "time"],
    )
    from .app import as_flags  # the library names parameters; the CLI says its flags

    for step in report["steps"]:
        for warning in step.get("warnings", []):
            console.print(f"[yellow]warning:[/yellow] {escape(as_flags(str(warning)))}")
        splits = step.get("details", {}).get("split_files")
        if splits:
            console.print(
                f"wrote {len(splits)} splits: {escape(splits[0])} ... {escape(splits[-1])}"
            )
        quality = quality_line(step.get("verify") or {})
        if quality:
            console.print(quality)
        reason = (step.get("verify") or {}).get("reason")
        if reason:
            console.print(f"[red]{step['edge']}:[/red] {escape(str(reason))}")
    scan = report.get("source_scan")
    if scan:
        console.print(
            f"[yellow]note:[/yellow] the source scans {scan['verdict']}; its weights "
            f"were read by {scan['read_by']} ({escape(str(scan['reason']))})"
        )
    if report.get("kept_as"):
        console.print(f"[red]unverified output kept as {escape(str(report['kept_as']))}[/red]")


def quality_line(verify: dict) -> str | None:
    """One line of a quantized step's run-against-the-original metrics, or None."""
    q = verify.get("quality") if "quality" in verify else verify
    if not q or q.get("method") != "quantized-vs-original" or "kl_mean" not in q:
        return None
    sure = q["top1_agreement_confident"]
    confident = (
        f"{sure:.0%} on {q['n_confident']} confident (>= {q['top1_min']:.0%})"
        if sure is not None
        else "no confident position"
    )
    return (
        f"{q['quant']} vs original on {q['n_positions']} positions: KL mean "
        f"{q['kl_mean']:.3g} (<= {q['kl_mean_allowed']:g}), greedy agreement "
        f"{q['top1_agreement']:.0%}, {confident}; logits max abs diff "
        f"{q['max_abs_diff']:.3g}, mean {q['mean_abs_diff']:.3g}"
    )
