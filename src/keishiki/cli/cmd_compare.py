"""``keishiki compare A B``: the same model in two files or formats, tensor by tensor."""

from __future__ import annotations

from pathlib import Path

import typer

from ._app import JSON_OPTION, app
from .args import HF_HELP, model_path
from .render import console, escape, print_json, table

STYLE = {"identical": "green", "within tolerance": "yellow", "different": "red"}


@app.command()
def compare(
    a: Path = typer.Argument(
        ..., metavar="A", parser=model_path, help="Model A, the reference (any format)." + HF_HELP
    ),
    b: Path = typer.Argument(..., metavar="B", parser=model_path, help="Model B (any format)."),
    atol: float = typer.Option(
        None,
        "--atol",
        help="Allowed absolute difference per element (default 0; with --layers 1e-6).",
    ),
    rtol: float = typer.Option(
        None,
        "--rtol",
        help="Allowed difference relative to |A| "
        "(default 0; with --layers by precision: 1e-3 for float32).",
    ),
    allow_unmatched: bool = typer.Option(
        False,
        "--allow-unmatched",
        help="Tensors found on one side only do not make the verdict 'different'.",
    ),
    no_values: bool = typer.Option(False, "--no-values", help="Pair by names only."),
    outputs: bool = typer.Option(
        False,
        "--outputs",
        help="Also run both as causal LMs (greedy) and compare tokens and logits.",
    ),
    layers: bool = typer.Option(
        False,
        "--layers",
        help="Instead of the weights, run both on "
        "one prompt with every intermediate exposed and find the first "
        "layer whose output differs.",
    ),
    prompt: str = typer.Option(None, "--prompt", help="Prompt for --outputs and --layers."),
    max_tokens: int = typer.Option(20, "--max-tokens", help="Greedy steps for --outputs."),
    logits_atol: float = typer.Option(
        None,
        "--logits-atol",
        help="Allowed logit difference for --outputs (default by dtype: 1e-4 for float32).",
    ),
    trust_remote_code: bool = typer.Option(
        False,
        "--trust-remote-code",
        help="With --outputs or --layers, run models that scan "
        "dangerous or unknown (RUNS code from them).",
    ),
    show: str = typer.Option("diff", "--show", help="Rows to list: diff (not identical), all."),
    quiet: bool = False,  # -q/--quiet: cli/_app.py
    json_out: bool = JSON_OPTION,
) -> int:
    """Compare the weights of A and B tensor by tensor (and optionally their outputs), or
    with --layers their intermediate outputs module by module.

    Reports max abs/rel differences, bit-for-bit equality and dtype changes per pair.
    Exit 0 identical or within tolerance, 1 different (--layers: a layer diverges), 2 error.
    """
    if show not in ("diff", "all"):
        from ..errors import InvalidRequest

        raise InvalidRequest(f"--show {show}: choose diff or all")
    if layers:
        from .._compare import compare_layers
        from ..errors import InvalidRequest

        if outputs:
            raise InvalidRequest("--layers and --outputs are separate runs: choose one")

        layer_report = compare_layers(
            a,
            b,
            prompt=prompt,
            atol=atol,
            rtol=rtol,
            trust_remote_code=trust_remote_code,
            quiet=quiet or json_out,
        )
        if json_out:
            print_json(layer_report.to_dict())
        else:
            render_layers(layer_report)
        return layer_report.exit_code
    from .._compare import compare as run_compare

    atol, rtol = atol or 0.0, rtol or 0.0
    report = run_compare(
        a,
        b,
        atol=atol,
        rtol=rtol,
        by_value=not no_values,
        allow_unmatched=allow_unmatched,
        outputs=outputs,
        prompt=prompt,
        max_tokens=max_tokens,
        logits_atol=logits_atol,
        quiet=quiet or json_out,
        trust_remote_code=trust_remote_code,
    )
    if json_out:
        print_json(report.to_dict(), schema="keishiki.compare/1")
        return report.exit_code
    render(report, show_all=show == "all")
    return report.exit_code


def shape_text(shape) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


def _num(x) -> str:
    return "-" if x is None else f"{x:.3g}"


def render(report, show_all: bool = False) -> None:
    """Human view: the rows worth seeing, unpaired tensors, outputs, then the verdict."""
    m = report.mapping
    rows = [
        (
            escape(d.pair.a),
            escape(d.pair.b),
            d.pair.how,
            shape_text(d.pair.a_shape),
            d.pair.a_dtype
            if d.pair.a_dtype == d.pair.b_dtype
            else f"{d.pair.a_dtype} / {d.pair.b_dtype}",
            d.status,
            _num(d.max_abs_diff),
            _num(d.max_rel_diff),
        )
        for d in report.tensors
        if show_all or d.status != "identical"
    ]
    counts = ", ".join(f"{n} {s}" for s, n in report.counts().items())
    console.print(
        f"[bold]{escape(m.a_path)}[/bold] ({m.a_format}) vs "
        f"[bold]{escape(m.b_path)}[/bold] ({m.b_format}): {len(report.tensors)} "
        f"pairs ({counts})"
    )
    if rows:
        table(
            None,
            ["A", "B", "how", "shape", "dtype", "status", "max abs", "max rel"],
            rows,
            justify_right=["max abs", "max rel"],
        )
    if m.unmatched_a or m.unmatched_b:
        render_unmatched(m, show_all=show_all)
    if report.config_diff:
        table(
            "config.json keys that differ",
            ["key", "A", "B"],
            [
                (escape(k), escape(repr(a)), escape(repr(b)))
                for k, (a, b) in report.config_diff.items()
            ],
        )
    if report.outputs:
        o = report.outputs
        console.print(
            f"outputs ({o['backend_a']} vs {o['backend_b']}, prompt "
            f"{escape(repr(o['prompt']))}, "
            f"{o['steps']} greedy steps): {o['summary']}"
        )
    verdict = report.verdict
    quantized = sum(d.quant_bound is not None for d in report.tensors)
    console.print(
        f"verdict: [bold {STYLE[verdict]}]{verdict}[/bold {STYLE[verdict]}]"
        f" (atol {report.atol:g}, rtol {report.rtol:g}"
        + (f"; {quantized} quantized tensor(s) by their type's bound" if quantized else "")
        + ")"
        + ("".join(f"\n  - {escape(r)}" for r in report.reasons))
    )


def render_unmatched(name_map, show_all: bool = False) -> None:
    """Print the tensors left unpaired on each side; those that do not count (ONNX graph
    constants, computed buffers, folded BatchNorms) only as a count unless ``show_all``."""
    for side, infos in (("A", name_map.unmatched_a), ("B", name_map.unmatched_b)):
        reasons = {t.name: name_map.not_counted(t, side) for t in infos}
        quiet = [t for t in infos if reasons[t.name]]
        listed = infos if show_all else [t for t in infos if not reasons[t.name]]
        if listed:
            rows = [
                (
                    escape(t.name),
                    t.dtype,
                    shape_text(t.shape),
                    f"{reasons[t.name]} (not counted)" if reasons[t.name] else "",
                )
                for t in listed
            ]
            table(f"{len(listed)} only in {side}", ["name", "dtype", "shape", "note"], rows)
        if quiet and not show_all:
            console.print(
                f"{len(quiet)} only in {side} not counted (ONNX graph constants: "
                f"shapes, axes, Constant-node values; computed buffers such as "
                f"rotary inv_freq; BatchNorms folded into a layer, their "
                f"training counters); --show all lists them"
            )
    if not name_map.unmatched_a and not name_map.unmatched_b:
        console.print("every tensor paired")


def render_layers(report) -> None:
    """Human view of ``compare --layers``: both runs, one row per paired intermediate in A's
    execution order (the first over tolerance marked), then the verdict."""
    first = report.first_divergence
    a, b = report.a, report.b
    console.print(
        f"[bold]{escape(a.path)}[/bold] ({a.format}, {a.backend}, {a.precision}) vs "
        f"[bold]{escape(b.path)}[/bold] ({b.format}, {b.backend}, {b.precision}): "
        f"{len(report.rows)} intermediates paired, prompt "
        f"{escape(repr(report.prompt))} ({len(report.token_ids)} tokens)"
    )
    counts = {}
    for row in report.rows:
        counts[row.module] = counts.get(row.module, 0) + 1
    rows = []
    for row in report.rows:
        name = row.module + (f"[{row.index}]" if counts[row.module] > 1 else "")
        if not row.module_b.endswith(row.module) and not row.module.endswith(row.module_b):
            name += f" ↔ {row.module_b}"  # not just a wrapper's prefix (lm.) apart
        shape = shape_text(row.shape_a) + (
            "" if row.shape_a == row.shape_b else f" / {shape_text(row.shape_b)}"
        )
        status = (
            "[bold red]first divergence[/bold red]"
            if row is first
            else "[green]ok[/green]"
            if row.ok
            else "[red]over[/red]"
        )
        rows.append(
            (
                escape(name),
                shape,
                _num(row.max_abs_diff),
                _num(row.max_rel_diff),
                f"{row.cosine:.6f}",
                status,
            )
        )
    table(
        None,
        ["module", "shape", "max abs", "rel", "cosine", "status"],
        rows,
        justify_right=["max abs", "rel", "cosine"],
    )
    tolerance = f"atol {report.atol:g}, rtol {report.rtol:g} ({report.rtol_source})"
    if first is None:
        console.print(f"verdict: [bold green]within tolerance[/bold green] ({tolerance})")
    else:
        console.print(
            f"verdict: [bold red]diverged[/bold red] ({tolerance}): first at "
            f"{escape(first.module)} (rel {first.max_rel_diff:.3g}, cosine "
            f"{first.cosine:.6f}); {sum(not r.ok for r in report.rows)} of "
            f"{len(report.rows)} over"
        )
