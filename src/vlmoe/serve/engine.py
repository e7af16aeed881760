"""The model behind `vlmoe serve`: loaded once, fed by one bounded queue, run by one worker.

`ModelAdapter` is the one place that knows how to use a trained vlmoe model (predict a label or
an answer, match texts, generate, capture the routing); the HTTP layer only talks to it through
`Engine`. Greedy requests that wait together are generated as one batch (up to `max_batch`,
prompts left-padded, one KV cache); each row streams its tokens as they are chosen, and the
batch stops when all its rows have ended or gone. A request that arrives meanwhile waits for
the next batch (no iteration-level joining as in Orca, Yu et al. 2022). Sampled requests run
alone, so that a request's `seed` alone fixes its output. Because routing is dropless, a
token's experts do not depend on the other rows of its batch, so a greedy answer is the same
whether its request came alone or with seven others (`tests/serve/test_engine.py`); a model
whose routing drops tokens or lets experts choose runs one request at a time.

Every job carries a deadline and a cancel flag, checked before it starts and after every
generated token: a request that times out or whose client went away stops using the model.
When the queue is full, `submit` refuses with 429 and a `Retry-After` estimate.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from vlmoe.models.generation import iter_generate
from vlmoe.moe.layer import moe_layers
from vlmoe.serve.errors import APIError, bad_request
from vlmoe.serve.routing import capture_routing
from vlmoe.tasks import Prediction, Task

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineConfig:
    """Queueing and limits of one served model."""

    max_queue: int = 64  # requests waiting (not yet running); more are refused with 429
    max_batch: int = 8  # greedy generations run together
    timeout_s: float = 60.0  # per request, queueing included
    max_tokens: int = 256  # the most new tokens one request may ask for

    def __post_init__(self) -> None:
        for name in ("max_queue", "max_batch", "max_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")


# ----------------------------------------------------------------------------- the model

# The typed endpoints for each kind of prediction a task declares (`Task.predicts`). Every
# task, a plugin task too, also serves `/v1/predict` (its `Prediction` as JSON), so a new task
# needs no change here to be served.
KIND_ENDPOINTS: dict[str, tuple[str, ...]] = {
    "label": ("chat", "classify"),
    "answer": ("chat", "vqa"),
    "caption": ("chat",),
    "match": ("match",),
    "boxes": ("detect",),
    "image": ("images",),
}
ENDPOINT_ORDER = ("chat", "images", "classify", "vqa", "match", "detect")


class JobStoppedError(Exception):
    """Raised inside a job's work when the job was cancelled or timed out (the client has
    been told, or is gone); the worker drops the job quietly."""


class ModelAdapter:
    """What the server does with a trained model and its task (`vlmoe.tasks.Task`): predict
    through `Task.predict`, generate token by token, match texts, and capture the routing of
    the forward pass a prediction made (`Prediction.output`)."""

    def __init__(self, model: torch.nn.Module, task: Task) -> None:
        self.model, self.task = model.eval(), task
        self.info, self.tokenizer = task.info, task.tokenizer
        self.architecture, self.task_name = task.info.architecture, task.info.task
        self.device = next(model.parameters()).device

    @property
    def endpoints(self) -> tuple[str, ...]:
        offered = {e for kind in self.task.predicts for e in KIND_ENDPOINTS.get(kind, ())}
        if self.generates:
            offered.add("chat")
        named = tuple(e for e in ENDPOINT_ORDER if e in offered)
        # An image generator's one way in is /v1/images/generations (predict wants an image).
        if set(self.task.predicts) == {"image"}:
            return named
        return (*named, "predict")

    @property
    def generates(self) -> bool:
        """A decoder: chat writes its answer token by token."""
        return callable(getattr(self.model, "next_token_logits", None)) and bool(self.tokenizer)

    @property
    def batch_invariant(self) -> bool:
        """Whether a row's output is independent of the other rows of its batch: dropless
        token-choice routing in every MoE layer. Capacity drops and expert choice make tokens
        compete for experts across the batch, so such a model's requests run one at a time."""
        return all(
            layer.cfg.router == "topk" and layer.cfg.capacity_factor is None
            for layer in moe_layers(self.model)
        )

    @property
    def context_length(self) -> int:
        """Text tokens the model reads at once (prompt + generated for a decoder)."""
        text = getattr(self.model.config, "text", None)
        return int(self.info.max_len or getattr(text, "max_seq_len", 0) or 0)

    @property
    def image_tokens(self) -> int:
        """Tokens one image becomes (counted in a request's prompt tokens)."""
        n = getattr(self.model, "num_image_tokens", None)
        if isinstance(n, int):
            return n
        cfg = self.model.config
        vision = getattr(cfg, "vision", None) or cfg
        size, patch = getattr(vision, "image_size", 0), getattr(vision, "patch_size", 0)
        return (size // patch) ** 2 if size and patch else 0

    def image_tensor(self, rgb: np.ndarray) -> torch.Tensor:
        return self.task.image_batch(rgb, self.model)[0]  # (3, S, S), the task's preprocessing

    def _need_tokenizer(self) -> Any:
        if self.tokenizer is None:
            raise bad_request("this model has no tokenizer, so it cannot read text")
        return self.tokenizer

    def text_tokens(self, text: str) -> int:
        """How many tokens the model reads for `text` (specials included)."""
        return len(self._need_tokenizer().encode(text, add_special=True))

    def prompt_ids(self, text: str) -> list[int]:
        """A decoder's prompt: <bos> then the text, as `Captioning.generate` builds it."""
        tok = self._need_tokenizer()
        return [tok.bos_id] + (tok.encode(text, add_special=False) if text else [])

    # The calls below run on the worker thread, one example at a time.

    def predict(
        self, rgb: np.ndarray | None, text: str | None, routing: bool = False, **options: Any
    ) -> tuple[Prediction, list[dict] | None]:
        """`Task.predict`, and the routing of its forward pass when asked. The task's
        `ValueError`s (a missing question, ...) are the client's: 400."""
        try:
            p = self.task.predict(self.model, rgb, text, **options)
        except ValueError as e:
            raise bad_request(str(e)) from None
        captured = None
        if routing and p.output is not None:
            captured = capture_routing(self.model, p.output, p.tokens)
        return p, captured

    def generate_images(
        self,
        prompt: str,
        num: int,
        *,
        steps: int | None,
        cfg: float | None,
        sampler: str | None,
        seed: int,
        routing: bool = False,
        stopped: Callable[[], bool] = lambda: False,
    ) -> tuple[list[np.ndarray], list[dict] | None]:
        """`num` (S, S, 3) uint8 images for `prompt` through `Task.predict` (an image
        generation task; `steps`, `cfg`, `sampler` None: the task's own), and the routing of
        its forward pass when asked. `stopped()` is
        asked after every sampling step; when true, `JobStoppedError` ends the sampling."""

        def progress(step: int, total: int) -> None:
            if stopped():
                raise JobStoppedError

        try:
            p, captured = self.predict(
                None,
                prompt,
                routing,
                num=num,
                steps=steps,
                cfg=cfg,
                sampler=sampler,
                seed=seed,
                progress=progress,
            )
        except APIError as e:  # the task's word on the prompt (an unknown class, ...)
            raise bad_request(f"prompt: {e.message}", "prompt") from None
        return list(p.extra["images"]), captured

    @torch.no_grad()
    def match(self, rgbs: list[np.ndarray], texts: list[str]) -> tuple[list, list]:
        """(probabilities of each text per image, cosine similarities), both (images, texts)."""
        images = torch.stack([self.image_tensor(x) for x in rgbs])
        out = self.model(images=images, **self.task.encode(texts, self.device))
        probs = out.logits_per_image.float().softmax(-1)
        sims = out.image_embeds.float() @ out.text_embeds.float().T
        return probs.tolist(), sims.tolist()

    @torch.no_grad()
    def sequence_routing(self, rgb: np.ndarray | None, ids: list[int]) -> list[dict]:
        """The routing of one forward over the image and the token ids (a decoder's prompt and
        what it generated, as `Captioning.predict` runs it)."""
        images = self.image_tensor(rgb)[None] if rgb is not None else None
        seq = torch.tensor([ids], dtype=torch.long, device=self.device)
        out = self.model(images=images, input_ids=seq)
        return capture_routing(self.model, out, self.task.token_strings(ids))


# ----------------------------------------------------------------------------- jobs


class Job:
    """One request's work. Results go back to the event loop that submitted it as events:
    ("delta", text), ("result", value), ("done", info dict), ("error", APIError)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout_s: float) -> None:
        self.loop = loop
        self.events: asyncio.Queue = asyncio.Queue()
        self.deadline = time.monotonic() + timeout_s
        self.timeout_s = timeout_s
        self.checked_at = time.monotonic()  # when the client was last seen connected
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def expired(self) -> bool:
        return time.monotonic() > self.deadline

    def stopped(self) -> bool:
        """True (and the client told, when it is still there) if the job must not go on."""
        if self.cancelled:
            return True
        if self.expired():
            self.emit("error", timeout_error(self.timeout_s))
            return True
        return False

    def emit(self, kind: str, value: Any = None) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))
        except RuntimeError:  # the request's event loop has closed: nobody is listening
            self.cancel()


def timeout_error(timeout_s: float) -> APIError:
    return APIError(504, f"the request took longer than the server's timeout of {timeout_s:g} s")


class CallJob(Job):
    """A one-shot call on the worker thread (predict, match, routing)."""

    def __init__(self, loop, timeout_s: float, fn: Callable[[], Any]) -> None:
        super().__init__(loop, timeout_s)
        self.fn = fn


class GenerateJob(Job):
    """A decoder generation: prompt ids after an optional (H, W, 3) image, streamed as text
    deltas."""

    def __init__(
        self,
        loop,
        timeout_s: float,
        *,
        rgb: np.ndarray | None,
        prompt_ids: list[int],
        max_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: tuple[str, ...] = (),
        routing: bool = False,
        ignore_eos: bool = False,
    ) -> None:
        super().__init__(loop, timeout_s)
        self.rgb, self.prompt_ids = rgb, prompt_ids  # the image is pre-processed on the worker
        self.max_tokens, self.temperature, self.top_p, self.seed = (
            max_tokens,
            temperature,
            top_p,
            seed,
        )
        self.stop, self.routing, self.ignore_eos = stop, routing, ignore_eos
        self.new_ids: list[int] = []
        self.done = False

    @property
    def batch_key(self) -> tuple | None:
        """Jobs with equal keys may run in one batch; None = alone (sampling)."""
        return None if self.temperature > 0 else ("greedy", self.rgb is None, self.ignore_eos)


@dataclass
class TextStream:
    """Text of the generated tokens, released as deltas that never split a stop string: the
    tail that could still grow into one is held back until it cannot."""

    tokenizer: Any
    stop: tuple[str, ...] = ()
    ids: list[int] = field(default_factory=list)
    sent: str = ""

    def _text(self) -> str:
        return self.tokenizer.decode(self.ids).lstrip()

    def push(self, token: int) -> tuple[str, bool]:
        """Add a token: (new text to send, whether a stop string ended the text)."""
        self.ids.append(token)
        text = self._text()
        hits = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        if hits:
            return self._release(text[: min(hits)]), True
        hold = max(
            (n for s in self.stop for n in range(len(s) - 1, 0, -1) if text.endswith(s[:n])),
            default=0,
        )
        return self._release(text[: len(text) - hold]), False

    def flush(self) -> str:
        """The held-back tail, at the end (no stop string came)."""
        return self._release(self._text())

    def _release(self, text: str) -> str:
        if not text.startswith(self.sent):  # the decoder rewrote earlier text: wait
            return ""
        delta, self.sent = text[len(self.sent) :], text
        return delta


# ----------------------------------------------------------------------------- the engine


class Engine:
    """A model, its queue and the worker thread that runs it. `start()` / `close()`."""

    def __init__(self, adapter: ModelAdapter, config: EngineConfig | None = None) -> None:
        self.adapter = adapter
        self.config = config or EngineConfig()
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closing = False
        self._seconds_per_batch = 0.05  # a running estimate, for Retry-After
        self.batches_run = 0
        self.largest_batch = 0
        self.jobs_stopped = 0  # cancelled or timed out before finishing
        self.max_batch = self.config.max_batch
        if self.max_batch > 1 and not adapter.batch_invariant:
            log.warning(
                "this model's MoE layers drop tokens by capacity or route by expert choice, so "
                "a request's answer would depend on the others in its batch: requests run one "
                "at a time"
            )
            self.max_batch = 1

    # -- life cycle

    def start(self) -> Engine:
        if self._thread is None:
            self._closing = False
            self._thread = threading.Thread(target=self._work, name="vlmoe-engine", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        while self._queue:
            self._queue.popleft().emit("error", APIError(503, "the server is shutting down"))

    # -- submitting

    @property
    def queued(self) -> int:
        return len(self._queue)

    def submit(self, job: Job) -> Job:
        """Queue a job; `APIError(429)` with `Retry-After` when the queue is full."""
        with self._cond:
            if self._closing:
                raise APIError(503, "the server is shutting down")
            if len(self._queue) >= self.config.max_queue:
                wait = math.ceil(self._seconds_per_batch * (1 + len(self._queue) / self.max_batch))
                raise APIError(
                    429,
                    f"the server is busy: {len(self._queue)} requests are waiting "
                    f"(the limit is {self.config.max_queue}); retry after {max(1, wait)} s",
                    code="queue_full",
                    headers={"Retry-After": str(max(1, wait))},
                )
            self._queue.append(job)
            self._cond.notify()
        return job

    def call_job(self, loop, fn: Callable[[], Any]) -> CallJob:
        return CallJob(loop, self.config.timeout_s, fn)

    # -- the worker

    def _next_batch(self) -> list[Job] | None:
        with self._cond:
            while not self._queue and not self._closing:
                self._cond.wait()
            if self._closing:
                return None
            first = self._queue.popleft()
            batch = [first]
            key = first.batch_key if isinstance(first, GenerateJob) else None
            if key is not None:
                for job in list(self._queue):
                    if len(batch) >= self.max_batch:
                        break
                    if isinstance(job, GenerateJob) and job.batch_key == key:
                        self._queue.remove(job)
                        batch.append(job)
            return batch

    def _work(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            live = [job for job in batch if not job.stopped()]
            self.jobs_stopped += len(batch) - len(live)
            batch = live
            if not batch:
                continue
            start = time.perf_counter()
            try:
                if isinstance(batch[0], GenerateJob):
                    self._generate(batch)  # type: ignore[arg-type]
                else:
                    self._call(batch[0])  # type: ignore[arg-type]
            except APIError as e:
                for job in batch:
                    job.emit("error", e)
            except JobStoppedError:
                self.jobs_stopped += len(batch)
            except Exception as e:  # a fault of the model code: the server stays up
                log.exception("the engine failed on a batch of %d", len(batch))
                for job in batch:
                    job.emit("error", APIError(500, f"internal error ({type(e).__name__})"))
            elapsed = time.perf_counter() - start
            self._seconds_per_batch = 0.8 * self._seconds_per_batch + 0.2 * elapsed
            self.batches_run += 1
            self.largest_batch = max(self.largest_batch, len(batch))

    def _call(self, job: CallJob) -> None:
        job.emit("result", job.fn())

    def _generate(self, jobs: list[GenerateJob]) -> None:
        adapter, tok = self.adapter, self.adapter.tokenizer
        device = adapter.device
        width = max(len(j.prompt_ids) for j in jobs)
        ids = torch.full((len(jobs), width), tok.pad_id, dtype=torch.long)
        mask = torch.zeros(len(jobs), width, dtype=torch.long)
        for row, job in enumerate(jobs):  # left-padded
            ids[row, width - len(job.prompt_ids) :] = torch.tensor(job.prompt_ids)
            mask[row, width - len(job.prompt_ids) :] = 1
        images = None
        if jobs[0].rgb is not None:
            images = torch.stack([adapter.image_tensor(j.rgb) for j in jobs])
        first = jobs[0]
        generator = None
        if first.temperature > 0:
            generator = torch.Generator(device=device)
            generator.manual_seed(first.seed if first.seed is not None else generator.seed())
        streams = [TextStream(tok, job.stop) for job in jobs]
        steps = iter_generate(
            adapter.model,
            ids.to(device),
            mask.to(device),
            images=images,
            max_new_tokens=max(j.max_tokens for j in jobs),
            temperature=first.temperature,
            top_p=first.top_p,
            stop_tokens=[] if first.ignore_eos else [tok.eos_id],
            pad_token_id=tok.pad_id,
            generator=generator,
        )
        try:
            for tokens_B in steps:
                for job, stream, token in zip(jobs, streams, tokens_B.tolist()):
                    if not job.done:
                        self._advance(job, stream, token)
                if all(job.done for job in jobs):
                    break
        finally:
            steps.close()
        for job, stream in zip(jobs, streams):
            if not job.done:  # the batch ended (every row at its budget)
                self._finish(job, stream, "length")

    def _advance(self, job: GenerateJob, stream: TextStream, token: int) -> None:
        if job.stopped():
            job.done = True
            self.jobs_stopped += 1
            return
        job.new_ids.append(token)
        if token == self.adapter.tokenizer.eos_id and not job.ignore_eos:
            self._finish(job, stream, "stop")
            return
        delta, stopped = stream.push(token)
        if delta:
            job.emit("delta", delta)
        if stopped:
            self._finish(job, stream, "stop", flush=False)
        elif len(job.new_ids) >= job.max_tokens:
            self._finish(job, stream, "length")

    def _finish(
        self, job: GenerateJob, stream: TextStream, reason: str, flush: bool = True
    ) -> None:
        job.done = True
        if flush:
            delta = stream.flush()
            if delta:
                job.emit("delta", delta)
        info: dict[str, Any] = {
            "finish_reason": reason,
            "prompt_tokens": len(job.prompt_ids)
            + (self.adapter.image_tokens if job.rgb is not None else 0),
            "completion_tokens": len(job.new_ids),
            "text": stream.sent,
        }
        if job.routing:
            eos = self.adapter.tokenizer.eos_id
            seq = job.prompt_ids + [t for t in job.new_ids if t != eos]
            info["routing"] = self.adapter.sequence_routing(
                job.rgb, seq[: self.adapter.context_length]
            )
        job.emit("done", info)
