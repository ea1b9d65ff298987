"""The web API (maskwatch.serving) with FastAPI's TestClient and small fake models."""

from __future__ import annotations

import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from maskwatch.detection.pipeline import Face  # noqa: E402
from maskwatch.serving.app import Settings, create_app, is_loopback  # noqa: E402

CLASSES = ["with_mask", "without_mask"]
#: The server checks the Host header: tests reach it by its loopback address.
BASE_URL = "http://127.0.0.1:8000"


# ---------------------------------------------------------------- fakes


FakeFace = Face  # the pipeline's own record, built by hand in these fakes


class FakeClassifier:
    """Green-dominant crops wear a mask; anything else does not."""

    classes = CLASSES
    info = SimpleNamespace(name="fake-colour", classes=CLASSES, threshold=0.4, input_size=32)

    def classify(self, faces: list[np.ndarray]) -> list:
        out = []
        for rgb in faces:
            mean = rgb.reshape(-1, 3).astype(float).mean(0)
            p_with = float(mean[1] / (mean[0] + mean[1] + 1e-6))
            label = "with_mask" if p_with > 0.5 else "without_mask"
            scores = {"with_mask": p_with, "without_mask": 1 - p_with}
            out.append(SimpleNamespace(label=label, score=scores[label], scores=scores))
        return out


class FakeDetector:
    """'Faces' are the bright rectangles of an image; records how many calls overlap."""

    site = None  # no site calibration
    threshold = None  # labels as the fake classifier gives them

    def __init__(self, delay: float = 0.0) -> None:
        from maskwatch.detection.faces import make_face_detector

        # the real (cheap) YuNet, for what the app asks of a face detector itself: its
        # name in /api/model and the example photo of the page
        self.face_detector = make_face_detector("yunet", threads=1)
        self.classifier = FakeClassifier()
        self.delay = delay
        self.active = 0
        self.max_active = 0
        self.calls = 0
        self._lock = threading.Lock()

    def detect(self, rgb: np.ndarray) -> list[FakeFace]:
        import cv2

        with self._lock:
            self.active += 1
            self.calls += 1
            self.max_active = max(self.max_active, self.active)
        try:
            if self.delay:
                time.sleep(self.delay)
            mask = (rgb.max(axis=2) > 100).astype(np.uint8)
            n, _, stats, _ = cv2.connectedComponentsWithStats(mask)
            faces = []
            for x, y, w, h, area in stats[1:]:
                if area < 16:
                    continue
                crop = rgb[y:y + h, x:x + w]
                pred = self.classifier.classify([crop])[0]
                faces.append(FakeFace([int(x), int(y), int(x + w), int(y + h)], 0.9,
                                      pred.label, pred.score, pred.scores))
            return sorted(faces, key=lambda f: f.box[0])
        finally:
            with self._lock:
                self.active -= 1


def scene(w: int = 120, h: int = 80, squares=(((10, 10, 40, 40), (220, 30, 30)),
                                              ((60, 20, 100, 60), (30, 200, 40)))) -> np.ndarray:
    rgb = np.zeros((h, w, 3), np.uint8)
    for (x1, y1, x2, y2), colour in squares:
        rgb[y1:y2, x1:x2] = colour
    return rgb


def png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return buf.getvalue()


def client_for(detector=None, **settings) -> TestClient:
    detector = detector or FakeDetector()
    return TestClient(create_app(detector=detector, settings=Settings(**settings)),
                      base_url=BASE_URL)


@pytest.fixture()
def client():
    with client_for() as c:
        yield c


def upload(data: bytes, name: str = "x.png", ctype: str = "image/png") -> dict:
    return {"files": {"file": (name, data, ctype)}}


# ---------------------------------------------------------------- /api/detect


def test_detect_returns_boxes_labels_and_counts(client):
    r = client.post("/api/detect", **upload(png(scene())))
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["width"], body["height"]) == (120, 80)
    assert [f["box"] for f in body["faces"]] == [[10, 10, 40, 40], [60, 20, 100, 60]]
    assert all(type(v) is int for f in body["faces"] for v in f["box"])  # as the detector gave
    assert [f["label"] for f in body["faces"]] == ["without_mask", "with_mask"]
    assert body["faces"][1]["scores"]["with_mask"] > 0.8
    assert body["counts"] == {"with_mask": 1, "without_mask": 1, "total": 2, "uncounted": 0}


class UnsureDetector(FakeDetector):
    """As FakeDetector, but faces whose left edge is at or right of ``from_x`` are
    uncertain boxes (not counted)."""

    def __init__(self, from_x: int) -> None:
        super().__init__()
        self.from_x = from_x

    def detect(self, rgb: np.ndarray) -> list[FakeFace]:
        faces = super().detect(rgb)
        for f in faces:
            f.counted = f.box[0] < self.from_x
        return faces


def test_uncounted_faces_are_listed_but_not_counted(tmp_path):
    with client_for(UnsureDetector(from_x=50)) as c:
        body = c.post("/api/detect", **upload(png(scene()))).json()
        assert [f["counted"] for f in body["faces"]] == [True, False]
        assert body["counts"] == {"with_mask": 0, "without_mask": 1, "total": 1,
                                  "uncounted": 1}
    src = tmp_path / "clip.mp4"
    write_video(src, frames=6)
    with client_for(UnsureDetector(from_x=0)) as c:  # every face uncertain
        r = c.post("/api/video", files={"file": ("clip.mp4", src.read_bytes(), "video/mp4")})
        body = wait_job(c, r.json()["url"])
        assert body["status"] == "done", body
        assert all(not f["counted"] for fr in body["frames"] for f in fr["faces"])
        assert body["counts"] == {"uncounted": 6, "max_faces_in_frame": 0}
        assert body["people"] == {}


def test_detect_threshold_per_request(client):
    data = png(scene())
    strict = client.post("/api/detect?threshold=0.95", **upload(data)).json()
    assert [f["label"] for f in strict["faces"]] == ["with_mask", "with_mask"]
    assert strict["faces"][0]["score"] == strict["faces"][0]["scores"]["with_mask"]
    assert strict["counts"] == {"with_mask": 2, "without_mask": 0, "total": 2, "uncounted": 0}
    eager = client.post("/api/detect?threshold=0.1", **upload(data)).json()
    assert [f["label"] for f in eager["faces"]] == ["without_mask", "without_mask"]
    # the server's own threshold again without the parameter
    plain = client.post("/api/detect", **upload(data)).json()
    assert [f["label"] for f in plain["faces"]] == ["without_mask", "with_mask"]
    assert client.post("/api/detect?threshold=1.5", **upload(data)).status_code == 422


def test_detect_threshold_not_a_number_says_what_it_must_be(client):
    data = png(scene())
    for value in ("NaN", "nan", "inf", "-inf", "1.5", "-0.1", "high"):
        r = client.post(f"/api/detect?threshold={value}", **upload(data))
        assert r.status_code == 422, (value, r.text)
        assert r.json()["detail"] == f"query.threshold: must be a number from 0 to 1, " \
                                     f"got {value!r}"


def test_docs_favicon_and_example_are_served_locally(client):
    docs = client.get("/docs")
    assert docs.status_code == 200
    assert "http" not in docs.text.replace("http-equiv", "")  # no CDN address at all
    for asset in ("/docs/assets/swagger-ui-bundle.js", "/docs/assets/swagger-ui.css"):
        assert client.get(asset).status_code == 200, asset
    assert client.get("/redoc").status_code == 404  # its script would come from a CDN
    icon = client.get("/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/x-icon"
    assert Image.open(io.BytesIO(icon.content)).format == "ICO"
    example = client.get("/example.jpg")  # the photo as it is and with a mask drawn on
    assert example.status_code == 200 and example.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(example.content)).size == (2 * 512 + 16, 600)
    assert "/favicon.ico" in client.get("/").text


def test_detect_accepts_raw_jpeg_body_and_exif_rotation(client):
    # a 120x80 scene stored sideways with EXIF orientation 6: the server must see it upright
    img = Image.fromarray(scene()).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95, exif=exif)
    r = client.post("/api/detect", content=buf.getvalue(), headers={"content-type": "image/jpeg"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["width"], body["height"]) == (120, 80)
    assert len(body["faces"]) == 2
    assert abs(body["faces"][0]["box"][0] - 10) <= 2 and abs(body["faces"][1]["box"][2] - 100) <= 2


def test_detect_no_face(client):
    r = client.post("/api/detect", **upload(png(np.zeros((50, 70, 3), np.uint8))))
    assert r.status_code == 200
    assert r.json() == {"faces": [], "width": 70, "height": 50,
                        "counts": {"with_mask": 0, "without_mask": 0, "total": 0,
                                   "uncounted": 0}}


def test_not_an_image_type_is_415(client):
    r = client.post("/api/detect", **upload(b"hello world", "notes.txt", "text/plain"))
    assert r.status_code == 415
    assert "expected an image" in r.json()["detail"]
    r = client.post("/api/detect", content=b"{}", headers={"content-type": "application/json"})
    assert r.status_code == 415


def test_garbage_claiming_to_be_an_image_is_422(client):
    r = client.post("/api/detect", **upload(b"this is not a png at all", "fake.png"))
    assert r.status_code == 422
    assert r.json()["detail"] == "fake.png: not an image file Pillow can read"


def test_truncated_image_is_422_with_reason(client):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(
        buf, "JPEG")
    r = client.post("/api/detect", **upload(buf.getvalue()[:400], "cut.jpg", "image/jpeg"))
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert detail.startswith("cut.jpg: ") and ("truncated" in detail or "decode" in detail)


def test_empty_upload_is_422(client):
    r = client.post("/api/detect", **upload(b"", "empty.png"))
    assert r.status_code == 422 and "empty" in r.json()["detail"]
    r = client.post("/api/detect", content=b"", headers={"content-type": "image/png"})
    assert r.status_code == 422 and "empty" in r.json()["detail"]


def test_multipart_without_file_is_422(client):
    r = client.post("/api/detect", data={"note": "no file"},
                    files={"other": ("a.txt", b"", "text/plain")})
    # a file part under another name is used; a form with no file at all is refused
    assert r.status_code in (415, 422)
    r = client.post("/api/detect", data={"note": "x"},
                    headers={"content-type": "multipart/form-data; boundary=zz"},
                    content=b'--zz\r\nContent-Disposition: form-data; name="note"\r\n\r\nx\r\n'
                    b"--zz--\r\n")
    assert r.status_code == 422 and "no file" in r.json()["detail"]


def test_oversized_upload_is_413_by_header_and_by_bytes():
    det = FakeDetector()
    big = np.random.default_rng(1).integers(0, 255, (200, 200, 3), np.uint8)
    data = png(big)
    assert len(data) > 100_000
    with client_for(det, max_upload_mb=0.05) as c:
        r = c.post("/api/detect", **upload(data))
        assert r.status_code == 413
        # the limit as it was given (the page shows this message as it is)
        assert r.json()["detail"] == "upload is larger than the limit of 0.05 MB"

        def chunks():  # no Content-Length: the server must count what arrives
            for i in range(0, len(data), 8192):
                yield data[i:i + 8192]

        r = c.post("/api/detect", content=chunks(), headers={"content-type": "image/png"})
        assert r.status_code == 413
        # a Content-Length that lies (smaller than the body) is caught by counting too
        r = c.post("/api/detect", content=chunks(),
                   headers={"content-type": "image/png", "content-length": "1000"})
        assert r.status_code in (400, 413)
        small = png(scene())
        assert c.post("/api/detect", **upload(small)).status_code == 200
    assert det.calls == 1


def test_pixel_cap_is_422():
    with client_for(max_pixels=5000) as c:
        r = c.post("/api/detect", **upload(png(scene(120, 80))))
        assert r.status_code == 422
        assert "over the limit" in r.json()["detail"]


def test_pixel_cap_names_the_servers_option_not_the_cli_variable(monkeypatch):
    """The server ignores MASKWATCH_MAX_PIXELS; its message named it all the same."""
    monkeypatch.setenv("MASKWATCH_MAX_PIXELS", "100000000")
    with client_for(max_pixels=5000) as c:
        for route in ("/api/detect", "/api/classify"):
            detail = c.post(route, **upload(png(scene(120, 80)))).json()["detail"]
            assert detail == ("x.png: 120x80 is 9,600 pixels, over the limit of 5,000 "
                              "(maskwatch serve --max-pixels)"), detail
        assert c.get("/api/model").json()["limits"]["max_pixels"] == 5000


def test_serve_max_pixels_option_reaches_the_app(monkeypatch, capsys):
    import uvicorn

    import maskwatch.detection.pipeline as pipeline
    import maskwatch.serving.app as app_module
    from maskwatch.cli import main

    built = []
    monkeypatch.setattr(pipeline, "Detector", lambda **kw: FakeDetector())
    monkeypatch.setattr(app_module, "create_app",
                        lambda detector, settings: built.append(settings) or object())
    monkeypatch.setattr(uvicorn, "Server", lambda config: SimpleNamespace(run=lambda: None))
    monkeypatch.setattr("maskwatch.serving.server.server_config", lambda *a: None)
    assert main(["serve", "--max-pixels", "1234"]) == 0
    assert main(["serve"]) == 0
    assert [s.max_pixels for s in built] == [1234, app_module.SERVER_MAX_PIXELS]
    for bad in ("0", "-5", "lots"):
        with pytest.raises(SystemExit) as exit_:
            main(["serve", "--max-pixels", bad])
        assert exit_.value.code == 2
    assert "argument --max-pixels" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--max-pixels N largest image" in help_text and "(default: 40,000,000)" in help_text


# ---------------------------------------------------------------- concurrency


def test_concurrency_bound_is_respected_and_runs_in_parallel():
    det = FakeDetector(delay=0.3)
    data = png(scene())
    with client_for(det, max_concurrency=2, queue_wait_s=10) as c:
        with ThreadPoolExecutor(6) as pool:
            codes = list(pool.map(lambda _: c.post("/api/detect", **upload(data)).status_code,
                                  range(6)))
        # /healthz answers while inference is busy: the event loop is not blocked
        det.delay = 1.0
        with ThreadPoolExecutor(3) as pool:
            busy = [pool.submit(c.post, "/api/detect", **upload(data)) for _ in range(2)]
            time.sleep(0.2)
            t0 = time.perf_counter()
            assert c.get("/healthz").status_code == 200
            assert time.perf_counter() - t0 < 0.5
            assert all(f.result().status_code == 200 for f in busy)
    assert codes == [200] * 6
    assert det.max_active == 2  # never more than the bound, and really two at once


def test_excess_requests_get_503_instead_of_queueing():
    det = FakeDetector(delay=0.6)
    data = png(scene())
    with client_for(det, max_concurrency=1, queue_wait_s=0.1) as c:
        with ThreadPoolExecutor(4) as pool:
            responses = list(pool.map(lambda _: c.post("/api/detect", **upload(data)), range(4)))
    codes = sorted(r.status_code for r in responses)
    assert codes.count(200) >= 1 and codes.count(503) >= 2, codes
    busy = next(r for r in responses if r.status_code == 503)
    assert busy.headers["retry-after"] == "1" and "busy" in busy.json()["detail"]
    assert det.max_active == 1
    assert det.calls == codes.count(200)


# ---------------------------------------------------------------- auth, model, health, page


def test_api_key_is_enforced_on_api_only():
    with client_for(api_key="s3cret") as c:
        data = png(scene())
        assert c.post("/api/detect", **upload(data)).status_code == 401
        r = c.post("/api/detect", headers={"X-API-Key": "wrong"}, **upload(data))
        assert r.status_code == 401 and "API key" in r.json()["detail"]
        assert c.get("/api/model").status_code == 401
        assert c.get("/api/jobs/abc").status_code == 401
        r = c.post("/api/detect", headers={"X-API-Key": "s3cret"}, **upload(data))
        assert r.status_code == 200 and len(r.json()["faces"]) == 2
        assert c.get("/healthz").status_code == 200
        assert c.get("/").status_code == 200
        assert c.get("/api/model", headers={"X-API-Key": "s3cret"}).json()["limits"][
            "api_key_required"] is True


def test_model_endpoint(client):
    body = client.get("/api/model").json()
    assert body["name"] == "fake-colour"
    assert body["classes"] == CLASSES
    assert body["threshold"] == 0.4
    assert body["detector"] == "yunet"
    assert body["versions"]["maskwatch"]
    assert body["limits"]["max_upload_mb"] == 10.0


def test_healthz(client):
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok"


def test_healthz_answers_head_without_a_body(client):
    r = client.head("/healthz")
    assert r.status_code == 200 and r.content == b""
    assert "head" not in client.get("/openapi.json").json()["paths"]["/healthz"]


def test_page_and_static_files(client):
    r = client.get("/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert 'id="cam-start"' in r.text and "/static/app.js" in r.text
    js = client.get("/static/app.js")
    assert js.status_code == 200 and "getUserMedia" in js.text
    assert client.get("/static/style.css").status_code == 200
    assert r.headers["x-content-type-options"] == "nosniff"


def test_classify_face_crop(client):
    green = np.full((40, 30, 3), (20, 200, 30), np.uint8)
    r = client.post("/api/classify", **upload(png(green)))
    assert r.status_code == 200
    body = r.json()
    assert body["label"] == "with_mask" and body["score"] == body["scores"]["with_mask"]
    red = np.full((40, 30, 3), (200, 20, 30), np.uint8)
    assert client.post("/api/classify", **upload(png(red))).json()["label"] == "without_mask"
    assert client.post("/api/classify", **upload(b"x", "a.txt", "text/plain")).status_code == 415


def test_openapi_lists_routes(client):
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    for path in ("/api/detect", "/api/classify", "/api/video", "/api/jobs/{job_id}",
                 "/api/jobs/{job_id}/video", "/api/model", "/healthz"):
        assert path in paths, path
    detect = paths["/api/detect"]["post"]
    assert "multipart/form-data" in detect["requestBody"]["content"]
    assert detect["summary"] and "413" in detect["responses"]
    assert "/" not in paths  # the page is not part of the API


# ---------------------------------------------------------------- video jobs


def write_video(path: Path, frames: int = 8, w: int = 96, h: int = 64,
                audio: bool = False) -> None:
    """A bright face moving right. Odd sizes are encoded as H.264 4:4:4 (4:2:0 needs even
    ones); ``audio`` adds a 440 Hz tone as the audio track."""
    import subprocess

    import imageio_ffmpeg

    silent = path.with_name("silent-" + path.name) if audio else path
    writer = imageio_ffmpeg.write_frames(str(silent), (w, h), fps=10, codec="libx264",
                                         pix_fmt_out="yuv444p" if w % 2 or h % 2 else "yuv420p",
                                         macro_block_size=1, ffmpeg_log_level="error")
    writer.send(None)
    for i in range(frames):
        rgb = np.zeros((h, w, 3), np.uint8)
        rgb[20:44, 5 + 6 * i:29 + 6 * i] = (230, 40, 40)
        writer.send(rgb)
    writer.close()
    if audio:
        subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-y", "-i",
                        str(silent), "-f", "lavfi", "-i", "sine=frequency=440:duration=60",
                        "-c:v", "copy", "-c:a", "aac", "-shortest", str(path)], check=True)


def wait_job(c: TestClient, url: str, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = c.get(url).json()
        if body["status"] not in ("queued", "running"):
            return body
        time.sleep(0.1)
    raise AssertionError(f"job did not finish: {body}")


def test_video_job_end_to_end(tmp_path):
    import cv2

    src = tmp_path / "clip.mp4"
    write_video(src)
    with client_for() as c:
        jobs_root = c.app.state.maskwatch.jobs.root
        r = c.post("/api/video", files={"file": ("clip.mp4", src.read_bytes(), "video/mp4")})
        assert r.status_code == 202, r.text
        job = r.json()
        body = wait_job(c, job["url"])
        assert body["status"] == "done", body
        assert body["progress"] == 1.0 and body["frames_done"] == 8
        assert (body["width"], body["height"]) == (96, 64)
        assert [f["frame"] for f in body["frames"]] == list(range(8))
        lefts = [f["faces"][0]["box"][0] for f in body["frames"]]
        assert all(len(f["faces"]) == 1 for f in body["frames"])
        assert lefts == sorted(lefts) and lefts[-1] - lefts[0] >= 35  # the face moves right
        assert body["counts"] == {"without_mask": 8, "uncounted": 0, "max_faces_in_frame": 1}
        assert body["people"] == {"without_mask": 1}  # one person, tracked over 8 frames
        v = c.get(body["video_url"])
        assert v.status_code == 200 and v.headers["content-type"] == "video/mp4"
        out = tmp_path / "out.mp4"
        out.write_bytes(v.content)
        cap = cv2.VideoCapture(str(out))
        fourcc = int(cap.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little").decode(errors="replace")
        n = 0
        while cap.read()[0]:
            n += 1
        cap.release()
        assert fourcc.lower() in ("avc1", "h264") and n == 8
        assert jobs_root.is_dir()
    assert not jobs_root.exists()  # temp files are removed on shutdown


def test_video_job_blurs_faces_on_request(tmp_path):
    import cv2
    import imageio_ffmpeg

    src = tmp_path / "checks.mp4"
    writer = imageio_ffmpeg.write_frames(str(src), (96, 64), fps=10, codec="libx264",
                                         macro_block_size=1, ffmpeg_log_level="error",
                                         output_params=["-crf", "10"])
    writer.send(None)
    checks = np.indices((30, 30)).sum(axis=0) // 3 % 2 * 135 + 120  # 3 px squares
    for _ in range(4):
        rgb = np.zeros((64, 96, 3), np.uint8)
        rgb[17:47, 33:63] = checks[..., None]
        writer.send(rgb)
    writer.close()

    def detail(c, query: str) -> float:
        r = c.post(f"/api/video{query}", files={"file": ("c.mp4", src.read_bytes(), "video/mp4")})
        assert r.status_code == 202, r.text
        body = wait_job(c, r.json()["url"])
        assert body["status"] == "done", body
        out = tmp_path / f"out{len(query)}.mp4"
        out.write_bytes(c.get(body["video_url"]).content)
        cap = cv2.VideoCapture(str(out))
        ok, frame = cap.read()
        cap.release()
        assert ok
        patch = frame[27:37, 43:53].astype(int)
        return float(np.abs(np.diff(patch, axis=1)).mean())

    with client_for() as c:
        plain, blurred = detail(c, ""), detail(c, "?blur=all")
        assert blurred < plain / 3, (plain, blurred)
        assert c.post("/api/video?blur=some", files={"file": (
            "c.mp4", src.read_bytes(), "video/mp4")}).status_code == 422


def test_video_job_errors(tmp_path):
    with client_for(max_video_jobs=1) as c:
        r = c.post("/api/video", files={"file": ("a.txt", b"text", "text/plain")})
        assert r.status_code == 415
        # a file the container reader cannot open is refused before a job is queued
        r = c.post("/api/video", files={"file": ("broken.mp4", b"not a video", "video/mp4")})
        assert r.status_code == 422 and "broken.mp4" in r.json()["detail"]
        assert c.get("/api/jobs/nope").status_code == 404


def test_deleting_a_finished_job_forgets_it(tmp_path):
    """It once read "cancelled" at 0.99 and its video "not ready" (409), though deleted."""
    src = tmp_path / "clip.mp4"
    write_video(src, frames=4)
    files = {"file": ("clip.mp4", src.read_bytes(), "video/mp4")}
    with client_for() as c:
        body = wait_job(c, c.post("/api/video", files=files).json()["url"])
        assert body["status"] == "done"
        folder = c.app.state.maskwatch.jobs.root / body["id"]
        assert folder.is_dir()
        r = c.delete(f"/api/jobs/{body['id']}")
        assert r.status_code == 200, r.text
        gone = r.json()
        assert gone["status"] == "deleted" and gone["progress"] == 1.0
        assert gone["video_url"] is None and gone["frames"] is None
        assert not folder.exists()
        assert c.get(f"/api/jobs/{body['id']}").status_code == 404
        assert c.get(body["video_url"]).status_code == 404
        assert c.delete(f"/api/jobs/{body['id']}").status_code == 404


def test_deleting_a_running_job_cancels_it(tmp_path):
    src = tmp_path / "clip.mp4"
    write_video(src, frames=8)
    files = {"file": ("clip.mp4", src.read_bytes(), "video/mp4")}
    with client_for(FakeDetector(delay=0.2)) as c:
        url = c.post("/api/video", files=files).json()["url"]
        deadline = time.monotonic() + 30
        while c.get(url).json()["status"] == "queued" and time.monotonic() < deadline:
            time.sleep(0.05)
        job_id = url.rsplit("/", 1)[1]
        folder = c.app.state.maskwatch.jobs.root / job_id
        assert c.delete(url).status_code == 200
        body = wait_job(c, url)
        assert body["status"] == "cancelled" and body["frames_done"] < 8
        assert not folder.exists()
        assert c.get(f"{url}/video").status_code == 409


def test_video_size_cap(tmp_path):
    with client_for(max_video_mb=0.001) as c:
        r = c.post("/api/video", files={"file": ("big.mp4", b"\0" * 5000, "video/mp4")})
        assert r.status_code == 413


def test_video_job_limit_gives_503(tmp_path):
    src = tmp_path / "clip.mp4"
    write_video(src, frames=4)
    with client_for(FakeDetector(delay=0.3), max_video_jobs=1) as c:
        files = {"file": ("clip.mp4", src.read_bytes(), "video/mp4")}
        first = c.post("/api/video", files=files)
        second = c.post("/api/video", files=files)
        assert first.status_code == 202 and second.status_code == 503
        assert wait_job(c, first.json()["url"])["status"] == "done"
        assert c.post("/api/video", files=files).status_code == 202


def test_video_job_frame_limit(tmp_path):
    src = tmp_path / "clip.mp4"
    write_video(src, frames=8)
    files = {"file": ("clip.mp4", src.read_bytes(), "video/mp4")}
    with client_for(max_video_frames=5) as c:
        body = wait_job(c, c.post("/api/video", files=files).json()["url"])
        assert body["status"] == "done" and body["truncated"] is True
        assert body["frames_done"] == 5 and len(body["frames"]) == 5
        assert body["people"] == {"without_mask": 1}


def test_video_job_and_detect_cli_agree(tmp_path):
    """The web job and `maskwatch detect` share one video path: the same faces and track
    ids per frame, the same people counts, the audio kept, and odd frame sizes handled."""
    import json

    from maskwatch.detection.runner import Run
    from maskwatch.detection.video import has_audio

    src = tmp_path / "odd.mp4"
    write_video(src, w=95, h=63, audio=True)
    detector = FakeDetector()
    detector.classes = CLASSES
    printed = io.StringIO()
    run = Run(detector, out=tmp_path / "cli", json_lines=True, quiet=True, stdout=printed)
    run.video(str(src))
    run.close()
    assert not run.failures
    cli = [json.loads(line) for line in printed.getvalue().splitlines()]
    with client_for(detector) as c:
        r = c.post("/api/video", files={"file": ("odd.mp4", src.read_bytes(), "video/mp4")})
        body = wait_job(c, r.json()["url"])
        assert body["status"] == "done", body
        web_video = tmp_path / "web.mp4"
        web_video.write_bytes(c.get(body["video_url"]).content)
    assert body["people"] == run.people[str(src)] == {"without_mask": 1}
    assert [f["faces"] for f in body["frames"]] == [r["faces"] for r in cli]
    assert {f["track_id"] for rec in cli for f in rec["faces"]} == {1}
    assert (body["width"], body["height"]) == (95, 63)
    assert has_audio(run.outputs[0]) and has_audio(web_video)


# ---------------------------------------------------------------- CLI


def test_cli_refuses_public_host_without_key(capsys):
    from maskwatch.cli import build_parser, main
    from maskwatch.cli.serve import check_args

    assert main(["serve", "--host", "0.0.0.0"]) == 2
    assert "without --api-key" in capsys.readouterr().err
    parser = build_parser()
    check_args(parser.parse_args(["serve", "--host", "0.0.0.0", "--api-key", "k"]))
    check_args(parser.parse_args(["serve", "--host", "0.0.0.0", "--insecure-no-key"]))
    check_args(parser.parse_args(["serve"]))
    assert main(["serve", "--max-concurrency", "0"]) == 2
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("127.0.0.5")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2")


# ---------------------------------------------------------------- the real models, if present


def test_real_detector_end_to_end():
    """One request through the real Detector (and the bundled classifier when it is there)
    on a real photo, with the real drawing code on a video job."""
    import matplotlib.cbook

    try:
        from maskwatch.detection.pipeline import Detector
        from maskwatch.errors import ModelError
    except ImportError as exc:
        pytest.skip(f"maskwatch.detection.pipeline not available yet: {exc}")
    real_classifier = True
    try:
        detector = Detector(face_detector="yunet", threads=1)
    except ModelError:  # the bundled classifier is built by the training run
        detector = Detector(face_detector="yunet", classifier=FakeClassifier(), threads=1)
        real_classifier = False
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        data = f.read()
    with TestClient(create_app(detector=detector), base_url=BASE_URL) as c:
        r = c.post("/api/detect", **upload(data, "grace_hopper.jpg", "image/jpeg"))
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["width"], body["height"]) == (512, 600)
        assert len(body["faces"]) == 1
        face = body["faces"][0]
        assert face["label"] == "without_mask" or not real_classifier
        assert set(face) >= {"box", "label", "score", "face_score", "scores"}
        x1, y1, x2, y2 = face["box"]
        assert 100 < x1 < x2 < 420 and 50 < y1 < y2 < 450
        model = c.get("/api/model").json()
        assert model["detector"] == "yunet" and "without_mask" in model["classes"]
        # a short video of the same photo through the real detector and drawing code
        import imageio_ffmpeg

        rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((256, 300)))
        buf = io.BytesIO()
        path = Path(c.app.state.maskwatch.jobs.root) / "src.mp4"
        writer = imageio_ffmpeg.write_frames(str(path), (256, 300), fps=5, codec="libx264",
                                             macro_block_size=1, ffmpeg_log_level="error")
        writer.send(None)
        for _ in range(3):
            writer.send(rgb)
        writer.close()
        buf.write(path.read_bytes())
        r = c.post("/api/video", files={"file": ("gh.mp4", buf.getvalue(), "video/mp4")})
        job = wait_job(c, r.json()["url"])
        assert job["status"] == "done", job
        assert [len(f["faces"]) for f in job["frames"]] == [1, 1, 1]
        assert c.get(job["video_url"]).status_code == 200


# ---------------------------------------------------------------- load test helper


def test_run_load_against_a_live_server():
    import socket

    import uvicorn

    from maskwatch.errors import MaskwatchError
    from maskwatch.serving.loadtest import run_load

    with pytest.raises(MaskwatchError, match="this machine"):
        run_load("http://192.0.2.1:8000/", b"x", clients=1, seconds=0.1)
    det = FakeDetector(delay=0.05)
    app = create_app(detector=det, settings=Settings(max_concurrency=1, queue_wait_s=5))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not srv.started:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        result = run_load(f"http://127.0.0.1:{port}", png(scene()), clients=3, seconds=1.0)
        bad = run_load(f"http://127.0.0.1:{port}/api/detect", b"junk", clients=1, seconds=0.3,
                       content_type="text/plain")
    finally:
        srv.should_exit = True
        thread.join(10)
        sock.close()
    assert result["errors"] == 0 and result["requests"] >= 5
    assert result["requests"] == det.calls == result["status"]["200"]
    # one request at a time on the server, 3 clients: each waits for about two others
    assert result["p95_ms"] >= result["p50_ms"] >= 45
    assert 2 <= result["rps"] <= 21  # at most 1 / 0.05 s
    assert bad["errors"] == bad["requests"] > 0 and set(bad["status"]) == {"415"}


def test_detector_is_loaded_at_startup_from_settings(tmp_path):
    """create_app() without a detector builds the real pipeline from Settings (lifespan)."""
    pytest.importorskip("onnx")
    try:
        from maskwatch.detection.pipeline import Detector  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"pipeline not available yet: {exc}")
    from onnx_helpers import write_tiny_onnx

    # a tiny classifier: mean colour -> 2 logits, "with_mask" when green dominates
    write_tiny_onnx(tmp_path / "tiny.onnx", [[-4.0, 4.0], [6.0, -6.0], [0.0, 0.0]])
    settings = Settings(model=str(tmp_path / "tiny.onnx"), detector="yunet", threads=1)
    with TestClient(create_app(settings=settings), base_url=BASE_URL) as c:
        info = c.get("/api/model").json()
        assert info["name"] == "tiny" and info["detector"] == "yunet"
        green = np.full((32, 32, 3), (20, 200, 30), np.uint8)
        r = c.post("/api/classify", **upload(png(green)))
        assert r.json()["label"] == "with_mask"
        assert c.post("/api/detect", **upload(png(np.zeros((40, 40, 3), np.uint8)))).json()[
            "faces"] == []


def test_video_job_writes_its_mp4_shrunk_to_copy_size(tmp_path):
    import threading

    import cv2

    from maskwatch.serving.jobs import Job, process_video

    clip = tmp_path / "clip.mp4"
    write_video(clip, frames=4, w=96, h=64)
    for copy_size, size in ((40, (48, 32)), (0, (96, 64))):
        job = Job(f"j{copy_size}", tmp_path / str(copy_size), clip, "clip.mp4")
        job.output_path.parent.mkdir(parents=True, exist_ok=True)
        process_video(job, threading.Event(), FakeDetector().detect, max_frames=100,
                      max_pixels=10**8, copy_size=copy_size)
        cap = cv2.VideoCapture(str(job.output_path))
        assert (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
                int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))) == size
        assert (job.width, job.height) == (96, 64)  # records keep the frames' pixels
