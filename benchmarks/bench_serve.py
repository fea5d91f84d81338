"""`timesformer serve` under load, on loopback: throughput, latency, errors, leftovers and memory.

A server process (`timesformer serve`, tiny preset, random init) takes requests from 1, 4 and 16 concurrent clients;
10 % of the requests are malformed (a text file as the video, or a bad option). The same load at 16 clients runs
against a second server with `--max-batch 1`. Reported: successful videos/s, p50/p95/p99 latency, responses by
status code, upload folders left in the server's temporary directory, the server's RSS after 100 and after 1,000
requests, and one base-size figure (timesformer_base, one client).

The hostile phase (``--hostile``; ``--hostile-only`` runs nothing else) runs 16 normal clients twice against one
server (`--max-upload-mb 5 --request-timeout 10 --api-key`): clean, then while an attacker sends the files of issue
21 one after another (two 8000x8000 frames, a 16000x16000 frame, MKV headers claiming 1e6 s, 1e12 s and a negative
duration with 0.01 s windows, a 300 MiB chunked upload, a 2-hour video in 1000 windows, a key with no scheme) and 100
connections that send half their headers and stall (reopened whenever the server closes one). Reported: the normal
clients' p50/p95 and status codes in both runs, each attack's answers and time, how much of the chunked upload the
server read, and the server's RSS (highest polled, and after each run).

    python benchmarks/bench_serve.py [--requests 1000] [--seconds 120] [--hostile | --hostile-only]
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
    """``timesformer serve`` in its own process, with its own temporary directory; ``log``: a file for its output
    (default: dropped); ``timeout``: seconds it may take to come up."""

    def __init__(
        self, checkpoint: Path, tmp: Path, threads: int, *extra: str, log: Path | None = None, timeout: float = 120
    ):
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        env = dict(os.environ, TMPDIR=str(tmp), OMP_NUM_THREADS=str(threads))
        self._log = open(log, "w") if log else None
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
            stderr=self._log or subprocess.DEVNULL,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        code = self.proc.poll()
        self.stop()
        raise RuntimeError(f"the server exited with code {code}" if code is not None else f"no server in {timeout} s")

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
        if self._log:
            self._log.close()


def load(
    server: Server,
    clients: int,
    requests: int,
    seconds: float,
    video: bytes,
    seed: int,
    on_done=None,
    headers=None,
    malformed: bool = True,
) -> dict:
    """``requests`` requests (or ``seconds``) from ``clients`` threads; every 10th is malformed (``malformed``)."""
    rng = random.Random(seed)
    plan = ["bad-file" if k % 20 == 0 else "bad-option" if k % 20 == 10 else "ok" for k in range(requests)]
    plan = plan if malformed else ["ok"] * requests
    rng.shuffle(plan)
    lock, codes, latencies, done = threading.Lock(), collections.Counter(), [], [0]
    deadline = time.monotonic() + seconds

    def client():
        with httpx.Client(timeout=120, headers=headers) as http:
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
        "latencies": latencies,
    }


class RssPoll:
    """The server's highest VmRSS, polled every 0.1 s while the ``with`` block runs; ``last`` after it."""

    def __init__(self, server: Server):
        self.server, self.peak, self.last, self._stop = server, 0.0, float("nan"), threading.Event()

    def __enter__(self):
        def poll():
            while not self._stop.is_set():
                self.peak = max(self.peak, self.server.rss_mb())
                time.sleep(0.1)

        self._thread = threading.Thread(target=poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        time.sleep(1.0)  # what the last requests freed
        self.last = self.server.rss_mb()


def stalled_connections(server: Server, count: int, stop: threading.Event, reopened: list):
    """Keep ``count`` connections open that sent half their request headers and stall; reopen each one the server
    closes (``reopened[0]`` counts them), until ``stop``."""
    half = f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nContent-Type: multi".encode()
    socks: list = []

    def opened():
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        sock.sendall(half)
        sock.setblocking(False)
        return sock

    while not stop.is_set():
        alive = []
        for sock in socks:
            try:
                closed = sock.recv(4096) == b""
            except BlockingIOError:
                closed = False
            except OSError:
                closed = True
            if closed:
                sock.close()
                reopened[0] += 1
            else:
                alive.append(sock)
        while len(alive) < count and not stop.is_set():
            try:
                alive.append(opened())
            except OSError:
                break
        socks = alive
        stop.wait(0.2)
    for sock in socks:
        sock.close()


def attacks(tmp: Path, key: str) -> list[tuple[str, dict]]:
    """Issue 21's files: ``(name, httpx.post keyword arguments)``; ``content`` generators are made per call."""
    from tests.data.hostile import write_claimed_duration, write_huge_frames, write_long_video

    def upload(path: Path, **data):
        return {"files": {"file": (path.name, path.read_bytes())}, "data": data}

    window = {"window": "0.01", "stride": "0.01"}
    return [
        ("2 frames of 8000x8000 (230 KiB)", upload(write_huge_frames(tmp / "h8k.mp4", 8000))),
        ("1 frame of 16000x16000 (750 KiB)", upload(write_huge_frames(tmp / "h16k.mp4", 16000, num_frames=1))),
        ("MKV claiming 1e6 s, 0.01 s windows", upload(write_claimed_duration(tmp / "c6.mkv", 1e6), **window)),
        ("MKV claiming 1e12 s, 0.01 s windows", upload(write_claimed_duration(tmp / "c12.mkv", 1e12), **window)),
        ("MKV claiming -1e7 s", upload(write_claimed_duration(tmp / "neg.mkv", -1e7))),
        ("2-hour video, 1000 windows of 7.2 s", upload(write_long_video(tmp / "2h.mkv", 7200), window="7.2")),
        ("300 MiB chunked upload, 5 MiB limit", {"chunked": 300 * 2**20}),
        ("Authorization: <key> with no scheme", {"headers": {"Authorization": key}, **upload(tmp / "c6.mkv")}),
    ]


def chunked_body(total: int, sent: list):
    """A multipart body of ``total`` bytes in 1 MiB chunks, with no length (httpx sends it chunked)."""
    yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.mp4"\r\n\r\n'
    chunk = b"\0" * 2**20
    while sent[0] < total:
        sent[0] += len(chunk)
        yield chunk
    yield b"\r\n--b--\r\n"


def attacker(server: Server, plan: list, key: str, stop: threading.Event, results: dict):
    """Send ``plan``'s attacks one after another until ``stop``; per attack: status codes, seconds, bytes read."""
    with httpx.Client(timeout=120) as http:
        while not stop.is_set():
            for name, kwargs in plan:
                if stop.is_set():
                    return
                start = time.perf_counter()
                sent = [0]
                try:
                    if "chunked" in kwargs:
                        response = http.post(
                            f"{server.url}/v1/predict",
                            content=chunked_body(kwargs["chunked"], sent),
                            headers={"X-API-Key": key, "Content-Type": "multipart/form-data; boundary=b"},
                        )
                    else:
                        headers = kwargs.get("headers", {"X-API-Key": key})
                        response = http.post(
                            f"{server.url}/v1/predict", files=kwargs["files"], data=kwargs["data"], headers=headers
                        )
                    code = response.status_code
                except httpx.HTTPError as err:  # the server may cut a chunked upload off mid-body
                    code = type(err).__name__
                row = results.setdefault(name, {"codes": collections.Counter(), "seconds": [], "sent_mib": []})
                row["codes"][code] += 1
                row["seconds"].append(time.perf_counter() - start)
                if "chunked" in kwargs:
                    row["sent_mib"].append(sent[0] / 2**20)


def merged(runs: list[dict]) -> dict:
    """One row from several ``load`` results: codes summed, latency quantiles over all requests."""
    latencies = [x for r in runs for x in r["latencies"]]
    codes = sum((collections.Counter(r["codes"]) for r in runs), collections.Counter())
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [float("nan")] * 99
    wall = sum(r["wall"] for r in runs)
    return {
        "requests": sum(codes.values()),
        "ok_per_s": codes[200] / wall,
        "p50": q[49] * 1000,
        "p95": q[94] * 1000,
        "codes": dict(codes),
    }


def hostile_phase(tmp: Path, threads: int, seconds: float, video: bytes, rounds: int) -> dict:
    """16 normal clients against one server in ``rounds`` pairs of runs of ``seconds / rounds`` each, interleaved:
    clean, then while the attacks and 100 stalled connections run."""
    key = "bench-key"
    server = Server(
        tmp / "tiny",
        tmp / "hostile",
        threads,
        *("--max-upload-mb", "5", "--request-timeout", "10", "--api-key", key, "--queue-size", "256"),
    )
    auth = {"X-API-Key": key}
    plan = attacks(tmp, key)
    runs = {"clean": [], "attack": []}
    rss = {"clean": [], "attack": []}
    reopened, results = [0], {}
    try:
        for k in range(rounds):
            with RssPoll(server) as poll:
                runs["clean"].append(load(server, 16, 10**6, seconds / rounds, video, k, headers=auth, malformed=False))
            rss["clean"].append(poll)
            stop = threading.Event()
            helpers = [
                threading.Thread(target=stalled_connections, args=(server, 100, stop, reopened)),
                threading.Thread(target=attacker, args=(server, plan, key, stop, results)),
            ]
            with RssPoll(server) as poll:
                for t in helpers:
                    t.start()
                runs["attack"].append(
                    load(server, 16, 10**6, seconds / rounds, video, 100 + k, headers=auth, malformed=False)
                )
                stop.set()
                for t in helpers:
                    t.join()
            rss["attack"].append(poll)
        left = server.leftovers()
    finally:
        server.stop()
    return {"runs": runs, "rss": rss, "attacks": results, "reopened": reopened[0], "left": left}


def print_hostile(h: dict):
    runs, rss = h["runs"], h["rss"]
    rows = {name: merged(r) for name, r in runs.items()}
    ratios = sorted(
        statistics.quantiles(a["latencies"], n=20)[18] / statistics.quantiles(c["latencies"], n=20)[18]
        for c, a in zip(runs["clean"], runs["attack"], strict=True)
    )
    print(f"\n### Hostile phase: 16 normal clients, clean and under attack, {len(ratios)} interleaved rounds\n")
    print("| run | requests | videos/s | p50 ms | p95 ms | responses by status | server RSS peak MiB | RSS after MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for name, label in (("clean", "clean"), ("attack", "under attack")):
        r = rows[name]
        codes = ", ".join(f"{k}: {v}" for k, v in sorted(r["codes"].items(), key=str))
        after = " / ".join(f"{p.last:.0f}" for p in rss[name])
        print(
            f"| {label} | {r['requests']} | {r['ok_per_s']:.1f} | {r['p50']:.0f} | {r['p95']:.0f} | {codes} | "
            f"{max(p.peak for p in rss[name]):.0f} | {after} |"
        )
    print("\n| attack | sent | answers | median s | max s | read of the body |")
    print("|---|---|---|---|---|---|")
    for name, row in h["attacks"].items():
        codes = ", ".join(f"{k}: {v}" for k, v in sorted(row["codes"].items(), key=str))
        read = f"{max(row['sent_mib']):.0f} MiB sent at most" if row["sent_mib"] else ""
        print(
            f"| {name} | {sum(row['codes'].values())} | {codes} | {statistics.median(row['seconds']):.2f} | "
            f"{max(row['seconds']):.2f} | {read} |"
        )
    normal_5xx = sum(v for r in rows.values() for k, v in r["codes"].items() if not isinstance(k, int) or k >= 500)
    attack_500 = sum(  # 503 is an answer (a deadline passed); 500 is a crash, a dropped connection too -- except
        v  # mid-body, where the server cuts the chunked upload off
        for name, row in h["attacks"].items()
        for k, v in row["codes"].items()
        if k == 500 or (not isinstance(k, int) and "chunked" not in name)
    )
    p95 = statistics.median(ratios)
    growth = statistics.median(p.last for p in rss["attack"]) / statistics.median(p.last for p in rss["clean"]) - 1
    peak = max(p.peak for p in rss["attack"]) / max(p.peak for p in rss["clean"]) - 1
    verdict = lambda ok: "met" if ok else "NOT met"  # noqa: E731
    print(
        f"\nper-round p95 under attack / clean: min {ratios[0]:.2f}x, median {p95:.2f}x, max {ratios[-1]:.2f}x; "
        f"stalled connections reopened after the server closed them: {h['reopened']}; upload folders left: {h['left']}"
        f"\ntargets: 0 5xx from normal clients and no 500 anywhere {verdict(normal_5xx + attack_500 == 0)} "
        f"({normal_5xx} + {attack_500}); normal p95 within 1.5x of clean {verdict(p95 <= 1.5)} ({p95:.2f}x, median "
        f"round); RSS growth < 10 % {verdict(growth < 0.10)} ({growth:+.1%}: the median RSS after an attacked run over "
        f"the median after a clean one; the peak while decoding the 8000x8000 file: {peak:+.1%})"
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=1000, help="requests over the three client counts")
    ap.add_argument("--seconds", type=float, default=120, help="time limit per load level")
    ap.add_argument("--threads", type=int, default=2, help="the server's torch threads")
    ap.add_argument("--hostile", action="store_true", help="add the hostile phase")
    ap.add_argument("--hostile-only", action="store_true", help="only the hostile phase")
    ap.add_argument("--hostile-seconds", type=float, default=60, help="clean and under attack, each, in all rounds")
    ap.add_argument("--hostile-rounds", type=int, default=4, help="interleaved clean / attacked runs")
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
        if args.hostile_only:
            hostile = hostile_phase(tmp, args.threads, args.hostile_seconds, video, args.hostile_rounds)
            print(f"\ntorch {torch.__version__}, server threads {args.threads}, loopback; 4 s 64x64 H.264 uploads")
            print_hostile(hostile)
            return
        hostile = (
            hostile_phase(tmp, args.threads, args.hostile_seconds, video, args.hostile_rounds) if args.hostile else None
        )

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
    if hostile is not None:
        print_hostile(hostile)


if __name__ == "__main__":
    main()
