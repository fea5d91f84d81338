"""timesformer serve against an attacker (issue 21): valid requests built to cost as much as possible -- headers that
claim what the file doesn't hold, stalled and trickling connections, a chunked body past the limit, a timeline that
would hold the model for a minute, loose credentials. Each must cost the server a bounded time, memory and slot,
and ``/healthz`` keeps answering meanwhile.

Most run against a real uvicorn server in a thread of this process (``serving``: the config ``timesformer serve``
uses), on a free loopback port, with raw sockets where a client library would be too polite."""

import contextlib
import select
import socket
import threading
import time
from pathlib import Path

import pytest
import torch

import timesformer as tf
from timesformer.data import DecodeTimeout
from timesformer.inference import Predictor

from ..data.hostile import write_claimed_duration, write_huge_frames, write_long_video
from .test_serve import Gate, free_port, metric, post

pytest.importorskip("av")
pytest.importorskip("fastapi")
import httpx
from fastapi.testclient import TestClient

from timesformer.serve import Batcher, create_app
from timesformer.serve import state as state_module
from timesformer.serve.batching import DeadlineExceeded
from timesformer.serve.server import BoundedProtocol, ReadPauses, server_config

MULTIPART = b"Content-Type: multipart/form-data; boundary=b\r\n"
PART = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.mp4"\r\n\r\n'


@contextlib.contextmanager
def serving(app, **options):
    """``app`` under uvicorn as ``timesformer serve`` runs it (``server_config``, ``options`` passed on), in a thread
    on a free loopback port; yields its URL, and stops it after."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(server_config(app, port=port, log_level="warning", **options))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not come up"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(60)


@contextlib.contextmanager
def polling_healthz(url: str):
    """``/healthz`` asked every 20 ms on a thread while the block runs; yields the list of its answers' latencies
    (seconds), filled as they come. Any answer but 200 fails the test."""
    latencies, stop = [], threading.Event()

    def poll():
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                begun = time.perf_counter()
                assert client.get(f"{url}/healthz").status_code == 200
                latencies.append(time.perf_counter() - begun)
                time.sleep(0.02)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield latencies
    finally:
        stop.set()
        thread.join(60)


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def read_response(sock: socket.socket, timeout: float = 10.0) -> tuple[int, bytes]:
    """The status code and the rest of one HTTP response on a raw socket, read until the server closes."""
    sock.settimeout(timeout)
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1]) if data else 0, data


def upload(url: str, path: Path, **fields):
    return httpx.post(
        f"{url}/v1/predict",
        files={"file": (path.name, path.read_bytes())},
        data={k: str(v) for k, v in fields.items()},
        timeout=60,
    )


# The event loop never computes.


def test_healthz_answers_while_a_slow_sampling_plan_runs(model, videos, uploads):
    """A timeline's plan that takes a second (a claimed duration, a costly sampler) runs on a decoding thread: the
    event loop answers /healthz in < 100 ms meanwhile."""
    predictor = Predictor(model)
    plan = predictor.timeline_windows

    def slow_plan(*args, **kwargs):
        time.sleep(1.0)
        return plan(*args, **kwargs)

    predictor.timeline_windows = slow_plan
    with serving(create_app(predictor, warmup=False)) as url, polling_healthz(url) as latencies:
        time.sleep(0.1)
        response = upload(url, videos / "a.mp4", window=1, stride=1)
    assert response.status_code == 200 and len(response.json()["timeline"]) == 3
    assert len(latencies) > 10 and max(latencies) < 0.1, sorted(latencies)[-3:]


@pytest.mark.parametrize("seconds", [1e6, 1e12])
def test_a_claimed_duration_is_a_quick_422_and_healthz_is_unaffected(model, tmp_path, uploads, seconds):
    """2 frames whose header claims 1e6 s (1e8 windows of 0.01 s) or 1e12 s: the windows are counted, never made."""
    video = write_claimed_duration(tmp_path / "claims.mkv", seconds)
    with serving(create_app(Predictor(model), warmup=False)) as url, polling_healthz(url) as latencies:
        time.sleep(0.1)
        begun = time.monotonic()
        response = upload(url, video, window=0.01, stride=0.01)
        took = time.monotonic() - begun
        time.sleep(0.1)
    assert response.status_code == 422, response.text
    assert f"windows of this {seconds:.0f} s video; at most 1000" in response.json()["error"]
    assert took < 1.0 and max(latencies) < 0.1, (took, sorted(latencies)[-3:])


def test_a_negative_claimed_duration_is_a_400_not_a_fact(model, tmp_path, uploads):
    video = write_claimed_duration(tmp_path / "claims.mkv", -1e7)
    with TestClient(create_app(Predictor(model), warmup=False)) as client:
        response = post(client, video)
        assert response.status_code == 400, response.text
        assert "claims a duration of -10000000.0 s" in response.json()["error"]


def test_frames_over_max_pixels_are_a_400_naming_size_and_limit(model, tmp_path, uploads):
    """The server's ``max_pixels`` reaches every decode: the duration probe, the predictions, the explanation."""
    video = write_huge_frames(tmp_path / "big.mp4", 1200)
    with TestClient(create_app(Predictor(model, max_pixels=1000 * 1000), model=model, warmup=False)) as client:
        for endpoint in ("/v1/predict", "/v1/explain"):
            response = client.post(endpoint, files={"file": ("big.mp4", video.read_bytes())})
            assert response.status_code == 400, response.text
            assert "1200x1200 (1,440,000 pixels) are over the limit of 1,000,000" in response.json()["error"]


# Connections are bounded in time, not only in count.


def test_100_stalled_heads_neither_block_the_server_nor_stay(model, videos, uploads):
    """100 connections send half a head and stall: /healthz and a predict are answered meanwhile (uvicorn's
    limit_concurrency made them 503), and each stalled connection is closed once its head is late."""
    with serving(create_app(Predictor(model)), head_timeout=2.0) as url:
        stalled = [socket.create_connection(("127.0.0.1", port_of(url))) for _ in range(100)]
        opened = time.monotonic()
        for sock in stalled:
            sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Ty")
        try:
            assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
            assert upload(url, videos / "a.mp4").status_code == 200
            assert [read_response(sock, timeout=10)[1] for sock in stalled] == [b""] * 100  # closed, unanswered
            assert 2.0 <= time.monotonic() - opened < 8.0
        finally:
            for sock in stalled:
                sock.close()


def test_idle_and_half_sent_keep_alive_connections_close(model, uploads):
    """After a response, an idle connection closes after keep_alive (uvicorn's own timeout), and one that starts
    its next head and stalls after head_timeout (uvicorn alone keeps it open for ever)."""
    with serving(create_app(Predictor(model), warmup=False), head_timeout=1.0, keep_alive=0.3) as url:
        for rest, bound in ((b"", (0.3, 0.9)), (b"GET /hea", (1.0, 3.0))):
            with socket.create_connection(("127.0.0.1", port_of(url))) as sock:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                sock.settimeout(5)
                answer = b""
                while not answer.endswith(b'{"status":"ok"}'):  # the answer; the connection stays open
                    answer += sock.recv(65536)
                answered = time.monotonic()
                sock.sendall(rest)
                assert read_response(sock)[1] == b""
                assert bound[0] - 0.05 <= time.monotonic() - answered < bound[1]


def test_a_body_that_trickles_is_408_and_closed(model, uploads):
    """An upload promises 1 MB, sends 1 KB and stalls: past its grace it is refused, and the connection closed."""
    app = create_app(Predictor(model), warmup=False, upload_grace=0.5, min_upload_rate=16 * 1024)
    with serving(app) as url, socket.create_connection(("127.0.0.1", port_of(url))) as sock:
        sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\n" + MULTIPART + b"Content-Length: 1000000\r\n\r\n")
        sock.sendall(PART + b"\0" * 1000)
        begun = time.monotonic()
        status, data = read_response(sock)
        assert status == 408 and b"the upload came too slowly" in data and b"connection: close" in data.lower()
        assert 0.5 <= time.monotonic() - begun < 3.0


def test_heads_without_a_body_hold_no_slot_and_are_closed_soon(model, videos, uploads):
    """Ten complete upload heads and no body, against 3 slots (max_batch 1, queue 1): they took every slot for the
    upload grace (10 s), and a client that reconnected kept them all. A slot is taken when the body's first bytes
    come, and a body that has not started within ``body_start`` is a 408: a normal upload is served meanwhile."""
    app = create_app(Predictor(model), max_batch=1, queue_size=1, body_start=0.5, warmup=False)
    head = b"POST /v1/predict HTTP/1.1\r\nHost: x\r\n" + MULTIPART + b"Content-Length: 1000000\r\n\r\n"
    with serving(app) as url:
        idle = [socket.create_connection(("127.0.0.1", port_of(url))) for _ in range(10)]
        try:
            for sock in idle:
                sock.sendall(head)
            sent = time.monotonic()
            time.sleep(0.1)
            assert upload(url, videos / "a.mp4").status_code == 200
            answers = [read_response(sock) for sock in idle]
            closed = time.monotonic() - sent
        finally:
            for sock in idle:
                sock.close()
    assert {status for status, _ in answers} == {408}
    assert all(b"the upload's body did not start within" in data for _, data in answers), answers[0]
    assert 0.5 <= closed < 2.0


def test_healthz_answers_while_every_upload_slot_is_taken(model, videos, uploads):
    """Three uploads in flight (max_batch 1, queue 1: 3 slots): the fourth is a 503 before its body is read, and
    /healthz answers; once they end, uploads are served again."""
    app = create_app(Predictor(model), max_batch=1, queue_size=1, warmup=False)
    with serving(app) as url:
        holders = [socket.create_connection(("127.0.0.1", port_of(url))) for _ in range(3)]
        for sock in holders:
            sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\n" + MULTIPART + b"Content-Length: 1000000\r\n\r\n")
            sock.sendall(PART + b"\0" * 1000)
        time.sleep(0.3)
        response = upload(url, videos / "a.mp4")
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert "all 3 upload slots are taken" in response.json()["error"]
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
        for sock in holders:
            sock.close()
        deadline = time.monotonic() + 10
        while (code := upload(url, videos / "a.mp4").status_code) == 503 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert code == 200


# Upload limits hold while the body arrives.


def test_a_chunked_upload_is_cut_off_at_the_limit(model, uploads):
    """300 MiB sent chunked (no Content-Length) against a 5 MiB limit: a 413 once it passes the limit, and the
    server took little more than 5 MiB of it (what the sockets' buffers hold aside)."""
    total, chunk = 300 * 2**20, b"\0" * 2**16
    frame = b"%x\r\n%s\r\n" % (len(chunk), chunk)
    with serving(create_app(Predictor(model), max_upload_mb=5, warmup=False)) as url:
        with socket.create_connection(("127.0.0.1", port_of(url))) as sock:
            head = b"POST /v1/predict HTTP/1.1\r\nHost: x\r\n" + MULTIPART + b"Transfer-Encoding: chunked\r\n\r\n"
            sock.sendall(head + b"%x\r\n%s\r\n" % (len(PART), PART))
            sent, answered = 0, False
            while sent < total and not answered:
                readable, writable, _ = select.select([sock], [sock], [], 10)
                answered = bool(readable)
                if writable and not answered:
                    try:
                        sock.sendall(frame)
                    except (BrokenPipeError, ConnectionResetError):
                        break
                    sent += len(chunk)
            status, data = read_response(sock)
    assert status == 413 and b"over the 5 MiB limit" in data, data[:300]
    assert sent < 32 * 2**20, f"{sent / 2**20:.0f} MiB sent before the refusal"


def test_a_body_of_tiny_chunks_is_refused_before_it_stalls_the_loop(model, uploads):
    """400,000 one-byte chunks (2.4 MB on the wire): h11 parses chunk framing on the event loop at ~40 us a chunk, so
    this stalled /healthz 0.85-1.5 s (four such clients: 2.7-3.5 s). It is a 400 once a burst of small chunks is
    spent, the connection closed, and /healthz stays under 100 ms."""
    tiny = b"1\r\nX\r\n" * 400_000
    head = b"POST /v1/predict HTTP/1.1\r\nHost: x\r\n" + MULTIPART + b"Transfer-Encoding: chunked\r\n\r\n"
    with serving(create_app(Predictor(model), max_upload_mb=5, warmup=False)) as url, polling_healthz(url) as latencies:
        time.sleep(0.2)
        with socket.create_connection(("127.0.0.1", port_of(url))) as sock:

            def attack():
                with contextlib.suppress(OSError):
                    sock.sendall(head + b"%x\r\n%s\r\n" % (len(PART), PART) + tiny)

            sender = threading.Thread(target=attack, daemon=True)
            sender.start()
            status, data = read_response(sock)
            sender.join(10)
        time.sleep(0.3)
    assert status == 400 and b"chunks are too small" in data and b"connection: close" in data.lower(), data[:300]
    assert len(latencies) > 10 and max(latencies) < 0.1, sorted(latencies)[-3:]


@pytest.mark.parametrize(
    "sizes",
    [(65536,), (16384,), (1024,), (512,), (256,), (7, 100, 65536)],
    ids=["64k", "16k", "1k", "512", "256", "mixed"],
)
def test_a_chunked_upload_of_ordinary_chunks_is_served(model, videos, uploads, sizes):
    """What clients send chunked (httpx and curl: 16-64 KiB chunks; a generator's may be smaller: here down to 256
    bytes, which were a 400, and a mix with tiny ones) is answered as the same upload with a Content-Length is. A
    600 KB form field makes the body long enough to spend the burst of small chunks many times over."""
    import itertools

    pad = b'--b\r\nContent-Disposition: form-data; name="pad"\r\n\r\n' + b"p" * 600_000 + b"\r\n"
    body = pad + PART + (videos / "a.mp4").read_bytes() + b"\r\n--b--\r\n"

    def pieces():
        at = 0
        for size in itertools.cycle(sizes):
            if at >= len(body):
                return
            yield body[at : at + size]
            at += size

    with serving(create_app(Predictor(model), warmup=False)) as url:
        headers = {"Content-Type": "multipart/form-data; boundary=b"}
        chunked = httpx.post(f"{url}/v1/predict", content=pieces(), headers=headers, timeout=60)
        plain = upload(url, videos / "a.mp4")
    assert chunked.request.headers["transfer-encoding"] == "chunked"
    assert chunked.status_code == 200, chunked.text
    assert chunked.json()["scores"] == pytest.approx(plain.json()["scores"], abs=1e-6)


def test_pipelined_small_posts_are_all_answered(model, uploads):
    """600 POSTs of a one-byte body, pipelined on one connection: each is answered (the chunk budget counted every
    body's data, across requests: 257 answers, then a 400 about chunks that were not there)."""
    request = b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx"
    with serving(create_app(Predictor(model), warmup=False)) as url:
        with socket.create_connection(("127.0.0.1", port_of(url))) as sock:
            sock.sendall(request * 599 + request.replace(b"Host: x", b"Host: x\r\nConnection: close"))
            status, data = read_response(sock, timeout=30)
    assert data.count(b"HTTP/1.1 405 ") == 600 and b"too small" not in data, data[-300:]


def test_one_byte_segments_cost_few_reads_and_ordinary_uploads_none_paused(model, videos, uploads, monkeypatch):
    """An upload's body sent as 2,000 one-byte TCP segments: each was a read, ~130 us of the event loop's time (5,000
    segments: 0.65 s a request; four such clients kept the loop busy). A connection of small reads runs out of read
    tokens and is paused a few ms at a time, so the kernel gathers the segments: at most the burst, the rate over
    the time taken and a few more reads. An ordinary upload (large reads) is never paused."""
    reads, throttles = [], []
    meter, pause = BoundedProtocol._meter_read, ReadPauses.throttle
    monkeypatch.setattr(BoundedProtocol, "_meter_read", lambda self, size: (reads.append(size), meter(self, size)))
    monkeypatch.setattr(ReadPauses, "throttle", lambda self: (throttles.append(1), pause(self)))
    body = PART + b"\0" * 2000 + b"\r\n--b--\r\n"
    head = b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + MULTIPART
    head += b"Content-Length: %d\r\n\r\n" % len(body)
    with serving(create_app(Predictor(model), warmup=False)) as url:
        assert upload(url, videos / "a.mp4").status_code == 200
        assert throttles == [], "an ordinary upload was paused"
        with socket.create_connection(("127.0.0.1", port_of(url))) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            reads.clear()
            begun = time.monotonic()
            sock.sendall(head + body[: len(PART)])
            for at in range(len(PART), len(body)):
                sock.send(body[at : at + 1])
                time.sleep(0.0002)
            status, data = read_response(sock, timeout=30)
            took = time.monotonic() - begun
    assert status == 400 and b"not a readable video" in data, data[:300]
    assert len(reads) <= 64 + 100 * took + 10, f"{len(reads)} reads in {took:.2f} s"
    assert throttles


def test_the_read_meters_pause_and_uvicorns_do_not_undo_each_other():
    """uvicorn pauses reading for its own flow control (a body the app has not taken yet, a pipelined request) and
    resumes it when that ends; the read meter's pause is another reason: reading resumes once neither holds."""

    class Transport:
        reading = True

        def pause_reading(self):
            self.reading = False

        def resume_reading(self):
            self.reading = True

        def is_closing(self):
            return False

    transport = Transport()
    pauses = ReadPauses(transport)
    pauses.pause_reading()
    pauses.throttle()
    pauses.unthrottle()
    assert not transport.reading  # uvicorn's pause holds
    pauses.throttle()
    pauses.resume_reading()
    assert not transport.reading  # the meter's pause holds
    pauses.unthrottle()
    assert transport.reading and pauses.is_closing() is False


def test_the_server_state_dependency_runs_on_the_event_loop():
    """A plain ``def`` dependency runs on anyio's thread pool: a thread hop for every request, /healthz included."""
    import inspect

    assert inspect.iscoroutinefunction(state_module.server_state)


def test_what_start_up_built_is_out_of_the_collectors_way(model):
    """A full garbage collection walked every object torch and the model had made, ~90 ms holding the GIL: the first
    upload's allocations set one off and the event loop stalled for it. Once started, the app has them frozen (the
    collector skips them); stopped, it hands them back."""
    import gc

    with TestClient(create_app(Predictor(model), warmup=False)) as client:
        assert client.get("/healthz").status_code == 200
        assert gc.get_freeze_count() > 10_000
    assert gc.get_freeze_count() == 0


def test_a_declared_length_over_the_limit_is_413_before_the_body(model, uploads):
    with serving(create_app(Predictor(model), max_upload_mb=5, warmup=False)) as url:
        with socket.create_connection(("127.0.0.1", port_of(url))) as sock:
            sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\n" + MULTIPART + b"Content-Length: 314572800\r\n\r\n")
            status, data = read_response(sock)
    assert status == 413 and b"the upload (300.0 MiB) is over the 5 MiB limit" in data


# Every request has a deadline.


def test_a_1000_window_timeline_ends_at_the_deadline(model, tmp_path, uploads):
    """A 2-hour video in 1.4 KB, window = stride = 7.2 s: 1000 windows, each through the batcher. With a 1 s
    deadline it is a 503 with Retry-After at about 1 s, and the model stops running for it."""
    video = write_long_video(tmp_path / "long.mkv", 7200)
    predictor = Predictor(model)
    real, calls = predictor.clip_logits, []

    def counted(clips, masks):
        calls.append(len(clips))
        return real(clips, masks)

    predictor.clip_logits = counted
    with serving(create_app(predictor, request_timeout=1.0, warmup=False)) as url:
        begun = time.monotonic()
        response = upload(url, video, window=7.2, stride=7.2)
        took = time.monotonic() - begun
        ran = len(calls)
        time.sleep(0.3)
        assert len(calls) == ran  # nothing more of it reaches the model
    assert response.status_code == 503 and response.headers["retry-after"] == "5", response.text
    assert "longer than the server's 1 s limit" in response.json()["error"]
    assert 1.0 <= took < 2.5 and 0 < ran < 1000


def test_a_running_decode_stops_at_the_deadline_and_holds_its_slot_till_then(model, videos, uploads):
    """A decode already running when the deadline passes (here it starts 0.8 s late, past a 0.5 s deadline). The
    request is answered 503 at its deadline; the decode is handed the deadline and stops at its next frame
    (``DecodeTimeout``); the request's upload slot stays taken until its thread is done, then comes back. Before, the
    decode ran to its end (a long GOP at 1080p: ~1 ms a frame, 90 s for 5 MiB) with the slot already given back, so
    one client could keep every decoding thread busy."""
    predictor = Predictor(model)
    real, ended = predictor.views, []

    def late(path, start=None, window=None, deadline=None):
        time.sleep(0.8)
        try:
            out = real(path, start, window, deadline)
        except Exception as err:
            ended.append(type(err))
            raise
        ended.append(None)
        return out

    predictor.views = late
    app = create_app(predictor, request_timeout=0.5, warmup=False)
    state = app.state.server
    with serving(app) as url:
        begun = time.monotonic()
        response = upload(url, videos / "a.mp4")
        answered, held = time.monotonic() - begun, state.uploads
        while not ended and time.monotonic() - begun < 10:
            time.sleep(0.01)
        time.sleep(0.1)
        released = state.uploads
        metrics = httpx.get(f"{url}/metrics").text
    assert response.status_code == 503 and response.headers["retry-after"] == "5", response.text
    assert "longer than the server's 0.5 s limit" in response.json()["error"]
    assert answered < 0.8 and (held, released) == (1, 0)
    assert ended == [DecodeTimeout]
    assert metric(metrics, "timesformer_upload_slots_taken") == 0


def test_a_decode_past_the_deadline_is_a_503_with_retry_after(model, videos, uploads, monkeypatch):
    """Every decode is handed the request's deadline -- a predict's, each timeline window's, an explanation's -- and
    its ``DecodeTimeout`` is the same 503 with Retry-After as the guard's, not a 500."""
    import timesformer.inference.explain as explain

    given = []

    def out_of_time(path, *args, deadline=None):
        given.append(deadline)
        raise DecodeTimeout(f"{path}: decoding passed its deadline")

    predictor = Predictor(model)
    predictor.views = lambda path, start=None, window=None, deadline=None: out_of_time(path, deadline=deadline)
    monkeypatch.setattr(explain, "explain_video", out_of_time)
    with TestClient(create_app(predictor, model=model, request_timeout=30, warmup=False)) as client:
        for endpoint, fields in (("/v1/predict", {}), ("/v1/predict", {"window": "1"}), ("/v1/explain", {})):
            begun = time.monotonic()
            response = client.post(endpoint, files={"file": ("a.mp4", (videos / "a.mp4").read_bytes())}, data=fields)
            assert response.status_code == 503 and response.headers["retry-after"] == "5", (endpoint, response.text)
            assert "longer than the server's 30 s limit" in response.json()["error"]
            assert given[-1] is not None and begun + 29 < given[-1] < time.monotonic() + 30, (endpoint, fields)
    assert len(given) == 3


def test_an_explanation_counts_until_its_thread_is_done(model, videos, uploads, monkeypatch):
    """``queue_size`` 1: one explanation running or waiting at a time. One that is answered 503 at its deadline while
    its rollout still runs keeps its place: the next is refused as busy at once, not queued behind it. Once the
    rollout ends, explanations are taken again."""
    import timesformer.inference.explain as explain

    release = threading.Event()

    def stuck(model, path, spec, deadline=None):
        assert release.wait(30)
        raise DecodeTimeout(f"{path}: decoding passed its deadline")

    monkeypatch.setattr(explain, "explain_video", stuck)
    app = create_app(Predictor(model), model=model, queue_size=1, request_timeout=0.5, warmup=False)
    data = (videos / "a.mp4").read_bytes()
    with serving(app) as url:

        def post():
            return httpx.post(f"{url}/v1/explain", files={"file": ("a.mp4", data)}, timeout=30)

        try:
            answers = [post(), post()]
        finally:
            release.set()
        deadline = time.monotonic() + 10
        while app.state.server.uploads and time.monotonic() < deadline:
            time.sleep(0.02)
        answers.append(post())
    errors = [(r.status_code, r.json()["error"].split(";")[0]) for r in answers]
    late = (503, "the request took longer than the server's 0.5 s limit")
    assert errors == [late, (503, "the server is busy explaining"), late]


def test_nothing_of_a_request_stays_in_the_predictor(model, videos, uploads):
    """``predictor.partial`` (why a file decoded only partly) is emptied for the upload whatever the outcome: a
    truncated upload's 400, and a decode that noted a break and then passed its deadline (503)."""
    predictor = Predictor(model)
    real = predictor.views

    def then_late(path, start=None, window=None, deadline=None):
        real(path, start, window, deadline)
        raise DecodeTimeout(f"{path}: decoding passed its deadline")

    with TestClient(create_app(predictor, warmup=False)) as client:
        assert post(client, videos / "truncated.mp4").status_code == 400
        assert predictor.partial == {}
        predictor.views = then_late
        assert post(client, videos / "truncated.mp4").status_code == 503
        assert predictor.partial == {}


def test_the_batcher_skips_a_request_whose_deadline_passed_in_the_queue():
    gate = Gate()
    batcher = Batcher(gate, max_batch=1, max_wait_ms=0, queue_size=2)
    clip, mask = torch.randn(1, 4, 3, 8, 8), torch.ones(1, 4, dtype=torch.bool)
    first = batcher.submit(clip, mask)
    assert gate.entered.wait(120)  # the worker holds the first request at the gate
    late = batcher.submit(clip, mask, deadline=time.monotonic() + 0.05)
    on_time = batcher.submit(clip, mask, deadline=time.monotonic() + 60)
    time.sleep(0.1)
    gate.open.set()
    with pytest.raises(DeadlineExceeded):
        late.result(10)
    assert torch.equal(first.result(10), on_time.result(10))
    batcher.close(timeout=10)
    assert gate.batches == [1, 1]  # the late request never reached the model


# Auth exactness.


def test_only_bearer_or_x_api_key_carries_the_key(model, uploads):
    with TestClient(create_app(Predictor(model), api_key="s3cret", warmup=False)) as client:
        for value in ("s3cret", "Basic s3cret", "Bearer", "Bearers3cret", "Bearer wrong", "Token s3cret", ""):
            assert client.get("/v1/labels", headers={"Authorization": value}).status_code == 401, value
        for value in ("Bearer s3cret", "bearer s3cret", "BEARER  s3cret"):
            assert client.get("/v1/labels", headers={"Authorization": value}).status_code == 200, value
        assert client.get("/v1/labels", headers={"X-API-Key": "s3cret"}).status_code == 200
        assert client.get("/v1/labels", headers={"X-API-Key": "Bearer s3cret"}).status_code == 401


def test_the_api_docs_are_off_unless_asked_for(model):
    paths = ("/docs", "/redoc", "/openapi.json")
    with TestClient(create_app(Predictor(model), warmup=False)) as client:
        assert [client.get(p).status_code for p in paths] == [404] * 3
    with TestClient(create_app(Predictor(model), warmup=False, docs=True)) as client:
        assert [client.get(p).status_code for p in paths] == [200] * 3


def test_serve_passes_its_limits_on(model, tmp_path, monkeypatch):
    """``timesformer serve --max-pixels --request-timeout --docs`` reach the predictor and the server."""
    import timesformer.serve
    from timesformer.cli import main

    tf.save_pretrained(model, tmp_path / "ckpt")
    seen = {}
    monkeypatch.setattr(timesformer.serve, "run_server", lambda predictor, **kw: seen.update(kw, predictor=predictor))
    args = ["--max-pixels", "1000000", "--request-timeout", "5", "--docs"]
    assert main(["serve", "--checkpoint", str(tmp_path / "ckpt"), *args]) == 0
    assert seen["predictor"].spec.max_pixels == 1000000
    assert seen["request_timeout"] == 5.0 and seen["docs"] is True


@pytest.mark.parametrize("key", ["", " ", " s3cret"])
def test_serve_refuses_an_empty_api_key(model, tmp_path, monkeypatch, capsys, key):
    """``--api-key ""`` (an unset variable in a script) turned the key off without a word; now it is one line and
    exit 2 before anything loads. A key with spaces around it could never be sent, so it is refused too."""
    import timesformer.serve
    from timesformer.cli import main

    tf.save_pretrained(model, tmp_path / "ckpt")
    monkeypatch.setattr(timesformer.serve, "run_server", lambda predictor, **kw: pytest.fail("the server started"))
    assert main(["serve", "--checkpoint", str(tmp_path / "ckpt"), "--api-key", key]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error: --api-key must be a non-empty key without spaces around it" in err, err
