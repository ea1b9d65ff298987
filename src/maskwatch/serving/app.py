"""The FastAPI app behind ``maskwatch serve``: an HTTP API and a webcam page.

``create_app(detector=None, classifier=None, settings=Settings())`` builds the app. Without a
detector it loads ``maskwatch.detection.pipeline.Detector`` once at start-up; tests pass fakes
(any object with ``detect(rgb) -> list`` of faces with ``to_dict()``).

Limits: uploads over the size cap get 413 (Content-Length and the bytes actually read are both
checked), non-image uploads 415, undecodable ones 422 with the reason, and at most
``max_concurrency`` inference calls run at once in a thread pool; a request that cannot start
within ``queue_wait_s`` gets 503 instead of piling up. Large images are decoded at a reduced
size (``work_pixels``) and their boxes scaled back, so a small file cannot cost gigabytes.

Browser attacks: a request whose ``Host`` is not the bound address or a name in
``allowed_hosts`` gets 403 (DNS rebinding), and without an API key a POST/DELETE that a
browser marks as coming from another site (``Origin``, ``Sec-Fetch-Site``) gets 403 too.
A body that stalls for ``body_timeout_s`` gets 408. Every error is JSON ``{"detail": ...}``.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import hmac
import importlib.metadata
import logging
import platform
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import UploadFile

from maskwatch import __version__
from maskwatch.detection.draw import Annotator
from maskwatch.detection.pipeline import Detector, detect_decoded
from maskwatch.errors import ImageError, MaskwatchError
from maskwatch.imaging import IMAGE_SUFFIXES, VIDEO_SUFFIXES, decode_upload
from maskwatch.labels import is_counted
from maskwatch.serving.jobs import (
    DONE,
    Job,
    JobManager,
    JobsBusy,
    OverBudget,
    check_budget,
    probe_video,
    process_video,
)
from maskwatch.serving.page import add_page_routes

STATIC_DIR = Path(__file__).with_name("static")
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
#: Bind addresses that listen on every interface (the Host check then needs allowed_hosts).
WILDCARD_HOSTS = {"0.0.0.0", "::", ""}
#: The server's default pixel cap (``maskwatch serve --max-pixels``): lower than the CLI's,
#: since uploads come from others.
SERVER_MAX_PIXELS = 40_000_000
#: Imaging's pixel-limit errors name the CLI's variable; the server's cap is an option.
_CLI_PIXELS_HINT = "(MASKWATCH_MAX_PIXELS)"
SERVER_PIXELS_HINT = "(maskwatch serve --max-pixels)"
#: Larger uploads are decoded at a reduced size of about this many pixels (4000 x 3000).
WORK_PIXELS = 12_000_000
log = logging.getLogger("maskwatch.serving")
MB = 1024 * 1024
#: Room for multipart boundaries and part headers on top of the file-size cap.
MULTIPART_SLACK = 64 * 1024


@dataclass
class Settings:
    """Server limits and how to build the detector when none is passed to create_app."""

    api_key: str | None = None
    max_upload_mb: float = 10.0
    max_video_mb: float = 100.0
    max_concurrency: int = 2
    queue_wait_s: float = 2.0
    max_pixels: int = SERVER_MAX_PIXELS
    work_pixels: int = WORK_PIXELS
    max_video_frames: int = 9000
    #: frames x pixels one video job may cost, in megapixels (3000: 48 s of 1080p at 30 fps,
    #: 11 s of 4K); checked from the container's header before the job is accepted
    video_budget_mpx: float = 3000.0
    max_video_jobs: int = 4
    keep_finished_jobs: int = 20
    model: str | None = None
    detector: str | None = None
    threads: int = 0
    threshold: float | None = None  # overrides the model's without_mask threshold
    jobs_dir: Path | None = None
    host: str = "127.0.0.1"  # the bound address: requests must name it (or allowed_hosts)
    allowed_hosts: tuple[str, ...] = ()  # other names the server may be reached by
    body_timeout_s: float = 30.0  # an upload that sends nothing for this long gets 408
    db: str | None = None  # a `maskwatch watch` database: adds /dashboard, /api/events, /stats
    snapshots_dir: Path | None = None  # where event snapshots may be served from

    def host_names(self) -> set[str] | None:
        """Host header values accepted (lower case, no port); None: any (wildcard bind)."""
        extra = {h.strip().lower().strip("[]") for h in self.allowed_hosts if h.strip()}
        if self.host.strip("[]") in WILDCARD_HOSTS and not extra:
            return None
        return {*LOOPBACK_HOSTS, self.host.lower().strip("[]"), *extra} - WILDCARD_HOSTS

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * MB)

    @property
    def max_video_bytes(self) -> int:
        return int(self.max_video_mb * MB)

    @property
    def video_budget(self) -> int:
        """The job budget in pixels (frames x width x height)."""
        return int(self.video_budget_mpx * 1e6)


# ---------------------------------------------------------------- response models (OpenAPI)


class FaceRecord(BaseModel):
    """One detected face, as `maskwatch detect --json` prints it."""

    model_config = ConfigDict(extra="allow")
    box: list[int | float] = Field(description="[x1, y1, x2, y2] in pixels of the uploaded image")
    label: str | None = Field(description="chosen class, e.g. with_mask / without_mask")
    score: float | None = Field(description="probability of the chosen label")
    face_score: float | None = Field(None, description="face detector confidence")
    scores: dict[str, float] = Field(default_factory=dict, description="probability per class")
    counted: bool = Field(True, description="false for an uncertain face box (face score "
                          "under the count threshold): shown, but left out of the counts")


class DetectResponse(BaseModel):
    faces: list[FaceRecord] = Field(description="detected faces, each with its mask label")
    width: int = Field(description="image width in pixels (after EXIF rotation)")
    height: int = Field(description="image height in pixels")
    counts: dict[str, int] = Field(description="counted faces per label, `total`, and "
                                   "`uncounted` (uncertain face boxes)")


class ClassifyResponse(BaseModel):
    label: str = Field(description="chosen class")
    score: float = Field(description="probability of the chosen class")
    scores: dict[str, float] = Field(description="probability per class")


class JobCreated(BaseModel):
    id: str = Field(description="job id, for GET /api/jobs/{id}")
    status: str = Field(description="queued, running, done, error or cancelled")
    url: str = Field(description="where to poll the job")


class FrameRecord(BaseModel):
    frame: int = Field(description="0-based frame index")
    time: float = Field(description="seconds from the start")
    faces: list[FaceRecord]


class JobStatus(BaseModel):
    id: str
    status: str = Field(description="queued, running, done, error or cancelled; `deleted` in "
                        "the answer to DELETE of a finished job")
    progress: float = Field(description="fraction done, 0..1")
    frames_done: int
    frames_total: int | None = Field(description="frame count, when the container says it")
    fps: float | None
    width: int | None
    height: int | None
    truncated: bool = Field(description="true when the video was cut at the frame limit")
    error: str | None = Field(description="why the job failed")
    counts: dict[str, int] | None = Field(
        description="counted face detections per label summed over all frames (a person on "
        "screen for 8 frames counts 8), `uncounted` (uncertain face boxes) and "
        "`max_faces_in_frame` (when done)"
    )
    people: dict[str, int] | None = Field(
        description="people per label, as `maskwatch detect` counts them: each tracked face "
        "seen in at least 3 frames counts once, under the label it carried most (when done)"
    )
    frames: list[FrameRecord] | None = Field(description="per-frame records (when done)")
    video_url: str | None = Field(description="annotated H.264 MP4 (when done)")


class ModelResponse(BaseModel):
    name: str | None = Field(description="classifier model name")
    classes: list[str] = Field(description="classes the classifier can output")
    threshold: float | None = Field(
        description="without_mask is chosen when its probability reaches this"
    )
    input_size: int | None = Field(None, description="classifier input size in pixels")
    detector: str | None = Field(None, description="face detector in use")
    site: dict[str, Any] | None = Field(
        None, description="site settings in use (from `maskwatch calibrate`): box_map, "
        "min_face, face_threshold, fitted")
    limits: dict[str, Any] = Field(description="upload size, pixel and concurrency limits")
    versions: dict[str, str | None] = Field(description="versions of maskwatch and its runtime")


class Problem(BaseModel):
    """Every error answer."""

    detail: str = Field(description="what went wrong, in one line")


#: What each error status means, for the schema.
ERROR_MEANINGS = {
    400: "bad request (e.g. a malformed Content-Length)",
    401: "missing or wrong API key",
    403: "refused: unknown Host name, or a cross-site browser request to a keyless server",
    404: "no such job",
    408: "the upload stalled",
    409: "the job is not done",
    413: "too large (bytes, or for a video, frames x pixels over the job budget)",
    415: "not an image / not a video",
    422: "cannot decode, or a bad parameter",
    500: "server error",
    503: "busy: too many requests or jobs at once",
    507: "the server's disk is full",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error statuses plus those every /api route can give."""
    every = (400, 401, 403, 500)
    return {c: {"model": Problem, "description": ERROR_MEANINGS[c]}
            for c in sorted({*every, *codes})}


class Health(BaseModel):
    status: str = Field(description="`ok` once the detector is loaded")
    version: str


# ---------------------------------------------------------------- helpers


class _TooLarge(Exception):
    pass


def _problem(status: int, detail: str, **headers: str) -> HTTPException:
    return HTTPException(status_code=status, detail=detail, headers=headers or None)


def _server_words(text: str) -> str:
    """An error message as the server's user needs it: its pixel cap is ``--max-pixels``."""
    return text.replace(_CLI_PIXELS_HINT, SERVER_PIXELS_HINT)


#: What a bad value of these parameters must be, for the 422 answer (pydantic's own words
#: name one bound only: "less than or equal to 1" for NaN).
PARAMETER_RULES = {("query", "threshold"): "must be a number from 0 to 1"}


def _too_large(limit: int) -> HTTPException:
    # rounded: a limit of 0.05 MB is int(0.05 * MB) bytes, which would read 0.0499992 MB
    return _problem(413, f"upload is larger than the limit of {round(limit / MB, 3):g} MB")


def _face_records(faces: list) -> list[dict]:
    return [f.to_dict() for f in faces]


def _relabel(faces: list, classes: list[str], threshold: float) -> list:
    """Choose each face's label again from its class probabilities with another
    without_mask threshold (the classifier's own decision rule); returns the faces."""
    from maskwatch.inference.preprocess import decide

    for face in faces:
        scores = face.scores or {}
        if not classes or any(c not in scores for c in classes):
            continue
        label = classes[int(decide(np.array([[scores[c] for c in classes]]), classes,
                                   threshold)[0])]
        face.label, face.score = label, scores[label]
    return faces


def _counts(records: list[dict], classes: list[str]) -> dict[str, int]:
    """Counted faces per label, their ``total``, and the ``uncounted`` face boxes."""
    counts = {c: 0 for c in classes}
    uncounted = 0
    for rec in records:
        if not is_counted(rec):
            uncounted += 1
            continue
        label = str(rec.get("label"))
        counts[label] = counts.get(label, 0) + 1
    counts["total"] = len(records) - uncounted
    counts["uncounted"] = uncounted
    return counts


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _allowed(content_type: str, filename: str, major: str, suffixes: set[str]) -> bool:
    """Whether a declared type / file name is acceptable for an image or video upload."""
    ctype = content_type.split(";")[0].strip().lower()
    if ctype.startswith(major + "/"):
        return True
    if ctype in ("", "application/octet-stream"):
        return not filename or Path(filename).suffix.lower() in suffixes or "." not in filename
    return False


def _multipart_schema(field_help: str, media: list[str]) -> dict:
    """OpenAPI request body: a multipart `file` field, or the raw bytes."""
    binary = {"type": "string", "format": "binary"}
    content = {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"file": {**binary, "description": field_help}},
                "required": ["file"],
            }
        }
    }
    for m in media:
        content[m] = {"schema": binary}
    return {"requestBody": {"required": True, "content": content}}


class _Upload:
    """An uploaded file: its bytes or a spooled file, its name and declared type."""

    def __init__(self, filename: str, content_type: str, data: bytes | None = None,
                 file: UploadFile | None = None) -> None:
        self.filename, self.content_type, self.data, self.file = filename, content_type, data, file

    async def close(self) -> None:
        """Delete the spooled temporary file of a multipart upload."""
        if self.file is not None:
            await self.file.close()


async def _receive_upload(request: Request, limit: int, default_name: str,
                          timeout: float = 30.0) -> _Upload:
    """Read one uploaded file (multipart `file` field or raw body), enforcing ``limit``.

    Content-Length is checked first; then the bytes actually received are counted, so a
    missing or false Content-Length cannot get past the cap. A client that sends nothing
    for ``timeout`` seconds gets 408.
    """
    declared = request.headers.get("content-length")
    body_limit = limit + MULTIPART_SLACK
    if declared is not None:
        try:
            if int(declared) > body_limit:
                raise _too_large(limit)
        except ValueError:
            raise _problem(400, "bad Content-Length header") from None
    received = 0

    async def receive():
        nonlocal received
        try:
            message = await asyncio.wait_for(request.receive(), timeout)
        except asyncio.TimeoutError:
            raise _problem(408, f"the upload sent nothing for {timeout:g} s") from None
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > body_limit:
                raise _TooLarge()
        return message

    limited = Request(request.scope, receive)
    ctype = request.headers.get("content-type", "")
    try:
        if ctype.lower().startswith("multipart/form-data"):
            form = await limited.form(max_files=1, max_fields=8)
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                upload = next((v for v in form.values() if isinstance(v, UploadFile)), None)
            if upload is None:
                raise _problem(422, "no file in the upload: send it as the multipart field `file`")
            if upload.size is not None and upload.size > limit:
                raise _too_large(limit)
            return _Upload(upload.filename or default_name, upload.content_type or "",
                           file=upload)
        chunks = []
        async for chunk in limited.stream():
            chunks.append(chunk)
        data = b"".join(chunks)
        if len(data) > limit:
            raise _too_large(limit)
        return _Upload(default_name, ctype, data=data)
    except _TooLarge:
        raise _too_large(limit) from None


async def _upload_bytes(upload: _Upload) -> bytes:
    if upload.data is not None:
        return upload.data
    assert upload.file is not None
    return await upload.file.read()


# ---------------------------------------------------------------- the app


class _State:
    """What the app holds between requests."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.detector: Any = None
        self.classifier: Any = None
        self.executor: ThreadPoolExecutor | None = None
        self.semaphore: asyncio.Semaphore | None = None
        self.jobs: JobManager | None = None
        self.ready = False


def _load_detector(settings: Settings, classifier: Any) -> Any:
    from maskwatch.detection.pipeline import Detector

    chosen = classifier if classifier is not None else settings.model
    kwargs: dict[str, Any] = {"classifier": chosen, "threads": settings.threads,
                              "threshold": settings.threshold}
    if settings.detector:
        kwargs["face_detector"] = settings.detector
    return Detector(**kwargs)


def create_app(
    detector: Any = None, classifier: Any = None, settings: Settings | None = None
) -> FastAPI:
    """Build the web app; ``detector`` / ``classifier`` are loaded at start-up when None."""
    settings = settings or Settings()
    state = _State(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        det = detector
        if det is None:
            det = await asyncio.to_thread(_load_detector, settings, classifier)
        clf = classifier if classifier is not None else det.classifier
        if clf is None:
            from maskwatch.inference.classifier import Classifier

            clf = await asyncio.to_thread(Classifier, settings.model, settings.threads)
        state.detector, state.classifier = det, clf
        state.executor = ThreadPoolExecutor(
            max_workers=settings.max_concurrency, thread_name_prefix="maskwatch-infer"
        )
        state.semaphore = asyncio.Semaphore(settings.max_concurrency)
        state.jobs = JobManager(
            lambda job, stop: process_video(
                job, stop, partial(detect_decoded, det), settings.max_video_frames,
                settings.max_pixels, settings.video_budget,
                Annotator(summary=True, blur=job.blur), det.threshold,
            ),
            max_active=settings.max_video_jobs,
            keep_finished=settings.keep_finished_jobs,
            root=settings.jobs_dir,
        )
        state.ready = True
        try:
            yield
        finally:
            state.ready = False
            state.jobs.shutdown()
            state.executor.shutdown(wait=True, cancel_futures=True)

    app = FastAPI(
        title="maskwatch",
        version=__version__,
        summary="Find faces in images and video and tell whether each wears a mask.",
        description=(
            "Upload an image to `/api/detect` for boxes and mask labels, a face crop to "
            "`/api/classify`, or a video to `/api/video` (a background job with an annotated "
            "H.264 MP4 as result). When the server has an API key, send it in the `X-API-Key` "
            "header on every `/api/*` request. Errors are JSON `{\"detail\": \"...\"}`: 401 bad "
            "key, 413 too large, 415 not an image/video, 422 cannot decode, 503 busy."
        ),
        lifespan=lifespan,
        docs_url=None,  # served from local files by add_page_routes
        redoc_url=None,
    )
    app.state.maskwatch = state

    key_scheme = APIKeyHeader(
        name="X-API-Key", auto_error=False, scheme_name="APIKey",
        description="the server's key, when it has one (`maskwatch serve --api-key`)",
    )
    expected_key = settings.api_key.encode("utf-8") if settings.api_key else None

    async def check_key(request: Request, _declared: str | None = Security(key_scheme)) -> None:
        if expected_key is None:
            return
        # the raw bytes: a header decoded as Latin-1 would never match a UTF-8 key
        given = next((v for k, v in request.scope["headers"] if k.lower() == b"x-api-key"), b"")
        if not hmac.compare_digest(given, expected_key):
            raise _problem(401, "missing or wrong API key (send it in the X-API-Key header)",
                           **{"WWW-Authenticate": "X-API-Key"})

    async def run_limited(fn: Callable[[], Any]) -> Any:
        """Run CPU work in the pool, at most max_concurrency at once; 503 when saturated."""
        assert state.semaphore is not None and state.executor is not None
        try:
            await asyncio.wait_for(state.semaphore.acquire(), settings.queue_wait_s)
        except asyncio.TimeoutError:
            raise _problem(503, "server busy: too many requests at once, try again shortly",
                           **{"Retry-After": "1"}) from None
        try:
            return await asyncio.get_running_loop().run_in_executor(state.executor, fn)
        finally:
            state.semaphore.release()

    def decode(data: bytes, name: str, reduce=None) -> tuple[np.ndarray, tuple[float, float]]:
        """The upload at no more than work_pixels (a JPEG shrunk as ``reduce`` allows), and
        the factors back to its full size."""
        try:
            rgb, scale = decode_upload(data, settings.max_pixels, settings.work_pixels, name,
                                       reduce)
        except ImageError as exc:
            raise _problem(422, _server_words(str(exc))) from None
        if scale != (1.0, 1.0):
            _trim_memory()  # hand the big decode buffers back to the system
        return rgb, scale

    async def read_image(request: Request) -> tuple[bytes, str]:
        upload = await _receive_upload(request, settings.max_upload_bytes, "upload",
                                       settings.body_timeout_s)
        if not _allowed(upload.content_type, upload.filename, "image", IMAGE_SUFFIXES):
            raise _problem(415, f"{upload.filename}: expected an image (JPEG, PNG, ...), got "
                           f"{upload.content_type.split(';')[0] or 'no content type'}")
        try:
            data = await _upload_bytes(upload)
        finally:
            await upload.close()
        if not data:
            raise _problem(422, f"{upload.filename}: empty file (0 bytes)")
        return data, Path(upload.filename).name

    api = APIRouter(prefix="/api", dependencies=[Depends(check_key)], tags=["api"])
    # the error answers both image routes document
    image_errors = error_responses(408, 413, 415, 422, 503)
    image_media = ["image/jpeg", "image/png", "image/webp"]

    @api.post(
        "/detect",
        response_model=DetectResponse,
        summary="Find faces in an image and label their masks",
        description="Send an image as multipart field `file`, or as the raw body with an "
        "image content type. Returns every face with box, label and scores.",
        openapi_extra=_multipart_schema("the image", image_media),
        responses=image_errors,
    )
    async def detect(
        request: Request,
        threshold: float | None = Query(
            None, ge=0.0, le=1.0, allow_inf_nan=False, description="call a face "
            "without_mask when its probability reaches this, for this request only "
            "(default: the server's threshold)"),
    ) -> dict:
        data, name = await read_image(request)

        def work() -> dict:
            det = state.detector
            if isinstance(det, Detector):  # read no larger than detection needs
                rgb, (sx, sy) = decode(data, name, det.reduction())

                def reread(wanted: float):  # finer, for faces too small to classify well
                    return decode_upload(data, settings.max_pixels, settings.work_pixels,
                                         name, lambda w, h: wanted)

                faces = det.detect(rgb, check_bgr=False, scale=(sx, sy), source=reread)
                found_scale = (1.0, 1.0)  # boxes already in the upload's pixels
            else:
                rgb, (sx, sy) = decode(data, name)
                faces, found_scale = detect_decoded(det, rgb), (sx, sy)
            classes = list(state.classifier.classes)
            if threshold is not None:
                faces = _relabel(faces, classes, threshold)
            records = _scale_boxes(_face_records(faces), *found_scale)
            width, height = round(rgb.shape[1] * sx), round(rgb.shape[0] * sy)
            return {"faces": records, "width": width, "height": height,
                    "counts": _counts(records, classes)}

        return await run_limited(work)

    @api.post(
        "/classify",
        response_model=ClassifyResponse,
        summary="Classify one face crop",
        description="Send an image that is a single face (already cropped); returns whether it "
        "wears a mask. No face detection is done.",
        openapi_extra=_multipart_schema("a face crop", image_media),
        responses=image_errors,
    )
    async def classify(request: Request) -> dict:
        data, name = await read_image(request)

        def work() -> dict:
            pred = state.classifier.classify([decode(data, name)[0]])[0]
            return {"label": pred.label, "score": float(pred.score),
                    "scores": {k: float(v) for k, v in pred.scores.items()}}

        return await run_limited(work)

    def known_job(lookup: Callable[[str], Job | None] | None, job_id: str) -> Job:
        """The job ``lookup`` finds, or 404."""
        job = lookup(job_id) if lookup else None
        if job is None:
            raise _problem(404, "no such job (finished jobs are kept for a limited time)")
        return job

    def job_status(job: Job, request: Request) -> dict:
        done = job.status == DONE
        return {
            "id": job.id, "status": job.status, "progress": round(job.progress(), 4),
            "frames_done": job.frames_done, "frames_total": job.frames_total, "fps": job.fps,
            "width": job.width, "height": job.height, "truncated": job.truncated,
            "error": job.error, "counts": job.counts() if done else None,
            "people": job.people if done else None,
            "frames": job.records if done else None,
            "video_url": str(request.url_for("job_video", job_id=job.id).path) if done else None,
        }

    @api.post(
        "/video",
        response_model=JobCreated,
        status_code=202,
        summary="Start a video job",
        description="Upload a video (multipart field `file`, or the raw body with a video "
        "content type). Faces are found in every frame in the background; poll "
        "`GET /api/jobs/{id}` for progress, per-frame records and the annotated MP4.",
        openapi_extra=_multipart_schema("the video", ["video/mp4", "video/webm"]),
        responses=error_responses(408, 413, 415, 422, 503, 507),
    )
    async def video(
        request: Request,
        blur: Literal["all", "masked", "unmasked"] | None = Query(
            None, description="blur these faces in the annotated video (default: none)"),
    ) -> dict:
        assert state.jobs is not None
        upload = await _receive_upload(request, settings.max_video_bytes, "upload.mp4",
                                       settings.body_timeout_s)
        if not _allowed(upload.content_type, upload.filename, "video", VIDEO_SUFFIXES):
            raise _problem(415, f"{upload.filename}: expected a video (MP4, WebM, ...), got "
                           f"{upload.content_type.split(';')[0] or 'no content type'}")
        suffix = Path(upload.filename).suffix.lower()
        suffix = suffix if suffix in VIDEO_SUFFIXES else ".mp4"
        try:
            job = state.jobs.new_job(Path(upload.filename).name, suffix)
        except JobsBusy as exc:
            raise _problem(503, str(exc), **{"Retry-After": "5"}) from None
        job.blur = blur
        try:
            data = await _upload_bytes(upload) if upload.data is not None else None
            if data is not None:
                await asyncio.to_thread(job.input_path.write_bytes, data)
            else:
                assert upload.file is not None
                await asyncio.to_thread(_copy_file, upload.file.file, job.input_path)
            if job.input_path.stat().st_size == 0:
                raise _problem(422, f"{upload.filename}: empty file (0 bytes)")
            name = Path(upload.filename).name
            try:  # the budget, from the container's header, before the job is queued
                facts = await asyncio.to_thread(probe_video, job.input_path, name)
                check_budget(facts, name, settings.max_video_frames, settings.max_pixels,
                             settings.video_budget)
            except OverBudget as exc:
                raise _problem(413, str(exc)) from None
            except MaskwatchError as exc:
                raise _problem(422, _server_words(str(exc))) from None
        except BaseException:
            state.jobs.discard(job)
            raise
        finally:
            await upload.close()
        state.jobs.start(job)
        return {"id": job.id, "status": job.status,
                "url": str(request.url_for("job_status", job_id=job.id).path)}

    @api.get("/jobs/{job_id}", response_model=JobStatus, name="job_status",
             summary="Progress and results of a video job",
             responses=error_responses(404, 422))
    async def get_job(job_id: str, request: Request) -> dict:
        return job_status(known_job(state.jobs.get if state.jobs else None, job_id), request)

    @api.delete("/jobs/{job_id}", response_model=JobStatus, name="job_delete",
                summary="Cancel a video job and delete its files",
                description="A queued job is dropped, a running one stops at its next frame "
                "(both then read `cancelled`); the upload and the annotated video are deleted. "
                "A finished job is forgotten: the answer says `deleted`, later requests get "
                "404.",
                responses=error_responses(404, 422))
    async def delete_job(job_id: str, request: Request) -> dict:
        return job_status(known_job(state.jobs.cancel if state.jobs else None, job_id),
                          request)

    @api.get("/jobs/{job_id}/video", name="job_video", response_class=FileResponse,
             summary="The annotated H.264 MP4 of a finished job",
             responses={200: {"content": {"video/mp4": {}}}, **error_responses(404, 409, 422)})
    async def get_job_video(job_id: str) -> FileResponse:
        job = state.jobs.get(job_id) if state.jobs else None
        if job is None:
            raise _problem(404, "no such job")
        if job.status != DONE or not job.output_path.exists():
            raise _problem(409, f"job is {job.status}, the video is not ready")
        stem = Path(job.filename).stem or "video"
        return FileResponse(job.output_path, media_type="video/mp4",
                            filename=f"{stem}-maskwatch.mp4")

    @api.get("/model", response_model=ModelResponse, summary="The loaded model and limits",
             responses=error_responses())
    async def model_info() -> dict:
        clf = state.classifier
        info = clf.info
        return {
            "name": info.name,
            "classes": list(clf.classes),
            "threshold": info.threshold,
            "input_size": info.input_size,
            "detector": state.detector.face_detector.name,
            "site": asdict(state.detector.site) if state.detector.site else None,
            "limits": {
                "max_upload_mb": settings.max_upload_mb,
                "max_video_mb": settings.max_video_mb,
                "max_pixels": settings.max_pixels,
                "work_pixels": settings.work_pixels,
                "max_concurrency": settings.max_concurrency,
                "max_video_frames": settings.max_video_frames,
                "video_budget_mpx": settings.video_budget_mpx,
                "api_key_required": bool(settings.api_key),
            },
            "versions": {
                "maskwatch": __version__,
                "python": platform.python_version(),
                "numpy": _version("numpy"),
                "onnxruntime": _version("onnxruntime"),
                "opencv": _version("opencv-python-headless"),
                "fastapi": _version("fastapi"),
                "torch": _version("torch"),
            },
        }

    if settings.db:
        from maskwatch.serving.dashboard import add_dashboard

        add_dashboard(app, api, settings.db, settings.snapshots_dir)
    app.include_router(api)

    @app.get("/healthz", response_model=Health, tags=["meta"], summary="Liveness check")
    async def healthz() -> dict:
        if not state.ready:
            raise _problem(503, "starting")
        return {"status": "ok", "version": __version__}

    @app.head("/healthz", include_in_schema=False)
    async def healthz_head() -> Response:
        """The liveness check without a body (load balancers' HEAD probes)."""
        return Response(status_code=200 if state.ready else 503)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        html = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
        return HTMLResponse(html, headers={
            "Content-Security-Policy": (
                "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
                "style-src 'self'; script-src 'self'; connect-src 'self'; object-src 'none'; "
                "base-uri 'none'; frame-ancestors 'none'"
            ),
            "Cache-Control": "no-cache",
        })

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    add_page_routes(app, lambda: getattr(state.detector, "face_detector", None))

    host_names = settings.host_names()

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        refusal = _refusal(request, host_names, keyless=not settings.api_key)
        response = (JSONResponse({"detail": refusal}, status_code=403) if refusal
                    else await call_next(request))
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        return response

    @app.exception_handler(MaskwatchError)
    async def maskwatch_error(request: Request, exc: MaskwatchError) -> JSONResponse:
        return JSONResponse({"detail": _server_words(str(exc))}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def bad_parameter(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = next(iter(exc.errors()), {})
        loc = tuple(str(p) for p in first.get("loc", ()))
        rule = PARAMETER_RULES.get(loc)
        msg = f"{rule}, got {first.get('input')!r}" if rule else first.get("msg", "invalid")
        return JSONResponse({"detail": f"{'.'.join(loc)}: {msg}"}, status_code=422)

    @app.exception_handler(OSError)
    async def disk_error(request: Request, exc: OSError) -> JSONResponse:
        log.error("%s %s: %s", request.method, request.url.path, exc)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return JSONResponse({"detail": "the server's disk is full; try again later"},
                                status_code=507)
        return JSONResponse({"detail": "the server could not read or write a file"},
                            status_code=500)

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": f"internal server error ({type(exc).__name__})"},
                            status_code=500)

    base_openapi = app.openapi

    def openapi() -> dict:
        schema = base_openapi()
        if not settings.api_key:  # a keyless server: the key is optional on every route
            for ops in schema.get("paths", {}).values():
                for op in ops.values():
                    if "security" in op and {} not in op["security"]:
                        op["security"].append({})
        return schema

    app.openapi = openapi  # type: ignore[method-assign]

    return app


def _scale_boxes(records: list[dict], sx: float, sy: float) -> list[dict]:
    """Boxes found in a shrunk decode, in the uploaded image's pixels."""
    if (sx, sy) == (1.0, 1.0):
        return records
    for rec in records:
        x1, y1, x2, y2 = rec["box"]
        rec["box"] = [round(x1 * sx), round(y1 * sy), round(x2 * sx), round(y2 * sy)]
    return records


def _trim_memory() -> None:
    """Return freed heap to the system (glibc keeps it otherwise); a no-op elsewhere."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _split_host(value: str) -> tuple[str, str]:
    """``host[:port]`` (IPv6 in brackets) -> (lower-case host, port or "")."""
    value = value.strip().lower()
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        return host, rest.lstrip(":")
    host, _, port = value.partition(":") if value.count(":") == 1 else (value, "", "")
    return host, port


def _refusal(request: Request, host_names: set[str] | None, keyless: bool) -> str | None:
    """Why a request is refused (403), or None: an unknown Host name (DNS rebinding), or a
    browser's cross-site POST/DELETE to a server without a key."""
    host_header = request.headers.get("host")
    if host_names is not None and host_header is not None:
        if _split_host(host_header)[0] not in host_names:
            return (f"unknown Host {host_header!r}: this server answers to "
                    + ", ".join(sorted(host_names)) + " (maskwatch serve --allowed-host)")
    if not keyless or request.method in ("GET", "HEAD", "OPTIONS"):
        return None
    site = request.headers.get("sec-fetch-site", "").lower()
    origin = request.headers.get("origin")
    cross = site in ("cross-site", "same-site")
    if origin is not None and not cross:
        from urllib.parse import urlsplit

        parts = urlsplit(origin)
        own = _split_host(host_header or "")
        try:
            port = str(parts.port or "")
        except ValueError:
            port = "?"
        cross = origin == "null" or (
            (parts.hostname or "").lower(), port or "") != (own[0], own[1] or "")
    if cross:
        return ("cross-site request refused: this server has no API key, so only its own "
                "page may post to it")
    return None


def _copy_file(src, dest: Path) -> None:
    import shutil

    src.seek(0)
    with open(dest, "wb") as out:
        shutil.copyfileobj(src, out, 1024 * 1024)


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` exposes the server only to this machine."""
    import ipaddress

    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


__all__ = ["Settings", "create_app", "is_loopback"]
