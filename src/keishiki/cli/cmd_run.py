"""``keishiki run MODEL -p PROMPT``: generate text with whichever backend runs the model."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import typer

from ._app import JSON_OPTION, app
from .args import HF_HELP, model_path
from .render import print_json, write_text


@app.command()
def run(
    model: Path = typer.Argument(
        ...,
        metavar="MODEL",
        parser=model_path,
        help="HF folder, ONNX file/folder, TorchScript or GGUF file." + HF_HELP,
    ),
    prompt: list[str] = typer.Option(None, "--prompt", "-p", help="Prompt (repeat for more)."),
    backend: str = typer.Option(
        "auto", "--backend", "-b", help="auto, torch, onnxruntime, torchscript or vllm."
    ),
    tokenizer: Path = typer.Option(None, "--tokenizer", help="Folder with tokenizer.json."),
    max_tokens: int = typer.Option(16, "--max-tokens", "-n", help="Most tokens to generate."),
    temperature: float = typer.Option(1.0, "--temperature", "-t", help="0 = greedy."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus mass, in (0, 1]."),
    top_k: int = typer.Option(0, "--top-k", help="Keep the k most likely tokens (0 = all)."),
    min_p: float = typer.Option(0.0, "--min-p", help="Drop tokens below min_p × the best."),
    repetition_penalty: float = typer.Option(1.0, "--repetition-penalty"),
    seed: int = typer.Option(None, "--seed", help="Seed: same seed, same tokens."),
    stop: list[str] = typer.Option(None, "--stop", help="Stop string (repeatable)."),
    chat: bool = typer.Option(
        False, "--chat", help="Wrap each prompt as a user message in the tokenizer's chat template."
    ),
    dtype: str = typer.Option(None, "--dtype", help="auto, float32, float16, bfloat16."),
    logprobs: int = typer.Option(
        None,
        "--logprobs",
        help="Log-probabilities of the K most "
        "likely tokens at each generated step (0: the chosen one).",
    ),
    prompt_logprobs: int = typer.Option(
        None, "--prompt-logprobs", help="The same for each prompt token after the first."
    ),
    trust_remote_code: bool = typer.Option(
        False,
        "--trust-remote-code",
        help="Load a model that scan rates dangerous or unknown, "
        "and let transformers/vLLM run the folder's own code (RUNS code from it).",
    ),
    json_out: bool = JSON_OPTION,
    quiet: bool = False,  # -q/--quiet: cli/_app.py
) -> int:
    """Generate from MODEL (vLLM's sampling options); one prompt streams as it is generated."""
    from ..errors import InvalidRequest
    from ..runtimes import LLM, SamplingParams

    # check the request before loading anything: bad input fails fast
    params = SamplingParams(
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        min_p=min_p,
        repetition_penalty=repetition_penalty,
        seed=seed,
        stop=list(stop or []),
        logprobs=logprobs,
        prompt_logprobs=prompt_logprobs,
    ).validate()
    if not prompt:
        raise InvalidRequest("no prompt: give one or more -p PROMPT")
    if any(not p for p in prompt):
        raise InvalidRequest("a prompt is empty: give some text to continue")
    llm = LLM(
        model=str(model),
        backend=backend,
        tokenizer=tokenizer,
        dtype=dtype,
        seed=seed,
        trust_remote_code=trust_remote_code,
    )
    stream = len(prompt) == 1 and not json_out
    on_text = (lambda _req, _idx, delta: write_text(delta)) if stream else None
    started = time.perf_counter()
    if chat:
        outs = llm.chat([[{"role": "user", "content": p}] for p in prompt], params, on_text=on_text)
    else:
        outs = llm.generate(prompt, params, on_text=on_text)
    seconds = time.perf_counter() - started
    if json_out:
        print_json(
            {
                "backend": llm.backend,
                "backend_reason": llm.backend_reason,
                "outputs": [o.to_dict() for o in outs],
            },
            schema="keishiki.run/1",
        )
        return 0
    if stream:
        write_text("\n")
    else:
        for out in outs:
            write_text(f"--- {out.prompt}\n{out.outputs[0].text}\n")
    for number, out in enumerate(outs):
        # several prompts: say whose numbers follow (their texts were printed above)
        label = f" of prompt {number}" if len(outs) > 1 else ""
        if out.prompt_logprobs is not None:
            _write_prompt_logprobs(out, label, lambda t: llm.get_tokenizer().decode([t], False))
        if logprobs is not None:
            _write_logprobs(out.outputs[0], label)
    if quiet:
        return 0
    tokens = sum(len(c.token_ids) for o in outs for c in o.outputs)
    sys.stderr.write(
        f"[{llm.backend}: {llm.backend_reason}; {tokens} tokens in "
        f"{seconds:.2f} s, load {llm.load_seconds:.2f} s]\n"
    )
    return 0


def _write_logprobs(completion, label: str = "") -> None:
    """One line per generated token: the token, its log-probability and rank, then the
    other most likely tokens."""
    cumulative = completion.cumulative_logprob
    write_text(
        f"--- logprobs{label} (cumulative "
        f"{'n/a' if cumulative is None else format(cumulative, '.4f')})\n"
    )
    for token, step in zip(completion.token_ids, completion.logprobs or []):
        _write_step(token, step)


def _write_prompt_logprobs(out, label: str, decode) -> None:
    """The same lines for each prompt token, given the tokens before it (the first has
    nothing before it: no log-probability, as in vLLM)."""
    write_text(f"--- prompt logprobs{label}\n")
    for token, step in zip(out.prompt_token_ids, out.prompt_logprobs):
        if step is None:
            write_text(f"{decode(token)!r:>16} {'':>9}  (first token: nothing before it)\n")
        else:
            _write_step(token, step)


def _write_step(token: int, step: dict) -> None:
    chosen = step[token]
    others = ", ".join(
        f"{lp.decoded_token!r} {lp.logprob:.3f}" for tid, lp in step.items() if tid != token
    )
    write_text(
        f"{chosen.decoded_token!r:>16} {chosen.logprob:9.4f}  rank {chosen.rank:<4}"
        + (f"  | {others}" if others else "")
        + "\n"
    )
