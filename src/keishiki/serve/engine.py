"""The engine thread: owns the model, admits queued requests into the running batch, steps
it, and hands each request its new text on the event loop.

The model runs on one thread of its own (a forward pass blocks; the event loop must keep
answering), and only that thread touches the backend and the batch.  Requests cross over
through a bounded queue under a lock; their updates come back through
``loop.call_soon_threadsafe`` into each request's ``asyncio.Queue``.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import AsyncIterator

from ..errors import KeishikiError
from ..runtimes.base import Sequence
from ..runtimes.batch import DecodeBatch

# the same stop-string and streaming rules as LLM.generate
from ..runtimes.llm import _TextTracker as TextTracker
from .metrics import Metrics


class ServerBusy(KeishikiError):
    """The queue of waiting requests is full (HTTP 503 with Retry-After)."""


class EngineFailed(KeishikiError):
    """The model failed while running this request (HTTP 500)."""


class EngineStopped(EngineFailed):
    """The engine thread has stopped: no request can run (HTTP 503)."""


@dataclass
class Update:
    """What one completion gained in one step: its new text, token ids and their
    ``{id: (logprob, rank)}`` dicts (when asked), and how it ended, once it has."""

    index: int
    text: str
    token_ids: list[int]
    logprobs: list[dict] | None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class Request:
    """One HTTP request's sequences (prompts × n) and the queue its updates arrive on."""

    _ids = itertools.count()

    def __init__(
        self, seqs: list[Sequence], trackers: list[TextTracker], loop: asyncio.AbstractEventLoop
    ):
        self.number = next(self._ids)
        self.seqs = seqs
        self.trackers = trackers
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue()
        self.arrived = time.perf_counter()
        self.sent = [0] * len(seqs)  # tokens already handed over, per sequence
        self.last_at: list[float | None] = [None] * len(seqs)
        self.reported = [False] * len(seqs)  # finish already handed over
        self.cancelled = False
        self.done = False

    def put(self, item) -> None:
        """Hand ``item`` to the event loop (from the engine thread)."""
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: the server is shutting down
            pass


class Engine:
    """Continuous batching over an :class:`~keishiki.runtimes.LLM`'s loop backend.

    Args:
        llm: the loaded model (its backend must be a LoopBackend: torch, onnxruntime,
            torchscript).
        max_num_seqs: most sequences decoded together (vLLM's name).
        max_queue_len: most requests waiting for a slot; one more is refused (ServerBusy).
        metrics: where counts and latencies go.
    """

    def __init__(self, llm, max_num_seqs: int, max_queue_len: int, metrics: Metrics):
        self.llm = llm
        self.batch = DecodeBatch(llm._engine, max_num_seqs)
        self.max_queue_len = max_queue_len
        self.metrics = metrics
        self._cond = threading.Condition()
        self._waiting: deque[Request] = deque()
        self._running: list[Request] = []
        self._stop = False
        self._draining = False
        self._thread = threading.Thread(target=self._loop, name="keishiki-engine", daemon=True)

    @property
    def capacity(self) -> int:
        """Most sequences one step decodes."""
        return self.batch.capacity

    @property
    def alive(self) -> bool:
        """Whether the engine thread runs and takes requests (``/health`` answers 503 once
        it does not, a draining server included)."""
        return self._thread.is_alive() and not self._stop and not self._draining

    def start(self) -> None:
        """Start the engine thread."""
        self._thread.start()

    def drain(self, seconds: float) -> None:
        """Take no more requests (503) and give those in flight ``seconds`` to finish; what
        still runs then ends with an error (a stream: one error event before ``[DONE]``),
        before the HTTP server cancels its tasks and cuts the connections."""
        with self._cond:
            self._draining = True
        timer = threading.Timer(seconds, self.stop)
        timer.daemon = True
        timer.start()

    def stop(self) -> None:
        """Stop the engine thread (requests still running get an error)."""
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(timeout=30)

    def submit(self, request: Request) -> None:
        """Queue ``request`` for the batch.

        Raises:
            InvalidRequest: what the backend refuses in its prompts (checked here, so one bad
                request never fails the batch it would join).
            ServerBusy: ``max_queue_len`` requests are already waiting.
        """
        self.llm._engine.check(request.seqs)
        with self._cond:
            # a stopped (or dead) engine thread never takes the request: refuse it rather than
            # leave its client waiting forever
            if not self.alive:
                raise EngineStopped("the server is stopping: no new requests")
            if len(self._waiting) >= self.max_queue_len:
                self.metrics.rejected.inc()
                raise ServerBusy(
                    f"the server is busy: {len(self._waiting)} requests are "
                    f"waiting already; retry later"
                )
            self._waiting.append(request)
            self.metrics.waiting.set(len(self._waiting))
            self._cond.notify()

    def cancel(self, request: Request) -> None:
        """Cancel ``request`` (its client went away): it leaves the queue or the batch
        before the next step."""
        with self._cond:
            if request.done or request.cancelled:
                return
            request.cancelled = True
            self._cond.notify()

    async def updates(self, request: Request) -> AsyncIterator[list[Update]]:
        """The request's updates as they come; cancels it if the consumer stops early
        (a client that disconnects closes this generator).

        Raises:
            EngineFailed: the model failed on this request.
        """
        try:
            while True:
                item = await request.queue.get()
                if item is None:
                    return
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            if not request.done:
                self.cancel(request)

    # -- the engine thread -------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stop and not self._waiting and not self.batch.size:
                    self._cond.wait()
                if self._stop:
                    break
            try:
                self._drop_cancelled()  # first: their rows are free for the waiting
            except Exception as exc:  # cutting the cache failed: it is unusable, all fail
                self._fail(list(self._running), exc)
            with self._cond:
                admitted = self._take_waiting()
            try:
                if admitted:
                    self._admit(admitted)
            except Exception as exc:  # the prefill failed: only the joining requests fail
                self._fail(admitted, exc)
            try:
                if self.batch.size:
                    self.metrics.batch_size.observe(self.batch.size)
                    self.batch.step()
                    self.metrics.steps.inc()
                    self._publish()
            except Exception as exc:  # a failed step leaves the cache unusable: all fail
                self._fail(list(self._running), exc)
        self._fail(
            list(self._running) + list(self._waiting),
            EngineStopped("the server stopped before this request finished"),
        )

    def _take_waiting(self) -> list[Request]:
        """Requests leaving the queue for the batch, first come first served (called under
        the lock): cancelled ones are dropped; the head waits while its sequences do not
        fit, so a large ``n`` is not starved by small requests behind it."""
        for request in [r for r in self._waiting if r.cancelled]:
            self._waiting.remove(request)
            request.done = True
            self.metrics.cancelled.inc()
        admitted, free = [], self.batch.free
        while self._waiting and len(self._waiting[0].seqs) <= free:
            request = self._waiting.popleft()
            free -= len(request.seqs)
            admitted.append(request)
        self.metrics.waiting.set(len(self._waiting))
        return admitted

    def _admit(self, admitted: list[Request]) -> None:
        seqs = [s for r in admitted for s in r.seqs]
        if self.batch.size:
            self.metrics.joined.inc(len(admitted))
        for request in admitted:
            self.metrics.prompt_tokens.inc(
                sum(len(s.prompt_ids) for s in request.seqs if s.index == 0)
            )
            for seq in request.seqs:
                seq.started_at = request.arrived
                if seq.index == 0 and seq.params.prompt_logprobs is not None:
                    seq.prompt_logprobs = self.llm._prompt_logprobs(
                        seq.prompt_ids, seq.params.prompt_logprobs
                    )
        self._running.extend(admitted)
        self.metrics.running.set(len(self._running))
        self.batch.join(seqs)
        self._publish()

    def _drop_cancelled(self) -> None:
        for request in self._running:
            if request.cancelled:
                for seq in request.seqs:
                    if not seq.finished:
                        seq.finish_reason = "abort"
        self.batch.drop_finished()
        gone = [r for r in self._running if r.cancelled]
        for request in gone:
            self._running.remove(request)
            request.done = True
            self.metrics.cancelled.inc()
        if gone:
            self.metrics.running.set(len(self._running))

    def _publish(self) -> None:
        """Hand every running request what its sequences gained; finished requests leave."""
        metrics = self.metrics
        for request in list(self._running):
            if request.cancelled:
                continue
            updates = []
            for i, (seq, tracker) in enumerate(zip(request.seqs, request.trackers)):
                if request.reported[i]:
                    continue
                text = tracker.update(seq)  # applies stop strings (may finish the sequence)
                new = seq.output_ids[request.sent[i] :]
                if new:
                    metrics.generation_tokens.inc(len(new))
                    if request.last_at[i] is None:
                        metrics.ttft.observe(seq.first_token_at - request.arrived)
                    else:
                        metrics.itl.observe(seq.last_token_at - request.last_at[i])
                    request.last_at[i] = seq.last_token_at
                logprobs = (
                    None
                    if seq.logprobs is None
                    else seq.logprobs[request.sent[i] : len(seq.output_ids)]
                )
                request.sent[i] = len(seq.output_ids)
                if seq.finished:
                    request.reported[i] = True
                if text or new or seq.finished:
                    updates.append(
                        Update(i, text, list(new), logprobs, seq.finish_reason, seq.stop_reason)
                    )
            if updates:
                request.put(updates)
            if all(request.reported):
                request.done = True
                request.put(None)
                self._running.remove(request)
                metrics.finished.inc()
                metrics.e2e.observe(time.perf_counter() - request.arrived)
        self.batch.drop_finished()  # stop strings end sequences here: they leave now
        metrics.running.set(len(self._running))

    def _fail(self, requests: list[Request], exc: Exception) -> None:
        """End ``requests`` with an error; the batch keeps the others (or is emptied, with
        all of them failed, when its cache cannot be cut)."""
        message = (
            str(exc)
            if isinstance(exc, KeishikiError)
            else f"the model failed: {type(exc).__name__}: {exc}"
        )
        kind = EngineStopped if isinstance(exc, EngineStopped) else EngineFailed
        error = kind(message.splitlines()[0] if message else "the model failed")
        for request in requests:
            for seq in request.seqs:
                if not seq.finished:
                    seq.finish_reason = "abort"
            request.done = True
            request.put(error)
            if request in self._running:
                self._running.remove(request)
        try:
            self.batch.drop_finished()
        except Exception:
            self.batch.clear()
            if self._running:
                self._fail(list(self._running), exc)
        self.metrics.running.set(len(self._running))
