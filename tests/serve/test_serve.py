"""timesformer serve: the HTTP API on videos the tests encode -- predictions equal to Predictor's, bad input as
4xx JSON with the server still serving, no upload left on disk, batching, backpressure, the API key, draining."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

import timesformer as tf
from timesformer.inference import Predictor

pytest.importorskip("av")
pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from timesformer.serve import Batcher, QueueFull, create_app


def metric(text: str, name: str, **labels) -> float | None:
    """The value of the sample ``name{labels}`` in a ``/metrics`` page, read by prometheus_client's own parser (None:
    no such sample)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return None


def post(client, path, **fields):
    files = {"file": (Path(path).name, Path(path).read_bytes(), "video/mp4")} if path else None
    return client.post("/v1/predict", files=files, data={k: str(v) for k, v in fields.items()})


def test_predictions_equal_the_predictors(model, videos, uploads):
    predictor = Predictor(model)
    with TestClient(create_app(Predictor(model))) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/v1/labels").json() == {"labels": ["cat", "dog", "eel"]}
        body = post(client, videos / "a.mp4", topk=3).json()
        ref = predictor.predict(videos / "a.mp4", topk=3)["top"]
        assert body["labels"] == [t["class"] for t in ref]
        assert body["scores"] == pytest.approx([t["prob"] for t in ref], abs=1e-5)
        assert body["duration"] == pytest.approx(3.0, abs=0.05) and body["latency_ms"] > 0
        # other views, and a video shorter than one clip
        multi = post(client, videos / "a.mp4", views="2x3").json()
        assert multi["scores"][0] == pytest.approx(
            predictor.with_views(2, 3).predict(videos / "a.mp4")["top"][0]["prob"], abs=1e-5
        )
        assert post(client, videos / "short.mp4").status_code == 200


def test_the_timeline_is_the_predictors(model, videos, uploads):
    """A window asked for: Predictor.timeline's windows and probabilities (its model calls through the batcher),
    here with a last window that ends at the video's end, off the stride; the top-k average the windows'."""
    ref = Predictor(model).timeline(videos / "a.mp4", window=1, stride=0.75, topk=3)["entries"]
    with TestClient(create_app(Predictor(model))) as client:
        body = post(client, videos / "a.mp4", window=1, stride=0.75, topk=3).json()
    timeline = body["timeline"]
    assert [sorted(e) for e in timeline] == [["end", "start", "top"]] * len(timeline)  # the documented answer
    assert [(e["start"], e["end"]) for e in timeline] == [(e["start"], e["end"]) for e in ref]
    assert [e["start"] for e in timeline] == [0.0, 0.75, 1.5, pytest.approx(ref[-1]["end"] - 1)]
    by_class = [t["prob"] for e in timeline for t in sorted(e["top"], key=lambda t: t["index"])]  # 3 classes: all
    assert by_class == pytest.approx([p for e in ref for p in e["probs"]], abs=1e-5)
    mean = torch.tensor([e["probs"] for e in ref]).mean(0)
    assert body["scores"] == pytest.approx(sorted(mean.tolist(), reverse=True), abs=1e-5)


def test_too_many_windows_is_a_422_before_anything_is_decoded(model, videos, uploads, monkeypatch):
    from timesformer.serve import predict_routes

    def never(*args, **kwargs):
        raise AssertionError("a window was decoded before the window count was checked")

    predictor = Predictor(model)
    monkeypatch.setattr(predictor, "views", never)
    monkeypatch.setattr(predict_routes, "MAX_WINDOWS", 2)
    with TestClient(create_app(predictor, warmup=False)) as client:
        response = post(client, videos / "a.mp4", window=1, stride=1)
    assert response.status_code == 422
    assert "makes 3 windows of this 3 s video; at most 2" in response.json()["error"]


@pytest.mark.parametrize(
    "name, fields, status, message",
    [
        ("notes.mp4", {}, 400, "not a readable video"),
        ("empty.mp4", {}, 400, "the upload is empty"),
        ("truncated.mp4", {}, 400, "truncated or damaged"),
        (None, {}, 422, "'file' field (a video upload) is missing"),
        ("a.mp4", {"topk": 0}, 422, r"topk must be in [1, 100]; got '0'"),
        ("a.mp4", {"topk": "many"}, 422, "topk must be a int; got 'many'"),
        ("a.mp4", {"views": "2by3"}, 422, "views must be CLIPSxCROPS"),
        ("a.mp4", {"stride": 1}, 422, "stride needs a window"),
    ],
)
def test_bad_input_is_a_4xx_naming_it_and_the_server_keeps_serving(
    model, videos, uploads, name, fields, status, message
):
    with TestClient(create_app(Predictor(model))) as client:
        response = post(client, videos / name if name else None, **fields)
        assert response.status_code == status and message in response.json()["error"]
        assert "upload-" not in response.text and str(uploads) not in response.text  # no server-side path
        assert post(client, videos / "a.mp4").status_code == 200
        text = client.get("/metrics").text
        assert metric(text, "timesformer_errors_total", code=str(status)) == 1
        assert metric(text, "timesformer_requests_total", path="/v1/predict", code=str(status)) == 1


def test_explain_returns_the_rollout_with_png_and_gif(model, videos, uploads):
    import base64

    from timesformer.data import ClipSpec
    from timesformer.inference.explain import explain_video

    with TestClient(create_app(Predictor(model), model=model)) as client:
        body = client.post("/v1/explain", files={"file": ("a.mp4", (videos / "a.mp4").read_bytes())}).json()
        assert client.post("/v1/explain", files={"file": ("n.mp4", b"not a video")}).status_code == 400
    ref = explain_video(model, videos / "a.mp4", ClipSpec.from_config(model.config))  # the served clip
    assert body["predicted"] == ref["predicted"]
    torch.testing.assert_close(torch.tensor(body["maps"]), ref["maps"], atol=1e-6, rtol=0)
    assert base64.b64decode(body["png"].split(",", 1)[1])[:4] == b"\x89PNG"
    assert base64.b64decode(body["gif"].split(",", 1)[1])[:6] == b"GIF89a"
    with TestClient(create_app(Predictor(model))) as client:  # no fp32 model given: no explanations
        assert client.post("/v1/explain", files={"file": ("a.mp4", b"x")}).status_code == 404


def test_an_upload_over_the_limit_is_413(model, videos, uploads):
    with TestClient(create_app(Predictor(model), max_upload_mb=0.001)) as client:
        response = post(client, videos / "a.mp4")
        assert response.status_code == 413 and "over the 0.001 MiB limit" in response.json()["error"]
        assert post(client, None).status_code == 422  # and it keeps serving


def test_the_api_key_guards_everything_but_healthz(model, videos, uploads):
    with TestClient(create_app(Predictor(model), api_key="s3cret")) as client:
        assert client.get("/healthz").status_code == 200
        for path in ("/v1/labels", "/metrics"):
            assert client.get(path).status_code == 401
            assert client.get(path, headers={"X-API-Key": "wrong"}).status_code == 401
        assert client.get("/v1/labels", headers={"X-API-Key": "s3cret"}).status_code == 200
        assert client.get("/v1/labels", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        for endpoint in ("/v1/predict", "/v1/explain"):
            assert client.post(endpoint, files={"file": ("a.mp4", (videos / "a.mp4").read_bytes())}).status_code == 401
        assert (
            client.post(
                "/v1/predict",
                files={"file": ("a.mp4", (videos / "a.mp4").read_bytes())},
                headers={"X-API-Key": "s3cret"},
            ).status_code
            == 200
        )
        assert client.get("/").status_code == 200  # the page holds no data; its calls carry the key
        text = client.get("/metrics", headers={"X-API-Key": "s3cret"}).text
        assert metric(text, "timesformer_requests_total", path="/v1/predict", code="401") == 1
        assert client.get("/no/such/%22path").status_code == 401
        text = client.get("/metrics", headers={"X-API-Key": "s3cret"}).text
        assert metric(text, "timesformer_requests_total", path="other", code="401") == 1  # labels stay few


def test_metrics_keep_their_names_types_and_labels(model, videos, uploads):
    from prometheus_client.parser import text_string_to_metric_families

    with TestClient(create_app(Predictor(model), max_batch=2)) as client:
        assert post(client, videos / "a.mp4").status_code == 200
        assert post(client, None).status_code == 422
        response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    assert {name: f.type for name, f in families.items()} == {
        "timesformer_requests": "counter",
        "timesformer_errors": "counter",
        "timesformer_request_seconds": "histogram",
        "timesformer_batch_clips": "histogram",
        "timesformer_queue_depth": "gauge",
        "timesformer_upload_slots_taken": "gauge",
    }
    requests = {(s.labels["path"], s.labels["code"]): s.value for s in families["timesformer_requests"].samples}
    assert requests == {("/v1/predict", "200"): 1, ("/v1/predict", "422"): 1}  # _created samples: none kept
    assert [s.labels for s in families["timesformer_errors"].samples if s.name.endswith("_total")] == [{"code": "422"}]
    buckets = [s.labels["le"] for s in families["timesformer_batch_clips"].samples if s.name.endswith("_bucket")]
    assert buckets == ["1", "2", "+Inf"]  # as the hand-written exposition wrote them (the library: "1.0")
    latency = [s.labels["le"] for s in families["timesformer_request_seconds"].samples if s.name.endswith("_bucket")]
    assert latency == ["0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "30", "+Inf"]


def test_concurrent_requests_are_batched(model, videos, uploads):
    with TestClient(create_app(Predictor(model), max_batch=8, max_wait_ms=200)) as client:
        with ThreadPoolExecutor(6) as pool:
            codes = list(pool.map(lambda _: post(client, videos / "a.mp4").status_code, range(6)))
        assert codes == [200] * 6
        text = client.get("/metrics").text
    calls = metric(text, "timesformer_batch_clips_count")
    assert calls < 7  # 6 requests (+ the warm-up) in fewer model calls
    assert metric(text, "timesformer_batch_clips_bucket", le="1") < calls
    assert metric(text, "timesformer_batch_clips_bucket", le="+Inf") == calls
    assert metric(text, "timesformer_batch_clips_sum") == 6 + 8  # every clip counted once: the warm-up is a full batch
    assert metric(text, "timesformer_request_seconds_count") == 6  # the predicts (this /metrics counts once answered)


class Gate:
    """A model that waits for ``open`` before answering: lets a test fill the queue."""

    def __init__(self):
        self.entered, self.open, self.batches = threading.Event(), threading.Event(), []

    def __call__(self, clips, mask):
        self.entered.set()
        assert self.open.wait(120), "the test never opened the gate"
        self.batches.append(len(clips))
        return clips.flatten(1)[:, :3]


def test_a_full_queue_refuses_at_once_and_close_drains_what_is_queued():
    gate = Gate()
    batcher = Batcher(gate, max_batch=4, max_wait_ms=0, queue_size=2)
    clip, mask = torch.randn(1, 4, 3, 8, 8), torch.ones(1, 4, dtype=torch.bool)
    first = batcher.submit(clip, mask)
    assert gate.entered.wait(120)  # the worker holds the first request, waiting on the gate
    queued = [batcher.submit(clip, mask), batcher.submit(clip, mask)]
    with pytest.raises(QueueFull, match="2 requests are waiting"):
        batcher.submit(clip, mask)
    gate.open.set()
    batcher.close(timeout=10)
    assert all(torch.equal(f.result(1), clip.flatten(1)[:, :3]) for f in [first, *queued])
    assert gate.batches == [1, 2]  # the two queued requests ran as one batch, before the worker stopped


def test_a_full_queue_is_503_with_retry_after(model, videos, uploads):
    """One request runs (held at a gate), one waits in the one-slot queue: the third is refused at once.

    Each request is sent only once the one before is where it should be (in the model, in the queue): sent
    together, the second can reach the queue before the worker has taken the first, and be refused itself."""
    entered, gate = threading.Event(), threading.Event()
    predictor = Predictor(model)
    real = predictor.clip_logits

    def held(clips, masks):
        entered.set()
        assert gate.wait(120), "the test never opened the gate"
        return real(clips, masks)

    predictor.clip_logits = held
    with TestClient(create_app(predictor, max_batch=1, max_wait_ms=0, queue_size=1, warmup=False)) as client:
        with ThreadPoolExecutor(2) as pool:
            running = pool.submit(post, client, videos / "a.mp4")
            assert entered.wait(120), "the first request never reached the model"
            queued = pool.submit(post, client, videos / "a.mp4")
            deadline = time.monotonic() + 120
            while metric(client.get("/metrics").text, "timesformer_queue_depth") != 1:
                assert time.monotonic() < deadline, "the second request never reached the queue"
                time.sleep(0.05)
            response = post(client, videos / "a.mp4")
            gate.set()
            assert [running.result().status_code, queued.result().status_code] == [200, 200]
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert "busy" in response.json()["error"]
        assert post(client, videos / "a.mp4").status_code == 200  # and it serves again


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(model, tmp_path):
    """``timesformer serve`` in its own process on a free loopback port; yields (process, base url). A batch waits
    1.5 s to fill, so requests sit in the queue long enough for a test to act on them."""
    import os
    import subprocess
    import sys

    import httpx

    tf.save_pretrained(model, tmp_path / "ckpt")
    port = free_port()
    (tmp_path / "srvtmp").mkdir()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "timesformer",
            "serve",
            "--checkpoint",
            str(tmp_path / "ckpt"),
            "--port",
            str(port),
            "--max-wait-ms",
            "1500",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1", TMPDIR=str(tmp_path / "srvtmp")),
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail(f"the server did not come up:\n{proc.communicate()[0]}")
    yield proc, url
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_sigterm_drains_queued_requests_then_exits_cleanly(server, videos):
    import signal

    import httpx

    proc, url = server
    data = (videos / "a.mp4").read_bytes()

    def call(_):
        return httpx.post(f"{url}/v1/predict", files={"file": ("a.mp4", data)}, timeout=60).status_code

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(call, i) for i in range(4)]
        time.sleep(0.5)  # the requests are in, waiting 1.5 s for a fuller batch
        proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        codes = [f.result() for f in futures]
        answered = time.monotonic()
    assert codes == [200] * 4  # every request taken before the signal was answered
    assert answered - signalled > 0.5  # they were still queued when it came
    assert proc.wait(timeout=60) == 0


def test_a_client_that_disconnects_mid_upload_leaves_the_server_healthy(server, videos):
    import socket

    import httpx

    proc, url = server
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:  # promises 1 MB, sends 1 KB, hangs up
        sock.sendall(
            b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b'Content-Length: 1000000\r\n\r\n--b\r\nContent-Disposition: form-data; name="file"; '
            b'filename="a.mp4"\r\n\r\n' + b"\0" * 1000
        )
    time.sleep(0.5)
    assert httpx.get(f"{url}/healthz").status_code == 200
    response = httpx.post(f"{url}/v1/predict", files={"file": ("a.mp4", (videos / "a.mp4").read_bytes())}, timeout=60)
    assert response.status_code == 200 and proc.poll() is None
    server_tmp = Path(proc.args[proc.args.index("--checkpoint") + 1]).parent / "srvtmp"
    assert not [p for p in server_tmp.iterdir() if p.name.startswith("timesformer-upload-")]  # nor of either upload


def test_the_web_page_in_a_real_browser(server, videos, tmp_path):
    """Headless Chromium (Debian's package, driven by Playwright) opens the page, uploads a clip, and shows the
    predicted label, the top-k bars, the timeline plot and the attention GIF. TIMESFORMER_SCREENSHOT=path keeps the
    screenshot (the README's)."""
    import os
    import shutil

    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no Chromium on PATH (apt-get install chromium); .ci/run installs it")
    _, url = server
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1000, "height": 760})
        page.goto(url)
        assert "timesformer" in page.title()
        page.fill("#window", "1")
        page.set_input_files("#file", str(videos / "a.mp4"))
        page.wait_for_selector("#status:has-text('predicted')", timeout=30000)
        label = page.inner_text("#bars .bar .name")
        assert label in ("cat", "dog", "eel") and label in page.inner_text("#status")
        assert page.locator("#bars .bar").count() == 3
        assert page.locator("#timeline svg polyline").count() == 3  # one line per class over the 3 windows
        page.click("#explain")
        page.wait_for_selector("#gif:visible", timeout=30000)
        assert page.get_attribute("#gif", "src").startswith("data:image/gif;base64,")
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        browser.close()
    assert (tmp_path / "page.png").stat().st_size > 10_000
    if os.environ.get("TIMESFORMER_SCREENSHOT"):
        shutil.copy(tmp_path / "page.png", os.environ["TIMESFORMER_SCREENSHOT"])
