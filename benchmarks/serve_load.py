"""Load on ``grounded-seg serve``: concurrent clients on 127.0.0.1, malformed requests mixed in,
with dynamic batching (``--max-batch 8``) and one image at a time (``--max-batch 1``).

The server is the real command in its own process (one uvicorn worker, the models loaded once);
the clients are threads of this process, each with its own keep-alive connection. Every request
body is made before the clock starts. Per run: ``--clients`` x ``--requests`` requests, of which
every ``--bad-every``-th is malformed, cycling through a truncated PNG, a PNG whose header
declares 30000 x 30000 pixels, an empty prompt and a wrong content type. Reported per mode (the
median of ``--repeats`` runs, modes alternating): requests/s (well-formed requests answered
per second of the run), p50 / p95 latency of the well-formed ones, the server's responses by
status class, and its resident memory after loading, after the warm-up and after each run.

Checked, and the script exits 1 otherwise: no 5xx, every malformed request a 4xx, every
well-formed one a 200, ``/healthz`` ready at the end.

    python benchmarks/serve_load.py                                   # CPU, the shapes models
    python benchmarks/serve_load.py --device cuda --detector grounding-dino-tiny \\
        --segmenter sam-vit-base --size 800 --dtype bfloat16          # a GPU, the real models

Loopback only; bounded: clients x requests per run, and --timeout seconds per request.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _results import write_results  # noqa: E402

PROMPT = "red circle. blue square. yellow star. green triangle."
SEED_BASE = 4700  # scenes: HELD_OUT_SEEDS.start + 4700.. (no test or tuning uses them)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=50, help="per client, per run")
    parser.add_argument("--bad-every", type=int, default=10, help="every Nth request malformed")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=20, help="requests per client, untimed")
    parser.add_argument("--batches", default="8,1", help="--max-batch values to compare")
    parser.add_argument("--detector", default="shapes-gdino")
    parser.add_argument("--segmenter", default="shapes-sam")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--window-ms", type=float, default=None, help="--batch-window-ms")
    parser.add_argument("--size", type=int, default=128, help="scene size, pixels")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    parser.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--no-results", action="store_true", help="print only")
    return parser.parse_args(argv)


def png(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def declared_png(width: int, height: int) -> bytes:
    """A PNG whose header says width x height, with almost no pixel data (a bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = chunk(b"IDAT", zlib.compress(b"\0" * 16))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + idat + chunk(b"IEND", b"")


def multipart(image: bytes, prompt: str) -> tuple[bytes, str]:
    boundary = "grounded-seg-load"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="prompt"\r\n\r\n{prompt}\r\n',
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="s.png"\r\n'
        "Content-Type: image/png\r\n\r\n",
    ]
    body = "".join(parts).encode() + image + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def requests_for(args: argparse.Namespace, client: int) -> list[tuple[bytes, str, bool]]:
    """(body, content type, well-formed) for one client's run, made before timing."""
    from grounded_seg.shapes import HELD_OUT_SEEDS, make_scene

    made = []
    for i in range(args.requests):
        seed = HELD_OUT_SEEDS.start + SEED_BASE + client * args.requests + i
        scene = png(make_scene(seed, size=args.size).image)
        if (i + 1) % args.bad_every:
            made.append((*multipart(scene, PROMPT), True))
            continue
        kind = (client + i // args.bad_every) % 4
        if kind == 0:
            made.append((*multipart(scene[: len(scene) // 2], PROMPT), False))
        elif kind == 1:
            made.append((*multipart(declared_png(30000, 30000), PROMPT), False))
        elif kind == 2:
            made.append((*multipart(scene, ""), False))
        else:
            made.append((scene, "text/plain", False))
    return made


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: argparse.Namespace, max_batch: int) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    command = [
        sys.executable, "-m", "grounded_seg.cli", "serve", "--port", str(port),
        "--detector", args.detector, "--segmenter", args.segmenter, "--device", args.device,
        "--max-batch", str(max_batch), "--max-queue", str(4 * args.clients),
    ]  # fmt: skip
    if args.dtype:
        command += ["--dtype", args.dtype]
    if args.window_ms is not None:
        command += ["--batch-window-ms", str(args.window_ms)]
    log = open(HERE / "out" / f"serve_load_{max_batch}.log", "w")  # noqa: SIM115 - the child's
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server ended with status {process.returncode}: see {log.name}")
        try:
            if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError("the server did not become ready in 600 s")


def one_run(url: str, bodies: list[list[tuple[bytes, str, bool]]], timeout: float) -> dict:
    import httpx

    results: list[list[tuple[int, float, bool]]] = [[] for _ in bodies]
    start_line = threading.Barrier(len(bodies) + 1)

    def client(k: int) -> None:
        with httpx.Client(timeout=timeout) as session:
            start_line.wait()
            for body, kind, good in bodies[k]:
                began = time.perf_counter()
                try:
                    response = session.post(
                        f"{url}/v1/segment", content=body, headers={"content-type": kind}
                    )
                    status = response.status_code
                except httpx.HTTPError:
                    status = 0  # no answer at all
                results[k].append((status, time.perf_counter() - began, good))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(len(bodies))]
    for thread in threads:
        thread.start()
    start_line.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    flat = [r for rows in results for r in rows]
    good = [r for r in flat if r[2]]
    latencies = sorted(r[1] for r in good if r[0] == 200)
    return {
        "wall": wall,
        "rps": sum(1 for r in good if r[0] == 200) / wall,
        "p50": 1e3 * statistics.median(latencies) if latencies else float("nan"),
        "p95": 1e3 * latencies[int(0.95 * (len(latencies) - 1))] if latencies else float("nan"),
        "ok": sum(1 for r in good if r[0] == 200),
        "good": len(good),
        "bad_4xx": sum(1 for r in flat if not r[2] and 400 <= r[0] < 500),
        "bad": sum(1 for r in flat if not r[2]),
        "5xx": sum(1 for r in flat if r[0] >= 500),
        "no_answer": sum(1 for r in flat if r[0] == 0),
    }


def main(argv: list[str] | None = None) -> int:
    import httpx

    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    (HERE / "out").mkdir(exist_ok=True)
    wall_start = time.perf_counter()
    batches = [int(b) for b in args.batches.split(",")]
    bodies = [requests_for(args, k) for k in range(args.clients)]
    warmup = [requests_for(args, args.clients + k)[: args.warmup] for k in range(args.clients)]
    servers = {b: start_server(args, b) for b in batches}
    memory: dict[int, list[float]] = {}
    runs: dict[int, list[dict]] = {b: [] for b in batches}
    failures = []
    try:
        for b, (process, url) in servers.items():
            loaded = rss_mib(process.pid)
            one_run(url, warmup, args.timeout)
            memory[b] = [loaded, rss_mib(process.pid)]
        for repeat in range(args.repeats):
            for b, (process, url) in servers.items():
                run = one_run(url, bodies, args.timeout)
                run["rss"] = rss_mib(process.pid)
                runs[b].append(run)
                print(f"repeat {repeat} max-batch {b}: {run}", flush=True)
                if (
                    run["5xx"]
                    or run["no_answer"]
                    or run["bad_4xx"] != run["bad"]
                    or (run["ok"] != run["good"])
                ):
                    failures.append(f"max-batch {b}, repeat {repeat}: {run}")
        for b, (_, url) in servers.items():
            health = httpx.get(f"{url}/healthz", timeout=10).json()
            if health["status"] != "ready":
                failures.append(f"max-batch {b}: /healthz says {health}")
            memory[b].append(health.get("batch_sizes", {}))
    finally:
        for process, _ in servers.values():
            process.send_signal(signal.SIGINT)
        for process, _ in servers.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()

    med = {b: {k: statistics.median(r[k] for r in runs[b]) for k in ("rps", "p50", "p95")}
           for b in batches}  # fmt: skip
    base = med[batches[-1]]["rps"]
    import torch

    from grounded_seg import __version__

    total = args.clients * args.requests
    now = time.gmtime()
    verdict = (
        "checks passed: no 5xx, every malformed request a 4xx, every well-formed one a 200, "
        "/healthz ready at the end"
        if not failures
        else "FAILED: " + "; ".join(failures)
    )
    lines = [
        f"## Service under load, {args.device}, {time.strftime('%Y-%m-%d %H:%M UTC', now)}",
        "",
        f"- machine: {platform.system()} {platform.machine()}, os.cpu_count()={os.cpu_count()}; "
        f"versions: torch {torch.__version__}, grounded_seg {__version__}",
        f"- `grounded-seg serve --detector {args.detector} --segmenter {args.segmenter} "
        f"--device {args.device}{' --dtype ' + args.dtype if args.dtype else ''}` on 127.0.0.1, "
        f"one process; {args.size} px PNG scenes, prompt `{PROMPT}`",
        f"- {args.clients} concurrent clients x {args.requests} requests per run ({total}), "
        f"every {args.bad_every}th malformed (truncated PNG, 30000 x 30000 declared, empty "
        f"prompt, wrong content type); median of {args.repeats} runs, modes alternating",
        f"- command: `python benchmarks/serve_load.py {' '.join(argv or sys.argv[1:])}`",
        "",
        "| --max-batch | requests/s | vs one at a time | p50 ms | p95 ms | 200 | 4xx (malformed) "
        "| 5xx | batch sizes run (count) | RSS MiB: loaded / warmed up / after each run |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for b in batches:
        last = runs[b][-1]
        loaded, warm, sizes = memory[b]
        after = " / ".join(f"{r['rss']:.0f}" for r in runs[b])
        sizes_text = ", ".join(f"{k}: {v}" for k, v in sizes.items())
        lines.append(
            f"| {b} | {med[b]['rps']:.1f} | {med[b]['rps'] / base:.2f}x | {med[b]['p50']:.0f} | "
            f"{med[b]['p95']:.0f} | {last['ok']}/{last['good']} | {last['bad_4xx']}/{last['bad']} "
            f"| {sum(r['5xx'] for r in runs[b])} | {sizes_text} | {loaded:.0f} / {warm:.0f} / "
            f"{after} |"
        )
    lines += [
        "",
        f"- {verdict}",
        f"- total wall time of the script: {time.perf_counter() - wall_start:.0f} s",
    ]  # fmt: skip
    block = "\n".join(lines)
    print(block)
    if not args.no_results:
        device_type = args.device.split(":")[0]
        write_results(args.results, device_type, block, name="serve_load")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
