"""Load test of `vlmoe serve`: N concurrent clients stream chat completions with an image from a
real uvicorn on 127.0.0.1, and the table reports requests/s, p50/p99 latency and time to first
token, against one client alone measured in the same run (the reference row).

The server is `vlmoe serve` in its own process; every request asks for `--max-tokens` tokens
with `ignore_eos` (as vLLM's benchmarks do), so that requests are alike whatever the model
writes. The run is bounded in count (`--requests` per client) and in time (`--max-seconds`),
and only talks to the loopback address. A client told 429 waits `Retry-After` and tries again
(counted); a 5xx, a broken stream or a request that never finished is a failure, and the script
exits 1.

    python benchmarks/serve_load.py                        # a decoder-debug-moe trained 3 steps
    python benchmarks/serve_load.py --clients 32 --requests 4 --max-tokens 8
    python benchmarks/serve_load.py --model runs/captioner --json results.json
    python benchmarks/serve_load.py --images --clients 8 --requests 2   # a DiT: images/s

With `--images` the clients ask `/v1/images/generations` of an image generation model instead
(`--n` images of `--steps` steps each; default model: a dit-debug-moe trained 3 steps), and
the tokens/s column counts images/s; there is no time to first token.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import numpy as np
from PIL import Image


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def png_url(seed: int, size: int = 32) -> str:
    rgb = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@dataclass
class Outcome:
    ok: bool
    status: int
    latency_s: float
    ttft_s: float | None
    retries: int
    error: str = ""
    tokens: int = 0


@dataclass
class Row:
    clients: int
    requests: int
    ok: int
    failed: int
    server_errors: int
    retries_429: int
    seconds: float
    requests_per_s: float
    tokens_per_s: float
    p50_latency_ms: float
    p99_latency_ms: float
    p50_ttft_ms: float
    p99_ttft_ms: float
    errors: list[str] = field(default_factory=list)


async def one_request(http: httpx.AsyncClient, url: str, body: dict, deadline: float) -> Outcome:
    """One streamed chat completion, retried on 429 until the deadline."""
    start, retries = time.perf_counter(), 0
    while True:
        ttft = None
        try:
            async with http.stream("POST", url + "/v1/chat/completions", json=body) as r:
                if r.status_code == 429 and time.monotonic() < deadline:
                    retries += 1
                    await r.aread()
                    await asyncio.sleep(float(r.headers.get("retry-after", "1")))
                    continue
                if r.status_code != 200:
                    text = (await r.aread()).decode()[:200]
                    return Outcome(False, r.status_code, 0, None, retries, text)
                done = finished = False
                tokens = 0
                async for line in r.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    data = line[6:]
                    if data == "[DONE]":
                        done = True
                        break
                    chunk = json.loads(data)
                    if "error" in chunk:
                        return Outcome(False, 200, 0, None, retries, chunk["error"]["message"])
                    if chunk.get("usage"):
                        tokens = chunk["usage"]["completion_tokens"]
                    choice = chunk["choices"][0] if chunk["choices"] else {}
                    if ttft is None and choice.get("delta", {}).get("content"):
                        ttft = time.perf_counter() - start
                    finished = finished or bool(choice.get("finish_reason"))
                ok = done and finished
                return Outcome(
                    ok,
                    200,
                    time.perf_counter() - start,
                    ttft,
                    retries,
                    "" if ok else "stream ended early",
                    tokens,
                )
        except httpx.HTTPError as e:
            return Outcome(False, 0, 0, None, retries, f"{type(e).__name__}: {e}")


async def one_image_request(
    http: httpx.AsyncClient, url: str, body: dict, deadline: float
) -> Outcome:
    """One images request, retried on 429 until the deadline; `tokens` counts the images."""
    start, retries = time.perf_counter(), 0
    while True:
        try:
            r = await http.post(url + "/v1/images/generations", json=body)
        except httpx.HTTPError as e:
            return Outcome(False, 0, 0, None, retries, f"{type(e).__name__}: {e}")
        if r.status_code == 429 and time.monotonic() < deadline:
            retries += 1
            await asyncio.sleep(float(r.headers.get("retry-after", "1")))
            continue
        if r.status_code != 200:
            return Outcome(False, r.status_code, 0, None, retries, r.text[:200])
        images = len(r.json()["data"])
        ok = images == body["n"]
        error = "" if ok else f"{images} images, asked for {body['n']}"
        return Outcome(ok, 200, time.perf_counter() - start, None, retries, error, images)


def chat_body(model: str, seed: int, max_tokens: int) -> dict:
    return {
        "model": model,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "a"},
                    {"type": "image_url", "image_url": {"url": png_url(seed)}},
                ],
            }
        ],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,  # every request writes max_tokens tokens
    }


def image_body(model: str, seed: int, args: argparse.Namespace) -> dict:
    return {"model": model, "prompt": "0", "n": args.n, "steps": args.steps, "seed": seed}


async def run_clients(url: str, model: str, clients: int, requests: int, args) -> Row:
    max_seconds = args.max_seconds
    deadline = time.monotonic() + max_seconds
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    outcomes: list[Outcome] = []

    async def client(c: int, http: httpx.AsyncClient) -> None:
        for i in range(requests):
            if time.monotonic() > deadline:
                outcomes.append(Outcome(False, 0, 0, None, 0, "not sent: out of time"))
                continue
            seed = c * 1000 + i
            if args.images:
                body = image_body(model, seed, args)
                outcomes.append(await one_image_request(http, url, body, deadline))
            else:
                body = chat_body(model, seed, args.max_tokens)
                outcomes.append(await one_request(http, url, body, deadline))

    start = time.perf_counter()
    async with httpx.AsyncClient(timeout=max_seconds, limits=limits) as http:
        await asyncio.gather(*(client(c, http) for c in range(clients)))
    seconds = time.perf_counter() - start
    good = [o for o in outcomes if o.ok]
    lat = sorted(o.latency_s * 1000 for o in good) or [float("nan")]
    ttft = sorted(o.ttft_s * 1000 for o in good if o.ttft_s is not None) or [float("nan")]

    def pct(xs, q):
        return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]

    return Row(
        clients=clients,
        requests=len(outcomes),
        ok=len(good),
        failed=len(outcomes) - len(good),
        server_errors=sum(o.status >= 500 for o in outcomes),
        retries_429=sum(o.retries for o in outcomes),
        seconds=round(seconds, 2),
        requests_per_s=round(len(good) / seconds, 2),
        tokens_per_s=round(sum(o.tokens for o in good) / seconds, 1),
        p50_latency_ms=round(statistics.median(lat), 1),
        p99_latency_ms=round(pct(lat, 0.99), 1),
        p50_ttft_ms=round(statistics.median(ttft), 1),
        p99_ttft_ms=round(pct(ttft, 0.99), 1),
        errors=sorted({o.error for o in outcomes if o.error})[:5],
    )


@contextlib.contextmanager
def vlmoe_serve(model: str | Path, args: argparse.Namespace) -> Iterator[str]:
    """`vlmoe serve MODEL` in its own process on a free loopback port (so that the clients of
    this process do not share its interpreter); yields the base URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "vlmoe", "serve", str(model), "--port", str(port), "-q"]
    cmd += ["--served-model-name", "m", "--max-batch", str(args.max_batch)]
    cmd += ["--max-queue", str(args.max_queue), "--timeout", str(args.max_seconds)]
    cmd += ["--max-images", str(max(8, args.n))]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).resolve().parents[1] / "src"), env.get("PYTHONPATH", "")]
    )
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"vlmoe serve exited with code {proc.returncode}")
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("vlmoe serve did not come up within 120 s")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def debug_model(directory: Path, preset: str) -> Path:
    from vlmoe.recipes.run import train
    from vlmoe.train import RunConfig, apply_overrides

    cfg = apply_overrides(
        RunConfig(),
        [
            f"model.preset={preset}",
            "train.steps=3",
            "train.batch_size=4",
            "data.num_train=24",
            "data.num_eval=4",
            "eval.max_new_tokens=4",
        ],
    )
    train(cfg, directory)
    return directory


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="run or model directory (default: a decoder-debug-moe)")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--requests", type=int, default=4, help="requests per client")
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--max-seconds", type=float, default=120.0, help="bound on each phase")
    p.add_argument("--max-queue", type=int, default=64)
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=1, help="the server's torch threads")
    p.add_argument("--json", help="also write the rows to this JSON file")
    p.add_argument("--images", action="store_true", help="load /v1/images/generations instead")
    p.add_argument("--n", type=int, default=1, help="--images: images a request")
    p.add_argument("--steps", type=int, default=30, help="--images: sampling steps")
    args = p.parse_args(argv)
    if args.clients < 1 or args.requests < 1 or args.n < 1 or args.steps < 1:
        p.error("--clients, --requests, --n and --steps must be >= 1")

    with tempfile.TemporaryDirectory() as tmp:
        preset = "dit-debug-moe" if args.images else "decoder-debug-moe"
        model = args.model or debug_model(Path(tmp) / "model", preset)
        print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; server torch threads {args.threads}")
        work = (
            f"{args.n} images of {args.steps} steps a request"
            if args.images
            else f"{args.max_tokens} new tokens a request (ignore_eos), streamed"
        )
        print(f"model: {model}; max_batch {args.max_batch}, max_queue {args.max_queue}; {work}")
        with vlmoe_serve(model, args) as url:
            asyncio.run(run_clients(url, "m", 1, 2, args))  # warm-up
            reference = asyncio.run(run_clients(url, "m", 1, args.requests * 2, args))
            loaded = asyncio.run(run_clients(url, "m", args.clients, args.requests, args))
            health = httpx.get(url + "/health").json()
            print(f"engine: {health['batches_run']} batches, largest {health['largest_batch']}")
    rows = [reference, loaded]
    head = (
        "clients",
        "requests",
        "ok",
        "failed",
        "5xx",
        "429 retries",
        "req/s",
        "vs 1 client",
        "images/s" if args.images else "tokens/s",
        "p50 ms",
        "p99 ms",
        "p50 TTFT ms",
        "p99 TTFT ms",
    )
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        ratio = r.requests_per_s / reference.requests_per_s if reference.requests_per_s else 0
        cells = (
            r.clients,
            r.requests,
            r.ok,
            r.failed,
            r.server_errors,
            r.retries_429,
            r.requests_per_s,
            f"{ratio:.2f}x",
            r.tokens_per_s,
            r.p50_latency_ms,
            r.p99_latency_ms,
            r.p50_ttft_ms,
            r.p99_ttft_ms,
        )
        print("| " + " | ".join(str(c) for c in cells) + " |")
    for r in rows:
        for e in r.errors:
            print(f"error ({r.clients} clients): {e}")
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in rows], indent=1) + "\n")
    bad = any(r.failed or r.server_errors for r in rows)
    print("FAIL: failed requests or 5xx" if bad else "OK: no 5xx and no lost request")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
