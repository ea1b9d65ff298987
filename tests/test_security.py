"""Hardening of the web server (issue 12): decode memory, key, Host/Origin, slow clients,
schema, JSON errors. The fakes come from test_serving."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from test_serving import BASE_URL, FakeDetector, client_for, png, scene  # noqa: E402

from maskwatch.serving.app import Settings, create_app  # noqa: E402

REPO_SRC = os.path.join(os.path.dirname(__file__), os.pardir, "src")


def one_bit_png(w: int, h: int, square: tuple[int, int, int, int] | None = None) -> bytes:
    """A tiny file for a huge 1-bit image (a white square on black when given)."""
    img = Image.new("1", (w, h))
    if square:
        img.paste(1, square)
    buf = io.BytesIO()
    img.save(buf, "PNG", optimize=True)
    return buf.getvalue()


# ---------------------------------------------------------------- item 3: decode memory


def test_server_pixel_cap_refuses_the_15kb_bomb_by_default():
    data = one_bit_png(10950, 10950)
    assert len(data) < 64_000
    with client_for() as c:
        r = c.post("/api/detect", files={"file": ("bomb.png", data, "image/png")})
    assert r.status_code == 422 and "over the limit" in r.json()["detail"]
    assert Settings().max_pixels < 120_000_000


def test_large_upload_is_decoded_small_and_boxes_come_back_in_full_size():
    det = FakeDetector()
    data = one_bit_png(6000, 4000, (3000, 2000, 3600, 2600))
    with client_for(det, work_pixels=1_000_000) as c:
        r = c.post("/api/detect", files={"file": ("big.png", data, "image/png")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["width"], body["height"]) == (6000, 4000)
    (face,) = body["faces"]
    assert all(abs(a - b) <= 16 for a, b in zip(face["box"], [3000, 2000, 3600, 2600]))


def test_decode_memory_is_bounded_by_work_pixels():
    """A 36-megapixel 1-bit PNG (a few KB) decoded for the server costs well under the
    ~290 MB that a full-size RGB decode takes (measured as peak RSS in a fresh process)."""
    code = textwrap.dedent("""
        import io, resource, sys
        from PIL import Image
        import numpy as np
        from maskwatch.imaging import decode_upload
        img = Image.new("1", (6000, 6000)); buf = io.BytesIO(); img.save(buf, "PNG")
        data = buf.getvalue(); del img, buf
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        rgb, scale = decode_upload(data, 40_000_000, 4_000_000)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print((after - before) // 1024, rgb.shape[0] * rgb.shape[1], scale[0])
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": REPO_SRC}, timeout=120)
    assert out.returncode == 0, out.stderr
    grown_mb, pixels, scale = out.stdout.split()
    assert pixels and int(pixels) <= 4_000_000 and float(scale) >= 3
    assert int(grown_mb) < 120, f"decoding grew the process by {grown_mb} MB"


# ---------------------------------------------------------------- item 11: API key


def test_non_ascii_api_key_matches_a_utf8_client():
    with client_for(api_key="clé-ü") as c:
        ok = c.get("/api/model", headers={"x-api-key": "clé-ü".encode()})
        bad = c.get("/api/model", headers={"x-api-key": "cle-u"})
    assert ok.status_code == 200, ok.text
    assert bad.status_code == 401


# ---------------------------------------------------------------- item 13: Host / Origin


def test_unknown_host_is_refused_dns_rebinding():
    with client_for() as c:
        assert c.get("/healthz").status_code == 200
        for host in ("localhost:8000", "[::1]:8000", "127.0.0.1"):
            assert c.get("/healthz", headers={"host": host}).status_code == 200, host
        r = c.get("/healthz", headers={"host": "attacker.example:8000"})
        assert r.status_code == 403 and "unknown Host" in r.json()["detail"]
        r = c.post("/api/detect", headers={"host": "rebind.example"},
                   files={"file": ("x.png", png(scene()), "image/png")})
        assert r.status_code == 403
    with client_for(allowed_hosts=("cams.lan",)) as c:
        assert c.get("/healthz", headers={"host": "cams.lan:8000"}).status_code == 200
    with client_for(host="0.0.0.0", api_key="k") as c:  # all interfaces: any name, with key
        assert c.get("/healthz", headers={"host": "box.lan"}).status_code == 200


def test_cross_site_posts_are_refused_without_a_key():
    files = {"file": ("x.png", png(scene()), "image/png")}
    with client_for() as c:
        evil = c.post("/api/detect", files=files, headers={"origin": "https://evil.example"})
        assert evil.status_code == 403 and "cross-site" in evil.json()["detail"]
        fetch = c.post("/api/detect", files=files, headers={"sec-fetch-site": "cross-site"})
        assert fetch.status_code == 403
        null = c.post("/api/detect", files=files, headers={"origin": "null"})
        assert null.status_code == 403
        own = c.post("/api/detect", files=files, headers={"origin": BASE_URL,
                                                          "sec-fetch-site": "same-origin"})
        assert own.status_code == 200, own.text
        assert c.post("/api/detect", files=files).status_code == 200  # curl: no Origin
    with client_for(api_key="k") as c:  # the key already stops a cross-site browser
        r = c.post("/api/detect", files=files,
                   headers={"origin": "https://evil.example", "x-api-key": "k"})
        assert r.status_code == 200


def _serve(settings: Settings, header_timeout: float):
    from maskwatch.serving.server import serve_in_thread

    app = create_app(detector=FakeDetector(), settings=settings)
    return serve_in_thread(app, header_timeout_s=header_timeout, log_level="warning")


def _read_all(sock: socket.socket, limit: float) -> bytes:
    sock.settimeout(limit)
    data = b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except TimeoutError:
        data += b"<still open>"
    return data


def test_slow_clients_get_408_for_stalled_headers_and_bodies():
    server, thread, port = _serve(Settings(body_timeout_s=1.0), header_timeout=1.0)
    try:
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            answer = _read_all(s, 15)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:80]
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"POST /api/detect HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      b"Content-Type: image/png\r\nContent-Length: 5000\r\n\r\n" + b"x" * 10)
            answer = _read_all(s, 15)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:80]
        # a normal client on the same server is still served
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            assert _read_all(s, 15).startswith(b"HTTP/1.1 200")
    finally:
        server.should_exit = True
        thread.join(10)


# ---------------------------------------------------------------- item 14: the schema


def test_openapi_declares_the_key_scheme_and_error_answers():
    with client_for(api_key="k") as c:
        schema = c.get("/openapi.json").json()
    scheme = schema["components"]["securitySchemes"]["APIKey"]
    assert scheme == {**scheme, "type": "apiKey", "in": "header", "name": "X-API-Key"}
    paths = schema["paths"]
    for path, ops in paths.items():
        if not path.startswith("/api/"):
            continue
        for method, op in ops.items():
            assert {"APIKey": []} in op["security"], (path, method)
            assert {"400", "401", "403", "500"} <= set(op["responses"]), (path, method)
            problem = op["responses"]["401"]["content"]["application/json"]["schema"]
            assert problem == {"$ref": "#/components/schemas/Problem"}
    for path in ("/api/detect", "/api/classify", "/api/video"):
        assert {"408", "413", "415", "422", "503"} <= set(paths[path]["post"]["responses"])
    assert "404" in paths["/api/jobs/{job_id}"]["get"]["responses"]
    assert "HTTPValidationError" not in json.dumps(schema)  # every error is {"detail": str}
    with client_for() as c:  # keyless: the key is optional
        op = c.get("/openapi.json").json()["paths"]["/api/detect"]["post"]
    assert {} in op["security"]


# ---------------------------------------------------------------- item 9: JSON 500 / 507


class BrokenDetector(FakeDetector):
    def __init__(self, exc: Exception) -> None:
        super().__init__()
        self.exc = exc

    def detect(self, rgb: np.ndarray) -> list:
        raise self.exc


@pytest.mark.parametrize("exc, status", [(OSError(28, "No space left on device"), 507),
                                         (RuntimeError("boom"), 500)])
def test_server_errors_are_json(exc, status):
    from fastapi.testclient import TestClient

    app = create_app(detector=BrokenDetector(exc), settings=Settings())
    with TestClient(app, base_url=BASE_URL, raise_server_exceptions=False) as c:
        r = c.post("/api/detect", files={"file": ("x.png", png(scene()), "image/png")})
    assert r.status_code == status
    assert r.headers["content-type"] == "application/json" and r.json()["detail"]


# ---------------------------------------------------------------- item 1: video job budget


def test_video_over_budget_is_refused_from_its_header(tmp_path):
    from test_serving import write_video

    clip = tmp_path / "clip.mp4"
    write_video(clip, frames=20, w=96, h=64)  # 20 x 6144 = 0.12 megapixel-frames
    files = {"file": ("clip.mp4", clip.read_bytes(), "video/mp4")}
    jobs = tmp_path / "jobs"
    with client_for(video_budget_mpx=0.1, jobs_dir=jobs) as c:
        r = c.post("/api/video", files=files)
        assert r.status_code == 413, r.text
        assert "job budget" in r.json()["detail"] and "96x64" in r.json()["detail"]
        assert not any(jobs.iterdir())  # no job, no file kept
    with client_for(video_budget_mpx=0.2, jobs_dir=jobs) as c:
        assert c.post("/api/video", files=files).status_code == 202
        assert c.get("/api/model").json()["limits"]["video_budget_mpx"] == 0.2


def test_budget_also_holds_while_decoding(tmp_path):
    """A container whose header is silent or lies is stopped at the budget mid-way."""
    from test_serving import write_video

    from maskwatch.serving.jobs import Job, OverBudget, process_video

    clip = tmp_path / "clip.mp4"
    write_video(clip, frames=20, w=96, h=64)
    job = Job("j", tmp_path, clip, "clip.mp4")
    with pytest.raises(OverBudget, match="stopped at frame 10"):
        process_video(job, threading.Event(), FakeDetector().detect,
                      max_frames=1000, max_pixels=10**8, budget=10 * 96 * 64)
    assert not job.output_path.exists() and not list(tmp_path.glob("*.part.mp4"))


def test_delete_cancels_a_running_job_and_frees_its_slot(tmp_path):
    from test_serving import wait_job, write_video

    clip = tmp_path / "clip.mp4"
    write_video(clip, frames=40)
    files = {"file": ("clip.mp4", clip.read_bytes(), "video/mp4")}
    jobs = tmp_path / "jobs"
    with client_for(FakeDetector(delay=0.2), max_video_jobs=1, jobs_dir=jobs) as c:
        job = c.post("/api/video", files=files).json()
        assert c.post("/api/video", files=files).status_code == 503  # the one slot is taken
        for _ in range(100):
            if c.get(job["url"]).json()["frames_done"] > 0:
                break
            time.sleep(0.05)
        r = c.delete(job["url"])
        assert r.status_code == 200 and r.json()["id"] == job["id"]
        body = wait_job(c, job["url"])
        assert body["status"] == "cancelled" and body["frames_done"] < 40
        assert not (jobs / job["id"]).exists()  # upload and partial video deleted
        assert c.post("/api/video", files=files).status_code == 202  # the slot is free
        assert c.delete("/api/jobs/nope").status_code == 404


# ---------------------------------------------------------------- item 2: a failed video write


def test_job_whose_video_cannot_be_written_fails_and_leaves_no_file(tmp_path):
    """ffmpeg writing to a full device: the job is an error, not `done` with a broken MP4."""
    from test_serving import write_video

    from maskwatch.serving.jobs import FAILED, JobManager, process_video

    clip = tmp_path / "clip.mp4"
    write_video(clip, frames=6)
    manager = JobManager(lambda job, stop: process_video(
        job, stop, FakeDetector().detect, 100, 10**8), root=tmp_path / "j")
    try:
        job = manager.new_job("clip.mp4", ".mp4")
        job.input_path.write_bytes(clip.read_bytes())
        (job.dir / "annotated.part.mp4").symlink_to("/dev/full")  # every write: ENOSPC
        manager.start(job)
        for _ in range(300):
            if not job.active:
                break
            time.sleep(0.05)
        assert job.status == FAILED, job.status
        assert "cannot write the video" in job.error and "\n" not in job.error
        assert not job.output_path.exists()
        assert not (job.dir / "annotated.part.mp4").exists()
    finally:
        manager.shutdown()
