"""`timesformer serve` under load, on loopback: throughput, latency, errors, leftovers and memory.

A server process (`timesformer serve`, tiny preset, random init) takes requests from 1, 4 and 16 concurrent clients;
10 % of the requests are malformed (a text file as the video, or a bad option). The same load at 16 clients runs
against a second server with `--max-batch 1`. Reported: successful videos/s, p50/p95/p99 latency, responses by
status code, upload folders left in the server's temporary directory, the server's RSS after 100 and after 1,000
requests, and one base-size figure (timesformer_base, one client).

    python benchmarks/bench_serve.py [--requests 1000] [--seconds 120]
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``timesformer serve`` in its own process, with its own temporary directory."""

    def __init__(self, checkpoint: Path, tmp: Path, threads: int, *extra: str):
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        env = dict(os.environ, TMPDIR=str(tmp), OMP_NUM_THREADS=str(threads))
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "timesformer",
                "serve",
                "--checkpoint",
                str(checkpoint),
                "--port",
                str(self.port),
                *extra,
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        raise RuntimeError("the server did not come up")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def leftovers(self) -> int:
        return sum(1 for p in self.tmp.iterdir() if p.name.startswith("timesformer-upload-"))

    def stop(self):
        self.proc.terminate()
        self.proc.wait(60)


def load(server: Server, clients: int, requests: int, seconds: float, video: bytes, seed: int, on_done=None) -> dict:
    """``requests`` requests (or ``seconds``) from ``clients`` threads; every 10th is malformed."""
    rng = random.Random(seed)
    plan = ["bad-file" if k % 20 == 0 else "bad-option" if k % 20 == 10 else "ok" for k in range(requests)]
    rng.shuffle(plan)
    lock, codes, latencies, done = threading.Lock(), collections.Counter(), [], [0]
    deadline = time.monotonic() + seconds

    def client():
        with httpx.Client(timeout=120) as http:
            while time.monotonic() < deadline:
                with lock:
                    if not plan:
                        return
                    kind = plan.pop()
                files = {"file": ("v.mp4", b"this is not a video" if kind == "bad-file" else video)}
                data = {"topk": "abc"} if kind == "bad-option" else {"topk": "3"}
                start = time.perf_counter()
                try:
                    code = http.post(f"{server.url}/v1/predict", files=files, data=data).status_code
                except httpx.TransportError as err:
                    code = type(err).__name__
                elapsed = time.perf_counter() - start
                with lock:
                    codes[code] += 1
                    if code == 200:
                        latencies.append(elapsed)
                    done[0] += 1
                    if on_done is not None:
                        on_done(done[0])

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [float("nan")] * 99
    return {
        "clients": clients,
        "requests": sum(codes.values()),
        "ok_per_s": codes[200] / wall,
        "p50": q[49] * 1000,
        "p95": q[94] * 1000,
        "p99": q[98] * 1000,
        "codes": dict(codes),
        "wall": wall,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=1000, help="requests over the three client counts")
    ap.add_argument("--seconds", type=float, default=120, help="time limit per load level")
    ap.add_argument("--threads", type=int, default=2, help="the server's torch threads")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    import torch

    import timesformer as tf
    from tests.data.videos import write_video

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.manual_seed(0)
        tf.save_pretrained(tf.create_model("timesformer_tiny", num_classes=12), tmp / "tiny")
        tf.save_pretrained(tf.create_model("timesformer_base", num_classes=400), tmp / "base")
        write_video(tmp / "v.mp4", 120, fps=30, size=64)  # 4 s
        video = (tmp / "v.mp4").read_bytes()

        rows, rss = [], {}
        server = Server(tmp / "tiny", tmp / "t1", args.threads, "--max-batch", "8", "--queue-size", "256")

        def watch(total: int):  # requests served so far, over the load levels
            for mark in (100, 400, 1000):
                if total >= mark and mark not in rss:
                    rss[mark] = server.rss_mb()

        shares = {1: args.requests // 10, 4: args.requests // 5}
        shares[16] = args.requests - shares[1] - shares[4]
        served = 0
        for clients in (1, 4, 16):
            r = load(
                server, clients, shares[clients], args.seconds, video, clients, on_done=lambda n, s=served: watch(n + s)
            )
            served += r["requests"]
            rows.append(("tiny, --max-batch 8", r))
            print(f"# batched {clients}: {r}", file=sys.stderr)
        left = server.leftovers()
        server.stop()
        unbatched = Server(tmp / "tiny", tmp / "t2", args.threads, "--max-batch", "1", "--queue-size", "256")
        r = load(unbatched, 16, shares[16], args.seconds, video, 99)
        rows.append(("tiny, --max-batch 1", r))
        left += unbatched.leftovers()
        unbatched.stop()
        base = Server(tmp / "base", tmp / "t3", args.threads)
        r = load(base, 1, 10, args.seconds, video, 7)
        rows.append(("base, --max-batch 8", r))
        left += base.leftovers()
        base.stop()

    print(
        f"\ntorch {torch.__version__}, server threads {args.threads}, loopback; 4 s 64x64 H.264 uploads; "
        f"10 % malformed\n"
    )
    print("| server | clients | requests | videos/s | p50 ms | p95 ms | p99 ms | responses by status |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in rows:
        codes = ", ".join(f"{k}: {v}" for k, v in sorted(r["codes"].items(), key=str))
        print(
            f"| {name} | {r['clients']} | {r['requests']} | {r['ok_per_s']:.1f} | {r['p50']:.0f} | {r['p95']:.0f} | "
            f"{r['p99']:.0f} | {codes} |"
        )
    batched16 = next(r for n, r in rows if n.startswith("tiny, --max-batch 8") and r["clients"] == 16)
    single16 = next(r for n, r in rows if n.startswith("tiny, --max-batch 1"))
    five = sum(v for _, r in rows for k, v in r["codes"].items() if not isinstance(k, int) or k >= 500)
    nan = float("nan")
    print(
        f"\n5xx or dropped connections: {five}; upload folders left behind: {left}; batching at 16 clients: "
        f"{batched16['ok_per_s'] / single16['ok_per_s']:.2f}x the unbatched throughput"
    )
    growth = rss.get(1000, nan) / rss.get(100, nan) - 1
    ratio = batched16["ok_per_s"] / single16["ok_per_s"]
    verdict = lambda ok: "met" if ok else "NOT met"  # noqa: E731
    print(
        f"targets: 0 5xx {verdict(five == 0)}; 0 files left {verdict(left == 0)}; RSS growth <= 10 % "
        f"{verdict(growth <= 0.10)} ({growth:+.1%}); batching >= 1.5x {verdict(ratio >= 1.5)} ({ratio:.2f}x)"
    )
    print(
        f"server RSS after 100 requests {rss.get(100, nan):.0f} MiB, after 400 (100 of them at 16 clients) "
        f"{rss.get(400, nan):.0f} MiB, after 1,000 {rss.get(1000, nan):.0f} MiB: "
        f"{(rss.get(1000, nan) / rss.get(100, nan) - 1) * 100:+.1f} % from 100, "
        f"{(rss.get(1000, nan) / rss.get(400, nan) - 1) * 100:+.1f} % from 400"
    )


if __name__ == "__main__":
    main()
