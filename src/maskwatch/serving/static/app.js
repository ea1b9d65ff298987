// maskwatch web page: live camera detection, snapshot, image and video upload.
// Plain browser JavaScript, no build step. Talks to the JSON API under /api.
"use strict";

(() => {
  const FRAME_INTERVAL_MS = 200; // steady send rate: at most 5 frames a second
  const MAX_SEND_SIDE = 640; // camera frames are scaled down to this long side before sending
  const JPEG_QUALITY = 0.8;
  const POLL_MS = 700;
  const COLOURS = {
    with_mask: "#00c846",
    without_mask: "#e61e1e",
    incorrect_mask: "#ffb000",
  };
  const NAMES = {
    with_mask: "With mask",
    without_mask: "Without mask",
    incorrect_mask: "Mask worn wrongly",
  };
  const SHORT = { with_mask: "mask", without_mask: "no mask", incorrect_mask: "worn wrongly" };

  const $ = (id) => document.getElementById(id);
  const state = {
    apiKey: sessionStorage.getItem("maskwatch-api-key") || "",
    classes: ["with_mask", "without_mask"],
    stream: null,
    timer: null,
    inFlight: false,
    faces: [],
    frames: 0,
    lastMs: null,
    snapUrl: null,
    imageUrl: null,
    videoUrl: null,
  };

  // ------------------------------------------------------------------ API

  class ApiError extends Error {
    constructor(message, status) {
      super(message);
      this.status = status;
    }
  }

  async function api(path, options = {}) {
    const headers = new Headers(options.headers || {});
    if (state.apiKey) headers.set("X-API-Key", state.apiKey);
    let response;
    try {
      response = await fetch(path, { ...options, headers });
    } catch (err) {
      throw new ApiError("The server cannot be reached. Is `maskwatch serve` still running?", 0);
    }
    if (response.status === 401) showKeyForm();
    const type = response.headers.get("content-type") || "";
    const body = type.includes("json") ? await response.json() : null;
    if (!response.ok) {
      const detail = body && body.detail;
      const text = typeof detail === "string" ? detail : `${response.status} ${response.statusText}`;
      throw new ApiError(text, response.status);
    }
    return body;
  }

  function showKeyForm() {
    const form = $("key-form");
    if (!form.hidden) return;
    form.hidden = false;
    $("key-input").focus();
  }

  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.apiKey = $("key-input").value.trim();
    sessionStorage.setItem("maskwatch-api-key", state.apiKey);
    $("key-form").hidden = true;
    loadModel();
  });

  async function loadModel() {
    try {
      const info = await api("/api/model");
      if (info.classes && info.classes.length) state.classes = info.classes;
      const parts = [`Model: ${info.name || "unnamed"}`];
      if (info.detector) parts.push(`face detector: ${info.detector}`);
      if (info.threshold != null) parts.push(`no-mask threshold: ${info.threshold}`);
      $("model-line").textContent = parts.join(" · ");
      const v = info.versions || {};
      $("versions").textContent = `maskwatch ${v.maskwatch || ""}`;
      renderCounts($("live-counts"), []);
    } catch (err) {
      $("model-line").textContent = `Model information unavailable: ${err.message}`;
    }
  }

  // ------------------------------------------------------------------ drawing

  function countFaces(faces) {
    const counts = {};
    for (const c of state.classes) counts[c] = 0;
    for (const f of faces) counts[f.label] = (counts[f.label] || 0) + 1;
    return counts;
  }

  function renderCounts(dl, faces, counts) {
    counts = counts || countFaces(faces);
    dl.replaceChildren();
    for (const [label, n] of Object.entries(counts)) {
      if (label === "total" || label === "max_faces_in_frame") continue;
      const item = document.createElement("div");
      item.className = label;
      item.dataset.label = label;
      const dt = document.createElement("dt");
      dt.textContent = NAMES[label] || (label === "null" ? "Unclassified" : label);
      const dd = document.createElement("dd");
      dd.textContent = String(n);
      item.append(dt, dd);
      dl.append(item);
    }
  }

  // Draw boxes for faces whose coordinates are in a (srcW x srcH) image onto ctx,
  // scaled to the canvas size.
  function drawFaces(ctx, faces, srcW, srcH) {
    const sx = ctx.canvas.width / srcW;
    const sy = ctx.canvas.height / srcH;
    const base = Math.max(ctx.canvas.width, ctx.canvas.height);
    const line = Math.max(2, Math.round(base / 320));
    const fontPx = Math.max(12, Math.round(base / 55));
    ctx.font = `600 ${fontPx}px system-ui, sans-serif`;
    ctx.textBaseline = "top";
    for (const f of faces) {
      const [x1, y1, x2, y2] = f.box;
      const x = x1 * sx;
      const y = y1 * sy;
      const w = (x2 - x1) * sx;
      const h = (y2 - y1) * sy;
      const colour = COLOURS[f.label] || "#a0a0a0";
      ctx.lineWidth = line;
      ctx.strokeStyle = colour;
      ctx.strokeRect(x, y, w, h);
      let text = f.label ? SHORT[f.label] || f.label : "face";
      if (f.score != null) text += ` ${Number(f.score).toFixed(2)}`;
      const pad = Math.round(fontPx / 4);
      const tw = ctx.measureText(text).width + 2 * pad;
      const th = fontPx + 2 * pad;
      const tx = Math.min(Math.max(0, x), Math.max(0, ctx.canvas.width - tw));
      const ty = y - th >= 0 ? y - th : Math.min(y + h, ctx.canvas.height - th);
      ctx.fillStyle = colour;
      ctx.fillRect(tx, ty, tw, th);
      ctx.fillStyle = f.label === "incorrect_mask" || f.label === "with_mask" ? "#000" : "#fff";
      ctx.fillText(text, tx + pad, ty + pad);
    }
  }

  // ------------------------------------------------------------------ live camera

  const video = $("cam-video");
  const overlay = $("cam-overlay");
  const grab = document.createElement("canvas");
  const live = $("live");

  function cameraMessage(text) {
    const el = $("cam-message");
    el.textContent = text;
    el.hidden = !text;
  }

  function explainCameraError(err) {
    const name = (err && err.name) || "";
    if (name === "NotAllowedError" || name === "SecurityError" || name === "PermissionDeniedError") {
      return "Camera access was refused. Allow the camera for this site in the browser's " +
        "settings and press Start camera again, or upload an image or a video below.";
    }
    if (name === "NotFoundError" || name === "DevicesNotFoundError" || name === "OverconstrainedError") {
      return "No camera was found. Connect one and press Start camera again, or upload an " +
        "image or a video below.";
    }
    if (name === "NotReadableError" || name === "TrackStartError") {
      return "The camera is busy or could not be started (another app may be using it).";
    }
    return `The camera could not be started (${name || "unknown error"}: ${err && err.message}).`;
  }

  async function startCamera() {
    cameraMessage("");
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      cameraMessage("This browser cannot open a camera on this page. Cameras work only on " +
        "secure pages (https, or http://localhost / 127.0.0.1). Upload an image or video instead.");
      live.dataset.state = "error";
      return;
    }
    $("cam-start").disabled = true;
    try {
      state.stream = await navigator.mediaDevices.getUserMedia({
        video: { width: { ideal: 1280 }, height: { ideal: 720 } },
        audio: false,
      });
    } catch (err) {
      $("cam-start").disabled = false;
      live.dataset.state = "error";
      cameraMessage(explainCameraError(err));
      return;
    }
    video.srcObject = state.stream;
    await video.play().catch(() => {});
    live.dataset.state = "live";
    $("cam-stop").disabled = false;
    $("snap").disabled = false;
    state.timer = setInterval(sendFrame, FRAME_INTERVAL_MS);
    requestAnimationFrame(paintOverlay);
  }

  function stopCamera() {
    clearInterval(state.timer);
    state.timer = null;
    if (state.stream) state.stream.getTracks().forEach((t) => t.stop());
    state.stream = null;
    video.srcObject = null;
    state.faces = [];
    live.dataset.state = "idle";
    live.dataset.faces = "0";
    renderCounts($("live-counts"), []);
    $("live-rate").textContent = "";
    $("cam-start").disabled = false;
    $("cam-stop").disabled = true;
    $("snap").disabled = true;
  }

  // Called on a steady timer; skips the tick while a request is in flight, so requests
  // never queue up behind a slow server.
  function sendFrame() {
    if (!state.stream || state.inFlight || video.readyState < 2 || !video.videoWidth) return;
    const vw = video.videoWidth;
    const vh = video.videoHeight;
    const scale = Math.min(1, MAX_SEND_SIDE / Math.max(vw, vh));
    grab.width = Math.round(vw * scale);
    grab.height = Math.round(vh * scale);
    grab.getContext("2d").drawImage(video, 0, 0, grab.width, grab.height);
    state.inFlight = true;
    const started = performance.now();
    grab.toBlob(async (blob) => {
      try {
        if (!blob) throw new ApiError("could not capture a frame", 0);
        const result = await api("/api/detect", {
          method: "POST",
          headers: { "Content-Type": "image/jpeg" },
          body: blob,
        });
        // boxes come back in the sent frame's pixels; keep them in video pixels
        const k = vw / result.width;
        state.faces = result.faces.map((f) => ({ ...f, box: f.box.map((v) => v * k) }));
        state.frames += 1;
        state.lastMs = performance.now() - started;
        live.dataset.faces = String(state.faces.length);
        live.dataset.frames = String(state.frames);
        renderCounts($("live-counts"), state.faces);
        $("live-rate").textContent = `${Math.round(state.lastMs)} ms per frame`;
        if (!$("cam-message").hidden && $("cam-message").dataset.kind === "api") cameraMessage("");
      } catch (err) {
        if (err.status !== 503) { // busy: just skip this frame
          cameraMessage(`Detection failed: ${err.message}`);
          $("cam-message").dataset.kind = "api";
        }
      } finally {
        state.inFlight = false;
      }
    }, "image/jpeg", JPEG_QUALITY);
  }

  function paintOverlay() {
    if (!state.stream) {
      overlay.getContext("2d").clearRect(0, 0, overlay.width, overlay.height);
      return;
    }
    const vw = video.videoWidth;
    const vh = video.videoHeight;
    if (vw && vh) {
      // the stage takes the video's aspect ratio, so video and overlay cover the same box;
      // the overlay is drawn at screen resolution for crisp lines and text
      const ratio = `${vw} / ${vh}`;
      if (live.style.aspectRatio !== ratio) live.style.aspectRatio = ratio;
      const dpr = window.devicePixelRatio || 1;
      const cw = Math.round(live.clientWidth * dpr);
      const ch = Math.round(live.clientHeight * dpr);
      if (overlay.width !== cw || overlay.height !== ch) {
        overlay.width = cw;
        overlay.height = ch;
      }
      const ctx = overlay.getContext("2d");
      ctx.clearRect(0, 0, cw, ch);
      drawFaces(ctx, state.faces, vw, vh);
    }
    requestAnimationFrame(paintOverlay);
  }

  function snapshot() {
    const vw = video.videoWidth;
    const vh = video.videoHeight;
    if (!vw) return;
    const canvas = document.createElement("canvas");
    canvas.width = vw;
    canvas.height = vh;
    const ctx = canvas.getContext("2d");
    ctx.drawImage(video, 0, 0, vw, vh);
    drawFaces(ctx, state.faces, vw, vh);
    canvas.toBlob((blob) => {
      if (state.snapUrl) URL.revokeObjectURL(state.snapUrl);
      state.snapUrl = URL.createObjectURL(blob);
      $("snap-img").src = state.snapUrl;
      const stamp = new Date().toISOString().replace(/[:.]/g, "-").slice(0, 19);
      $("snap-download").href = state.snapUrl;
      $("snap-download").download = `maskwatch-snapshot-${stamp}.png`;
      $("snap-figure").hidden = false;
    }, "image/png");
  }

  $("cam-start").addEventListener("click", startCamera);
  $("cam-stop").addEventListener("click", stopCamera);
  $("snap").addEventListener("click", snapshot);

  // ------------------------------------------------------------------ image upload

  function message(id, text, info = false) {
    const el = $(id);
    el.textContent = text || "";
    el.hidden = !text;
    el.classList.toggle("info", info);
  }

  $("image-input").addEventListener("change", async () => {
    const file = $("image-input").files[0];
    if (!file) return;
    message("image-message", "Checking the image…", true);
    $("image-counts").hidden = true;
    const form = new FormData();
    form.append("file", file, file.name);
    try {
      const result = await api("/api/detect", { method: "POST", body: form });
      if (state.imageUrl) URL.revokeObjectURL(state.imageUrl);
      state.imageUrl = URL.createObjectURL(file);
      const img = new Image();
      img.src = state.imageUrl;
      await img.decode();
      const canvas = $("image-canvas");
      canvas.width = result.width;
      canvas.height = result.height;
      const ctx = canvas.getContext("2d");
      ctx.drawImage(img, 0, 0, result.width, result.height);
      drawFaces(ctx, result.faces, result.width, result.height);
      canvas.hidden = false;
      canvas.dataset.faces = String(result.faces.length);
      renderCounts($("image-counts"), result.faces, result.counts);
      $("image-counts").hidden = false;
      message("image-message", result.faces.length ? "" : "No face was found in this image.",
        true);
    } catch (err) {
      $("image-canvas").hidden = true;
      message("image-message", err.message);
    }
  });

  // ------------------------------------------------------------------ video upload

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  $("video-input").addEventListener("change", async () => {
    const file = $("video-input").files[0];
    if (!file) return;
    const input = $("video-input");
    input.disabled = true;
    message("video-message", "");
    $("video-result").hidden = true;
    $("video-download").hidden = true;
    $("video-counts").hidden = true;
    $("video-progress-row").hidden = false;
    $("video-progress").value = 0;
    $("video-status").textContent = "Uploading…";
    try {
      const form = new FormData();
      form.append("file", file, file.name);
      const job = await api("/api/video", { method: "POST", body: form });
      let status;
      for (;;) {
        status = await api(job.url);
        $("video-progress").value = status.progress;
        const total = status.frames_total ? ` of ${status.frames_total}` : "";
        $("video-status").textContent = status.status === "queued"
          ? "Waiting for a free worker…"
          : `${status.frames_done}${total} frames`;
        if (!["queued", "running"].includes(status.status)) break;
        await sleep(POLL_MS);
      }
      if (status.status !== "done") throw new ApiError(status.error || `job ${status.status}`, 0);
      $("video-status").textContent = `Done: ${status.frames_done} frames` +
        (status.truncated ? " (cut at the frame limit)" : "");
      let src = status.video_url;
      if (state.apiKey) { // <video> cannot send the key header: fetch it as a blob
        const response = await fetch(status.video_url, { headers: { "X-API-Key": state.apiKey } });
        if (!response.ok) throw new ApiError(`video download failed (${response.status})`, 0);
        if (state.videoUrl) URL.revokeObjectURL(state.videoUrl);
        state.videoUrl = URL.createObjectURL(await response.blob());
        src = state.videoUrl;
      }
      const player = $("video-result");
      player.src = src;
      player.hidden = false;
      const link = $("video-download");
      link.href = src;
      link.download = `${file.name.replace(/\.[^.]+$/, "")}-maskwatch.mp4`;
      link.hidden = false;
      // people (tracked faces, as `maskwatch detect` counts them), not face-frames
      renderCounts($("video-counts"), [], status.people || {});
      const most = document.createElement("div");
      most.innerHTML = "<dt>Most faces in one frame</dt><dd></dd>";
      most.querySelector("dd").textContent = String(status.counts.max_faces_in_frame);
      $("video-counts").append(most);
      $("video-counts").hidden = false;
    } catch (err) {
      $("video-progress-row").hidden = true;
      message("video-message", err.message);
    } finally {
      input.disabled = false;
    }
  });

  loadModel();
})();
