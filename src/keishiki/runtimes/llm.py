"""``LLM``: vLLM's offline API over every backend keishiki can run."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable
from typing import Sequence as Seq

import numpy as np

from ..errors import InvalidRequest, RuntimeUnavailable
from .base import Backend, Sequence
from .outputs import CompletionOutput, Logprob, RequestOutput
from .params import SamplingParams
from .sampling import make_rng, top_logprobs
from .select import Choice, choose
from .tokenizer import Tokenizer, find_tokenizer_dir

PromptType = str | dict
# max_tokens=None on a model whose context length nobody states: a bound, not 2**31 steps
UNBOUNDED_MAX_TOKENS = 4096
OnText = Callable[[int, int, str], None]


def _local(model: str | os.PathLike) -> Path:
    """A local path for ``model``: ``hf://`` references resolve to the Hugging Face cache."""
    if isinstance(model, str) and model.startswith("hf://"):
        from ..hub.resolve import local_path

        return local_path(model)
    return Path(model)


class LLM:
    """Load a model in any runnable format and generate from it, as ``vllm.LLM`` does.

    >>> llm = LLM(model="tiny-llama/")                 # a HF folder, .onnx, TorchScript .pt
    >>> out = llm.generate(["Hello"], SamplingParams(temperature=0, max_tokens=8))
    >>> out[0].outputs[0].text

    Args:
        model: a Hugging Face folder, an ONNX causal-LM file/folder, a TorchScript file or a
            GGUF file (dequantized once into a cached Hugging Face folder, run with torch);
            or ``hf://org/name[@rev][/file]``, from the Hugging Face cache (pulled first when
            the cache lacks it, with a warning on the ``keishiki`` logger).
        tokenizer: folder with ``tokenizer.json`` (default: the model's folder).
        backend: ``auto``, ``torch``, ``onnxruntime``, ``torchscript`` or ``vllm``.
        dtype: ``auto``/None, ``float32``, ``float16``, ``bfloat16`` (torch and vLLM).
        seed: seeds the generator of requests whose SamplingParams has no seed.
        trust_remote_code: load a model that ``keishiki scan`` rates dangerous or unknown,
            and let transformers/vLLM run the model folder's own code.
        tensor_parallel_size, pipeline_parallel_size: passed to vLLM.
        max_model_len: cap on prompt + output length (default: the model's).
        max_num_seqs: most sequences decoded in one batch.
        max_logprobs: the largest ``logprobs`` / ``prompt_logprobs`` a request may ask for
            (vLLM's engine argument and default, 20).
        device: ``cpu``/``cuda`` for torch and torchscript; providers: ONNX Runtime's.

    Attributes:
        backend: the engine's name; backend_reason: why it was chosen and how it runs.

    Raises:
        InvalidRequest: missing path, a format that cannot generate, bad arguments.
        UnsafeFile: the model scans dangerous or unknown (the load gate), without
            trust_remote_code; or one of its files leads outside its folder (the path gate).
        RuntimeUnavailable: the engine cannot run here (no vLLM / GPU, no tokenizer).
        MissingDependency: the engine's library is not installed.
    """

    def __init__(
        self,
        model: str | os.PathLike,
        tokenizer: str | os.PathLike | None = None,
        backend: str = "auto",
        dtype: str | None = None,
        seed: int | None = None,
        trust_remote_code: bool = False,
        tensor_parallel_size: int = 1,
        pipeline_parallel_size: int = 1,
        max_model_len: int | None = None,
        max_num_seqs: int | None = None,
        device: str | None = None,
        providers: list[str] | None = None,
        max_logprobs: int = 20,
        **engine_kwargs: Any,
    ):
        started = time.perf_counter()
        self.max_logprobs = max_logprobs
        self.model_path = _local(model)
        choice = choose(self.model_path, backend)
        self.format = choice.format
        if choice.format == "gguf":
            choice = _dequantized(choice, trust_remote_code)
        if choice.backend == "vllm":  # vLLM enforces the same cap itself
            engine_kwargs.setdefault("max_logprobs", max_logprobs)
            if max_num_seqs:  # its scheduler's batch: set on the engine, not afterwards
                engine_kwargs.setdefault("max_num_seqs", max_num_seqs)
        try:
            tokenizer_dir = find_tokenizer_dir(
                self.model_path,
                tokenizer
                if tokenizer is not None
                else (choice.folder if (choice.folder / "tokenizer.json").is_file() else None),
            )
            no_tokenizer = None
        except RuntimeUnavailable as exc:
            # load the model first anyway: "not a language model" is the better message
            tokenizer_dir, no_tokenizer = choice.folder, exc
        _admit(choice, tokenizer_dir, trust_remote_code)
        choice.check_sizes()
        config = choice.config() or _read_config(tokenizer_dir)
        self._engine = self._load(
            choice,
            config,
            tokenizer_dir,
            dtype=dtype,
            seed=seed,
            trust_remote_code=trust_remote_code,
            device=device,
            providers=providers,
            tp=tensor_parallel_size,
            pp=pipeline_parallel_size,
            max_model_len=max_model_len,
            engine_kwargs=engine_kwargs,
        )
        if no_tokenizer is not None:
            raise no_tokenizer
        self.tokenizer = Tokenizer(tokenizer_dir)
        if max_num_seqs:
            self._engine.max_batch = max_num_seqs
        if max_model_len:
            self._engine.max_model_len = max_model_len
        if self._engine.pad_id is not None and self.tokenizer.pad_token_id is not None:
            self._engine.pad_id = self.tokenizer.pad_token_id
        self.backend = self._engine.name
        self.backend_reason = "; ".join([choice.reason] + self._engine.details)
        self._rng = np.random.default_rng(None if seed is None else seed % 2**64)
        self.load_seconds = time.perf_counter() - started

    @staticmethod
    def _load(
        choice: Choice,
        config: dict,
        tokenizer_dir: Path,
        *,
        dtype: str | None,
        seed: int | None,
        trust_remote_code: bool,
        device: str | None,
        providers: list[str] | None,
        tp: int,
        pp: int,
        max_model_len: int | None,
        engine_kwargs: dict[str, Any],
    ) -> Backend:
        if choice.backend == "torch":
            from .torch_backend import TorchBackend

            return TorchBackend(
                choice.model_file, dtype=dtype, device=device, trust_remote_code=trust_remote_code
            )
        if choice.backend == "onnxruntime":
            from .onnxruntime_backend import OnnxRuntimeBackend

            return OnnxRuntimeBackend(
                choice.model_file, config, providers=providers, threads=engine_kwargs.get("threads")
            )
        if choice.backend == "torchscript":
            from .torchscript_backend import TorchScriptBackend

            return TorchScriptBackend(choice.model_file, config, device=device)
        from .vllm_backend import VllmBackend

        return VllmBackend(
            choice.model_file,
            tokenizer=str(tokenizer_dir),
            dtype=dtype,
            seed=seed,
            tensor_parallel_size=tp,
            pipeline_parallel_size=pp,
            max_model_len=max_model_len,
            trust_remote_code=trust_remote_code,
            **engine_kwargs,
        )

    def get_tokenizer(self) -> Tokenizer:
        """The tokenizer (keishiki's ``tokenizers``-based one, for every backend)."""
        return self.tokenizer

    def generate(
        self,
        prompts: PromptType | Seq[PromptType],
        sampling_params: SamplingParams | Seq[SamplingParams] | None = None,
        *,
        use_tqdm: bool = False,
        on_text: OnText | None = None,
    ) -> list[RequestOutput]:
        """Generate completions for each prompt.

        Args:
            prompts: a string, a list of strings, or ``{"prompt_token_ids": [...]}`` dicts.
            sampling_params: one for all prompts or one per prompt (default SamplingParams()).
            use_tqdm: accepted for vLLM compatibility (no progress bar here).
            on_text: called as ``on_text(request, index, delta)`` as text is generated.

        Returns:
            One RequestOutput per prompt, in order.

        Raises:
            InvalidRequest: no prompts, an empty prompt, out-of-range parameters, a prompt
                longer than the model takes.
        """
        if isinstance(prompts, (str, dict)):
            prompts = [prompts]
        prompts = list(prompts)
        if not prompts:
            raise InvalidRequest("nothing to generate: the prompt list is empty")
        params = self._params_per_prompt(sampling_params, len(prompts))
        texts, ids = zip(*(self._tokenize(p, i) for i, p in enumerate(prompts)))
        return self._generate_ids(list(texts), list(ids), params, on_text)

    def chat(
        self,
        messages: list[dict] | list[list[dict]],
        sampling_params: SamplingParams | Seq[SamplingParams] | None = None,
        *,
        add_generation_prompt: bool = True,
        chat_template: str | None = None,
        use_tqdm: bool = False,
        on_text: OnText | None = None,
    ) -> list[RequestOutput]:
        """Generate replies to one conversation (a list of ``{"role", "content"}`` dicts) or
        to a list of conversations, rendered with the tokenizer's chat template.

        Raises:
            InvalidRequest: no chat template, malformed messages, or what generate() raises.
        """
        if not messages:
            raise InvalidRequest(
                "messages must be a non-empty list of {'role': ..., 'content': ...} dicts"
            )
        conversations = [messages] if isinstance(messages[0], dict) else list(messages)
        rendered = [
            self.tokenizer.render_chat(c, add_generation_prompt, chat_template)
            for c in conversations
        ]
        params = self._params_per_prompt(sampling_params, len(rendered))
        for index, text in enumerate(rendered):
            _check_text(text, f"conversation {index}")
        ids = [self.tokenizer.encode(text, add_special_tokens=False) for text in rendered]
        return self._generate_ids(rendered, ids, params, on_text)

    def next_token_logits(self, token_ids: Seq[int]) -> np.ndarray:
        """Teacher-forced next-token logits (keishiki's addition): row ``i`` is what the
        model predicts after ``token_ids[:i + 1]``, shape ``[len(token_ids), vocab]``.  The
        same numbers ``prompt_logprobs`` is computed from; ``keishiki compare`` uses it to
        compare two formats of one model position by position.

        Raises:
            InvalidRequest: empty ids, an id outside the vocabulary or not an integer, or
                more ids than the model's context.
            RuntimeUnavailable: the engine has no step-by-step forward (vLLM).
        """
        scorer = getattr(self._engine, "next_token_logits", None)
        if scorer is None:
            raise RuntimeUnavailable(
                f"backend {self.backend!r} does not expose its logits; "
                f"use prompt_logprobs in SamplingParams instead"
            )
        ids = list(token_ids) if not isinstance(token_ids, (str, bytes)) else [token_ids]
        if not all(isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in ids):
            raise InvalidRequest(
                "token_ids must be a list of integer token ids "
                "(tokenize text with llm.get_tokenizer().encode)"
            )
        return scorer([int(t) for t in ids])

    # -- internals ---------------------------------------------------------------------

    def _params_per_prompt(
        self, sampling_params: SamplingParams | Seq[SamplingParams] | None, count: int
    ) -> list[SamplingParams]:
        if sampling_params is None:
            sampling_params = SamplingParams()
        if isinstance(sampling_params, SamplingParams):
            sampling_params = [sampling_params] * count
        sampling_params = list(sampling_params)
        if len(sampling_params) != count:
            raise InvalidRequest(
                f"{len(sampling_params)} sampling params for {count} prompts: "
                f"pass one, or one per prompt"
            )
        for item in sampling_params:
            if not isinstance(item, SamplingParams):
                raise InvalidRequest(
                    f"sampling_params must be SamplingParams, got {type(item).__name__}"
                )
            item.validate()
            for name in ("logprobs", "prompt_logprobs"):
                asked = getattr(item, name)
                if asked is not None and asked > self.max_logprobs:
                    # vLLM's wording; its engine argument raises the cap
                    raise InvalidRequest(
                        f"Requested {name.replace('_', ' ')} of {asked}, which "
                        f"is greater than max allowed: {self.max_logprobs} "
                        f"(LLM(max_logprobs=...) raises it)"
                    )
        return sampling_params

    def _tokenize(self, prompt: PromptType, index: int) -> tuple[str | None, list[int]]:
        if isinstance(prompt, dict):
            ids = prompt.get("prompt_token_ids")
            if ids:
                if isinstance(ids, (str, bytes)) or not all(
                    isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in ids
                ):
                    raise InvalidRequest(
                        f"prompt {index}: prompt_token_ids must be a list of integer token ids"
                    )
                return prompt.get("prompt"), [int(t) for t in ids]
            prompt = prompt.get("prompt", "")
        if not isinstance(prompt, str) or not prompt:
            raise InvalidRequest(f"prompt {index} is empty: give some text to continue")
        _check_text(prompt, f"prompt {index}")
        return prompt, self.tokenizer.encode(prompt)

    def _sequences(self, ids: list[list[int]], params: list[SamplingParams]) -> list[Sequence]:
        limit = self._engine.max_model_len
        eos = set(self.tokenizer.eos_token_ids)
        seqs = []
        for request, (prompt_ids, p) in enumerate(zip(ids, params)):
            if limit and len(prompt_ids) >= limit:
                raise InvalidRequest(
                    f"prompt {request} has {len(prompt_ids)} tokens; the model "
                    f"takes at most {limit} in all"
                )
            room = limit - len(prompt_ids) if limit else None
            max_new = (
                min(x for x in (p.max_tokens, room) if x)
                if (p.max_tokens or room)
                else UNBOUNDED_MAX_TOKENS
            )
            # __post_init__ makes it a list; validate() accepts None set afterwards
            stop_ids = set(p.stop_token_ids or []) | (set() if p.ignore_eos else eos)
            for index in range(p.n):
                seqs.append(
                    Sequence(
                        request,
                        index,
                        list(prompt_ids),
                        p,
                        make_rng(p.seed, index, self._rng),
                        stop_ids,
                        max_new,
                    )
                )
        return seqs

    def _generate_ids(
        self,
        texts: Seq[str | None],
        ids: list[list[int]],
        params: list[SamplingParams],
        on_text: OnText | None,
    ) -> list[RequestOutput]:
        seqs = self._sequences(ids, params)
        trackers = [_TextTracker(self.tokenizer, s.params) for s in seqs]
        watch = on_text is not None or any(s.params.stop for s in seqs)
        index_of = {id(s): i for i, s in enumerate(seqs)}
        for step in self._engine.run(seqs):
            if not watch:
                continue
            for seq in step:
                tracker = trackers[index_of[id(seq)]]
                delta = tracker.update(seq)
                if delta and on_text is not None:
                    on_text(seq.request, seq.index, delta)
        return self._outputs(texts, ids, params, seqs, trackers)

    def _outputs(
        self,
        texts: Seq[str | None],
        ids: list[list[int]],
        params: list[SamplingParams],
        seqs: list[Sequence],
        trackers: list[_TextTracker],
    ) -> list[RequestOutput]:
        results = [
            RequestOutput(str(i), texts[i], list(ids[i]), [], metrics={"backend": self.backend})
            for i in range(len(ids))
        ]
        for seq, tracker in zip(seqs, trackers):
            text = tracker.final_text(seq)
            logprobs = (
                None
                if seq.logprobs is None
                else [self._logprob_dict(d) for d in seq.logprobs[: len(seq.output_ids)]]
            )
            cumulative = (
                None
                if logprobs is None
                else sum(step[t].logprob for step, t in zip(logprobs, seq.output_ids) if t in step)
            )
            results[seq.request].outputs.append(
                CompletionOutput(
                    seq.index,
                    text,
                    list(seq.output_ids),
                    cumulative_logprob=cumulative,
                    logprobs=logprobs,
                    finish_reason=seq.finish_reason,
                    stop_reason=seq.stop_reason,
                )
            )
            result = results[seq.request]
            if seq.index == 0 and seq.params.prompt_logprobs is not None:
                raw = (
                    seq.prompt_logprobs
                    if seq.prompt_logprobs is not None
                    else self._prompt_logprobs(seq.prompt_ids, seq.params.prompt_logprobs)
                )
                result.prompt_logprobs = [None if d is None else self._logprob_dict(d) for d in raw]
            metrics = result.metrics
            # Sequence.add() sets both together
            if seq.first_token_at is not None and seq.last_token_at is not None:
                metrics.setdefault("first_token_s", seq.first_token_at - seq.started_at)
                metrics.setdefault("decode_s", seq.last_token_at - seq.first_token_at)
        return results

    def _prompt_logprobs(self, prompt_ids: list[int], k: int) -> list:
        """vLLM's prompt_logprobs: None for the first token, then each prompt token's
        ``{id: (logprob, rank)}`` given the tokens before it."""
        rows = self.next_token_logits(prompt_ids)
        return [None] + [
            top_logprobs(rows[i - 1], prompt_ids[i], k) for i in range(1, len(prompt_ids))
        ]

    def _logprob_dict(self, raw: dict[int, tuple[float, int]]) -> dict[int, Logprob]:
        return {
            tid: Logprob(lp, rank, self.tokenizer.decode([tid], False))
            for tid, (lp, rank) in raw.items()
        }


class _TextTracker:
    """Detokenizes one sequence as it grows: applies stop strings (cutting them from the
    text, as vLLM does) and returns the text that is safe to stream (held back by the length
    of the longest stop string, so a stop string is never half-printed, and while the text
    ends in the middle of a UTF-8 character)."""

    def __init__(self, tokenizer: Tokenizer, params: SamplingParams):
        self.tokenizer = tokenizer
        self.params = params
        # as validate() reads it: a str set after __post_init__ is one stop string
        self.stop = [params.stop] if isinstance(params.stop, str) else list(params.stop or [])
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        self.streamed = 0
        self.done = False

    def update(self, seq: Sequence) -> str:
        """The new streamable text after this step (and stop-string handling)."""
        if self.done:
            return ""
        text = self.final_text(seq)
        if seq.finished:
            self.done = True
            end = len(text)
        else:
            end = len(text.rstrip("\ufffd")) - self.hold
        delta = text[self.streamed : max(end, self.streamed)]
        self.streamed += len(delta)
        return delta

    def final_text(self, seq: Sequence) -> str:
        """The sequence's text, cut at the first stop string (which then ends it)."""
        if seq.text is not None:  # the backend detokenized (vLLM)
            return seq.text
        text = self.tokenizer.decode(seq.output_ids, self.params.skip_special_tokens)
        # stop strings match complete characters only, as vLLM's detokenizer: while the
        # last tokens hold part of a UTF-8 character the text ends in U+FFFD, which would
        # match a stop string "\ufffd" (or one ending in it) a token too early
        complete = text if seq.finished else text.rstrip("\ufffd")
        found = [(complete.find(s), s) for s in self.stop if s in complete]
        if found:
            at, stop = min(found)
            text = text[: at + len(stop) if self.params.include_stop_str_in_output else at]
            seq.finish_reason, seq.stop_reason = "stop", stop
        return text


def _read_config(folder: Path) -> dict:
    import json

    try:
        return json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return {}


def _dequantized(choice: Choice, trust: bool) -> Choice:
    """The choice for a GGUF file: its cached Hugging Face folder (after the GGUF itself has
    passed the load gate: its chat template is rendered later)."""
    from ..core.gate import admit
    from .gguf_run import hf_folder_for

    admit(choice.model_file, trust=trust, purpose="run")
    folder = hf_folder_for(choice.model_file)
    return Choice(choice.backend, "hf-model", f"{choice.reason}: {folder}", folder, folder)


def _admit(choice: Choice, tokenizer_dir: Path, trust: bool) -> None:
    """The load gate for everything the engine will open: the model (an HF folder whole, or
    the ONNX/TorchScript file: its verdict must be safe unless trusted) and the folders its
    config and tokenizer come from (no file of theirs may lead outside them)."""
    from ..core.gate import admit, check_tree

    admit(choice.model_file, trust=trust, purpose="run")
    for folder in {choice.folder, tokenizer_dir}:
        check_tree(folder, recursive=False)


def _check_text(text: str, what: str) -> None:
    """Raise :class:`InvalidRequest` when ``text`` has no UTF-8 form (lone surrogates: a
    non-UTF-8 byte on the command line, ``"\\ud800"`` in JSON): no tokenizer can take it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidRequest(
            f"{what} is not valid text ({exc.reason} at character {exc.start})"
        ) from None
