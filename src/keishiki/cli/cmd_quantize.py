"""``keishiki quantize MODEL.onnx OUT --int8|--int4``: an ONNX model's weights quantized with
onnxruntime's own quantizers, verified against the original."""

from __future__ import annotations

from pathlib import Path

import typer

from ._app import JSON_OPTION, app


@app.command()
def quantize(
    src: Path = typer.Argument(..., metavar="MODEL", help="ONNX model file or folder."),
    out: Path = typer.Argument(
        ...,
        metavar="OUT",
        help="Output .onnx file or folder (must not exist without "
        "--force; a folder keeps external data, tokenizer and config).",
    ),
    int8: bool = typer.Option(
        False,
        "--int8",
        help="8-bit weights, activations quantized at run time (onnxruntime quantize_dynamic).",
    ),
    int4: bool = typer.Option(
        False, "--int4", help="4-bit block-wise weights (onnxruntime MatMulNBits)."
    ),
    block_size: int = typer.Option(
        None,
        "--block-size",
        help="--int4: values per block, a power of 2 from 16 to 256 (default 32).",
    ),
    no_verify: bool = typer.Option(
        False, "--no-verify", help="Skip running it against the original."
    ),
    strict: bool = typer.Option(
        False,
        "--strict",
        help="Remove the output when verification fails (default: keep it as OUT.unverified).",
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing output."),
    quiet: bool = False,  # -q/--quiet: cli/_app.py
    json_out: bool = JSON_OPTION,
) -> int:
    """Quantize an ONNX model's MatMul weights to int8 or int4 and check the result against
    the original (KL divergence and greedy agreement for a causal LM). Exit 1 when it fails
    its tolerance. For GGUF: keishiki convert SRC OUT --to gguf --quant q4_K_M."""
    from ..errors import InvalidRequest
    from .cmd_convert import convert_and_report

    if int8 == int4:
        raise InvalidRequest("quantize needs exactly one of --int8 or --int4")
    if src.exists():
        # say what quantize takes rather than let convert's path search wander through a
        # GGUF of a bare tensor file and fail on a step the user never asked for
        from .._convert import source_format

        kind = source_format(src)
        if kind not in ("onnx", "hf-model"):
            raise InvalidRequest(
                f"{src}: a {kind} file; keishiki quantize takes an ONNX model "
                f"(or a Hugging Face folder, exported first). For GGUF: "
                f"keishiki convert SRC OUT --to gguf --quant q4_K_M"
            )
    options = dict(
        quant="int8" if int8 else "int4",
        block_size=block_size,
        verify=not no_verify,
        strict=strict,
        force=force,
        quiet=quiet,
    )
    return convert_and_report(src, out, "onnx", options, json_out)
