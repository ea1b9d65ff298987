"""The watch history on the web: ``/dashboard`` and ``/api/events``, ``/api/stats``.

:func:`add_dashboard` adds them to the app of :mod:`maskwatch.serving.app` when it has a
database (``maskwatch serve --db PATH``); the API routes go on the app's ``/api`` router, so
they follow the same API-key rule as the other ``/api`` routes.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI, HTTPException, Query
from fastapi.responses import FileResponse, HTMLResponse
from pydantic import BaseModel, ConfigDict, Field

from maskwatch.monitoring.store import BUCKETS, MAX_LIMIT, Store, parse_time

STATIC_DIR = Path(__file__).with_name("static")
PAGE_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


class EventRecord(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: int
    source: str = Field(description="the source's name")
    track_id: int = Field(description="the person's track id within that source's watch")
    label: str | None = Field(description="the track's majority label (null: faces only)")
    first_seen: str = Field(description="ISO 8601 UTC")
    last_seen: str = Field(description="ISO 8601 UTC")
    frames: int = Field(description="frames the person was seen in")
    score: float | None = Field(description="mean classifier probability of the label")
    duration_s: float
    snapshot_url: str | None = Field(description="the event's snapshot (when kept)")


class EventsResponse(BaseModel):
    events: list[EventRecord] = Field(description="latest (by last_seen) first")


class StatsResponse(BaseModel):
    model_config = ConfigDict(extra="allow")
    bucket: str
    since: str
    until: str
    classes: list[str]
    sources: list[str]
    series: list[dict] = Field(description="per bucket start and source: people per label "
                               "(events by first_seen), faces per label (face-frames from the "
                               "minute counts) and compliance (with_mask share of people)")
    totals: dict[str, int] = Field(description="people per label over the period")
    per_source: dict[str, dict[str, int]]
    compliance: float | None


class Dashboard:
    """Reads the store for the routes; knows where snapshots may be served from."""

    def __init__(self, db: str, snapshots_dir: Path | None = None):
        self.store = Store(db, create=False)
        root = snapshots_dir or self.store.get_meta("snapshots_dir")
        self.snapshots_dir = Path(root).resolve() if root else None

    def snapshot_path(self, event: dict) -> Path | None:
        """The event's snapshot file, if it lies under the snapshot folder and exists."""
        if not event.get("snapshot") or self.snapshots_dir is None:
            return None
        path = Path(event["snapshot"]).resolve()
        if (path.suffix.lower() != ".jpg" or not path.is_relative_to(self.snapshots_dir)
                or not path.is_file()):
            return None
        return path

    def public(self, event: dict) -> dict:
        out = {k: v for k, v in event.items() if k != "snapshot"}
        path = self.snapshot_path(event)
        out["snapshot_url"] = f"/api/events/{event['id']}/snapshot" if path else None
        return out


def add_dashboard(app: FastAPI, api: APIRouter, db: str,
                  snapshots_dir: Path | None = None) -> Dashboard:
    """Add ``/dashboard`` to ``app`` and the event routes to ``api`` (include ``api`` in the
    app after this call)."""
    board = Dashboard(db, snapshots_dir)

    def _time(value: str | None, name: str) -> float | None:
        from maskwatch.errors import MaskwatchError

        try:
            return parse_time(value, name)
        except MaskwatchError as exc:
            raise HTTPException(422, str(exc)) from None

    @api.get("/events", response_model=EventsResponse, tags=["watch"],
             summary="Stored events (one per tracked person), latest first")
    def events(
        since: str | None = Query(None, description="ISO 8601 or epoch seconds: events that "
                                  "were still in view then or later"),
        until: str | None = Query(None, description="events that began before this"),
        source: str | None = Query(None, description="only this source"),
        label: str | None = Query(None, description="only this label, e.g. without_mask"),
        limit: int = Query(100, ge=1, le=MAX_LIMIT),
    ) -> dict:
        rows = board.store.events(_time(since, "since"), _time(until, "until"), source, label,
                                  limit)
        return {"events": [board.public(r) for r in rows]}

    @api.get("/stats", response_model=StatsResponse, tags=["watch"],
             summary="People and faces per label and source, per minute, hour or day")
    def stats(
        bucket: str = Query("hour", pattern="^(" + "|".join(BUCKETS) + ")$"),
        since: str | None = Query(None, description="default: 60 minutes, 24 hours or 30 "
                                  "days before `until`"),
        until: str | None = Query(None, description="default: now"),
        source: str | None = Query(None),
    ) -> dict:
        return board.store.stats(bucket, _time(since, "since"), _time(until, "until"), source)

    @api.get("/events/{event_id}/snapshot", response_class=FileResponse, tags=["watch"],
             summary="The JPEG snapshot of one event (when kept)",
             responses={200: {"content": {"image/jpeg": {}}}, 404: {"description": "none"}})
    def snapshot(event_id: int) -> FileResponse:
        event = board.store.event(event_id)
        path = board.snapshot_path(event) if event else None
        if path is None:
            raise HTTPException(404, "no snapshot for this event")
        return FileResponse(path, media_type="image/jpeg",
                            headers={"Cache-Control": "private, max-age=86400"})

    @app.get("/dashboard", response_class=HTMLResponse, include_in_schema=False)
    def dashboard() -> HTMLResponse:
        html = (STATIC_DIR / "dashboard.html").read_text(encoding="utf-8")
        return HTMLResponse(html, headers={"Content-Security-Policy": PAGE_CSP,
                                           "Cache-Control": "no-cache"})

    return board
