// maskwatch web page: live camera detection, snapshot, image and video upload.
// Plain browser JavaScript, no build step. Talks to the JSON API under /api.
"use strict";

(() => {
  const FRAME_INTERVAL_MS = 200; // steady send rate: at most 5 frames a second
  const MAX_SEND_SIDE = 640; // camera frames are scaled down to this long side before sending
  const JPEG_QUALITY = 0.8;
  // Waits of the video polling and of the server watch; tests shorten them by setting
  // window.maskwatchTiming before the page loads.
  const TIMING = {
    pollMs: 700, // between two status requests of a running video job
    retryMs: 1000, // first pause after a failed status request; doubles up to retryMaxMs
    retryMaxMs: 5000,
    retryForMs: 30000, // failed status requests in a row for this long: stop following
    healthMs: 3000, // between two /healthz checks while the server cannot be reached
    ...(window.maskwatchTiming || {}),
  };
  const UNREACHABLE = "The server cannot be reached. Is `maskwatch serve` still running?";
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
  // the same captions as the CLI's drawings (maskwatch.detection.draw)
  const SHORT = { with_mask: "mask", without_mask: "no mask", incorrect_mask: "worn wrongly" };
  const PLACES = ["above", "below", "inside-top", "inside-bottom"];
  const BLUR_MARGIN = 0.15; // fraction of the face box added on each side when blurring
  const LIVE_BLUR_MARGIN = 0.3; // more on the live view: boxes lag a moving face a little
  const MIN_LABEL_CSS_PX = 12; // smallest caption, in CSS pixels whatever the screen density

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
    downloadUrl: null,
    threshold: null, // null: the server's; set once the user moves the slider
    blur: false,
    lastImage: null, // the last checked image file, re-checked when the threshold changes
    imageCheck: 0, // number of the latest image check: an older one's answer is dropped
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
      throw new ApiError(UNREACHABLE, 0);
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
    if (state.apiKey) {
      message("key-message", "The server refused this key. Check it and enter it again.");
    }
    if (!form.hidden) return;
    form.hidden = false;
    $("key-input").focus();
    $("key-input").select();
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
      if (info.threshold != null) {
        parts.push(`no-mask threshold: ${info.threshold}`);
        $("threshold").value = String(info.threshold);
        $("threshold-value").textContent = Number(info.threshold).toFixed(2);
      }
      $("model-line").textContent = parts.join(" · ");
      const v = info.versions || {};
      $("versions").textContent = `maskwatch ${v.maskwatch || ""}`;
      renderCounts($("live-counts"), []);
    } catch (err) {
      $("model-line").textContent = `Model information unavailable: ${err.message}`;
      noticeUnreachable(err.message);
    }
  }

  // ------------------------------------------------------------------ server watch

  // Where UNREACHABLE may show. While it shows, /healthz is asked every few seconds, so the
  // message goes by itself once the server is back, not only at the user's next action.
  const UNREACHABLE_IN = ["model-line", "cam-message", "image-message", "video-message"];
  let serverWatch = null; // the timer of the next /healthz check, while one is due

  function unreachableShown() {
    return UNREACHABLE_IN.map($).filter((el) => !el.hidden && el.textContent.includes(UNREACHABLE));
  }

  // Called with each message shown: starts the watch when the message says UNREACHABLE.
  function noticeUnreachable(text) {
    if (serverWatch || !text || !text.includes(UNREACHABLE)) return;
    serverWatch = setTimeout(checkServerBack, TIMING.healthMs);
  }

  async function checkServerBack() {
    serverWatch = null;
    if (!unreachableShown().length) return; // another message replaced it: nothing to clear
    let up = false;
    try {
      up = (await fetch("/healthz", { cache: "no-store" })).ok; // 503 while it starts
    } catch (err) {
      up = false;
    }
    if (!up) {
      serverWatch = setTimeout(checkServerBack, TIMING.healthMs);
      return;
    }
    for (const el of unreachableShown()) if (el.id !== "model-line") message(el.id, "");
    // as on start: the model line, and the video job this tab was following
    loadModel();
    resumeVideoJob();
  }

  // ------------------------------------------------------------------ drawing

  function countFaces(faces) {
    const counts = {};
    for (const c of state.classes) counts[c] = 0;
    // uncertain face boxes (counted: false) are drawn but not counted
    for (const f of faces) if (f.counted !== false) counts[f.label] = (counts[f.label] || 0) + 1;
    return counts;
  }

  // Classes in the model's order first (as on every card), then anything else.
  function orderedCounts(counts) {
    const keys = [...state.classes, ...Object.keys(counts).filter((k) => !state.classes.includes(k))];
    return keys.filter((k) => k in counts).map((k) => [k, counts[k]]);
  }

  function renderCounts(dl, faces, counts) {
    counts = counts || countFaces(faces);
    dl.replaceChildren();
    for (const [label, n] of orderedCounts(counts)) {
      if (label === "total" || label === "max_faces_in_frame" || label === "uncounted") continue;
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

  // Caption of a face: the label, "maybe" when the model gives it less than even odds
  // (chosen because P(no mask) reached the low threshold), and the label's probability;
  // "?" first for an uncertain face box, which is not counted.
  function labelText(f) {
    let text = f.label ? SHORT[f.label] || f.label : "face";
    if (f.label && f.score != null && f.score < 0.5) text = `maybe ${text}`;
    const score = f.label ? f.score : f.face_score;
    if (score != null) text += ` ${Number(score).toFixed(2)}`;
    if (f.track_id != null) text = `#${f.track_id} ${text}`;
    if (f.counted === false) text = `? ${text}`;
    return text;
  }

  function overlap(a, b) {
    const w = Math.min(a[2], b[2]) - Math.max(a[0], b[0]);
    const h = Math.min(a[3], b[3]) - Math.max(a[1], b[1]);
    return w > 0 && h > 0 ? w * h : 0;
  }

  // Top-left corner of each caption: the first place (above, below, inside the top,
  // inside the bottom of its box; flush left, else flush right) that covers no other face
  // and no caption placed before; else the place covering the least. Same rule as the CLI.
  function placeLabels(boxes, sizes, width, height) {
    const placed = [];
    boxes.forEach(([x1, y1, x2, y2], i) => {
      const [lw, lh] = sizes[i];
      const clamp = (v, hi) => Math.min(Math.max(0, v), Math.max(0, hi));
      let best = null;
      let bestCost = Infinity;
      for (const place of PLACES) {
        const ty = clamp({ above: y1 - lh, below: y2, "inside-top": y1, "inside-bottom": y2 - lh }[place],
          height - lh);
        for (const tx0 of [x1, x2 - lw]) {
          const tx = clamp(tx0, width - lw);
          const rect = [tx, ty, tx + lw, ty + lh];
          let cost = 0;
          boxes.forEach((b, j) => { if (j !== i) cost += overlap(rect, b); });
          for (const r of placed) cost += overlap(rect, r);
          if (cost < bestCost) { best = rect; bestCost = cost; }
          if (cost === 0) break;
        }
        if (bestCost === 0) break;
      }
      placed.push(best);
    });
    return placed;
  }

  // Blur the faces: each box (grown by margin) of `source` (an image or video of
  // srcW x srcH) is shrunk to a 6-cell mosaic and drawn back smoothed inside an ellipse.
  function blurFaces(ctx, source, faces, srcW, srcH, margin) {
    const sx = ctx.canvas.width / srcW;
    const sy = ctx.canvas.height / srcH;
    const tiny = document.createElement("canvas");
    const tctx = tiny.getContext("2d");
    for (const f of faces) {
      const [x1, y1, x2, y2] = f.box;
      const bw = x2 - x1;
      const bh = y2 - y1;
      const rx1 = Math.max(0, x1 - bw * margin);
      const ry1 = Math.max(0, y1 - bh * margin);
      const rw = Math.min(srcW, x2 + bw * margin) - rx1;
      const rh = Math.min(srcH, y2 + bh * margin) - ry1;
      if (rw < 2 || rh < 2) continue;
      tiny.width = 6;
      tiny.height = Math.max(1, Math.round((6 * rh) / rw));
      tctx.drawImage(source, rx1, ry1, rw, rh, 0, 0, tiny.width, tiny.height);
      ctx.save();
      ctx.beginPath();
      ctx.ellipse((rx1 + rw / 2) * sx, (ry1 + rh / 2) * sy, (rw / 2) * sx, (rh / 2) * sy, 0, 0,
        2 * Math.PI);
      ctx.clip();
      ctx.imageSmoothingEnabled = true;
      ctx.imageSmoothingQuality = "high";
      ctx.drawImage(tiny, 0, 0, tiny.width, tiny.height, rx1 * sx, ry1 * sy, rw * sx, rh * sy);
      ctx.restore();
    }
  }

  // Draw boxes and captions for faces whose coordinates are in a (srcW x srcH) image onto
  // ctx, scaled to the canvas size. `k` is canvas pixels per CSS pixel where the canvas is
  // shown, so lines and captions have a readable size on screen: captions grow with the
  // face, from 12 to 18 CSS px. The smallest caption size (CSS px) goes in data-label-px.
  function drawFaces(ctx, faces, srcW, srcH, k = 1) {
    const sx = ctx.canvas.width / srcW;
    const sy = ctx.canvas.height / srcH;
    const boxes = faces.map((f) => [f.box[0] * sx, f.box[1] * sy, f.box[2] * sx, f.box[3] * sy]);
    const captions = faces.map((f, i) => {
      const faceCss = (boxes[i][2] - boxes[i][0]) / k;
      const fontPx = Math.ceil(Math.min(18, Math.max(MIN_LABEL_CSS_PX, faceCss / 8)) * k);
      ctx.font = `600 ${fontPx}px system-ui, sans-serif`;
      const text = labelText(f);
      const pad = Math.round(fontPx / 4);
      return { text, fontPx, pad, size: [ctx.measureText(text).width + 2 * pad, fontPx + 2 * pad] };
    });
    const rects = placeLabels(boxes, captions.map((c) => c.size), ctx.canvas.width,
      ctx.canvas.height);
    ctx.textBaseline = "top";
    faces.forEach((f, i) => {
      const [x1, y1, x2, y2] = boxes[i];
      const colour = COLOURS[f.label] || "#a0a0a0";
      ctx.lineWidth = Math.min(4, Math.max(2, Math.round((x2 - x1) / k / 40))) * k
        / (f.counted === false ? 2 : 1);
      ctx.strokeStyle = colour;
      ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
      const { text, fontPx, pad } = captions[i];
      const [tx, ty, tx2, ty2] = rects[i];
      ctx.fillStyle = colour;
      ctx.fillRect(tx, ty, tx2 - tx, ty2 - ty);
      ctx.font = `600 ${fontPx}px system-ui, sans-serif`;
      ctx.fillStyle = f.label === "incorrect_mask" || f.label === "with_mask" ? "#000" : "#fff";
      ctx.fillText(text, tx + pad, ty + pad);
    });
    const smallest = Math.min(...captions.map((c) => c.fontPx / k));
    ctx.canvas.dataset.labelPx = faces.length ? String(Math.round(smallest * 10) / 10) : "";
  }

  // The detect route, with the slider's threshold once the user has moved it.
  function detectUrl() {
    return state.threshold == null ? "/api/detect" : `/api/detect?threshold=${state.threshold}`;
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
    noticeUnreachable(text);
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
        const result = await api(detectUrl(), {
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
      if (state.blur) blurFaces(ctx, video, state.faces, vw, vh, LIVE_BLUR_MARGIN);
      drawFaces(ctx, state.faces, vw, vh, dpr);
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
    if (state.blur) blurFaces(ctx, video, state.faces, vw, vh, LIVE_BLUR_MARGIN);
    // captions sized for the snapshot as shown, about as wide as the live view
    drawFaces(ctx, state.faces, vw, vh, Math.max(1, vw / (live.clientWidth || vw)));
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
    noticeUnreachable(text);
  }

  // Check one image file: boxes drawn over the photo at the card's width (at least the
  // photo's own resolution), counts, and a download of the annotated image.
  async function checkImage(file) {
    const run = ++state.imageCheck;
    if (file !== state.lastImage) { // another image: the last one's result goes
      $("image-canvas").hidden = true;
      $("image-download").hidden = true;
    }
    state.lastImage = file;
    message("image-message", "Checking the image…", true);
    $("image-counts").hidden = true;
    const form = new FormData();
    form.append("file", file, file.name || "pasted.png");
    try {
      const result = await api(detectUrl(), { method: "POST", body: form });
      if (run !== state.imageCheck) return; // a newer check took over
      if (state.imageUrl) URL.revokeObjectURL(state.imageUrl);
      state.imageUrl = URL.createObjectURL(file);
      const img = new Image();
      img.src = state.imageUrl;
      await img.decode();
      if (run !== state.imageCheck) return;
      const canvas = $("image-canvas");
      canvas.hidden = false;
      // shown as wide as the card allows (and at most 80% of the window's height)
      const cardWidth = canvas.parentElement.clientWidth -
        parseFloat(getComputedStyle(canvas.parentElement).paddingLeft) * 2;
      const cssWidth = Math.min(cardWidth, (0.8 * window.innerHeight * result.width) / result.height);
      const dpr = window.devicePixelRatio || 1;
      const scale = Math.max(1, (cssWidth * dpr) / result.width);
      canvas.width = Math.round(result.width * scale);
      canvas.height = Math.round(result.height * scale);
      canvas.style.width = `${cssWidth}px`;
      const ctx = canvas.getContext("2d");
      ctx.fillStyle = "#fff"; // transparent parts on white, as the server reads them
      ctx.fillRect(0, 0, canvas.width, canvas.height);
      ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
      if (state.blur) blurFaces(ctx, img, result.faces, result.width, result.height, BLUR_MARGIN);
      drawFaces(ctx, result.faces, result.width, result.height, canvas.width / cssWidth);
      canvas.dataset.faces = String(result.faces.length);
      // what the boxes say, for screen readers (and the tests)
      canvas.setAttribute("aria-label", result.faces.length
        ? `The image with ${result.faces.length} face(s) boxed: ${result.faces.map(labelText).join("; ")}`
        : "The image: no face found");
      renderCounts($("image-counts"), result.faces, result.counts);
      $("image-counts").hidden = false;
      message("image-message", result.faces.length ? "" : "No face was found in this image.",
        true);
      canvas.toBlob((blob) => {
        if (run !== state.imageCheck) return;
        if (state.downloadUrl) URL.revokeObjectURL(state.downloadUrl);
        state.downloadUrl = URL.createObjectURL(blob);
        const link = $("image-download");
        link.href = state.downloadUrl;
        link.download = `${(file.name || "image").replace(/\.[^.]+$/, "")}-maskwatch.jpg`;
        link.hidden = false;
      }, "image/jpeg", 0.92);
    } catch (err) {
      if (run !== state.imageCheck) return;
      $("image-canvas").hidden = true;
      $("image-download").hidden = true;
      message("image-message", err.message);
    }
  }

  $("image-input").addEventListener("change", () => {
    const file = $("image-input").files[0];
    if (file) checkImage(file);
  });

  $("example").addEventListener("click", async () => {
    try {
      const response = await fetch("/example.jpg").catch(() => {
        throw new ApiError(UNREACHABLE, 0);
      });
      if (!response.ok) throw new ApiError(`example photo unavailable (${response.status})`, 0);
      const blob = await response.blob();
      checkImage(new File([blob], "example.jpg", { type: "image/jpeg" }));
    } catch (err) {
      message("image-message", err.message);
    }
  });

  // A dropped or pasted file goes to the image or the video check, by its type.
  function takeFile(file) {
    if (!file) return false;
    if (file.type.startsWith("image/")) {
      checkImage(file);
      return true;
    }
    if (file.type.startsWith("video/")) {
      checkVideo(file);
      return true;
    }
    message("image-message", `${file.name || "This file"} is not an image or a video.`);
    return false;
  }

  const dropZone = $("image-card");
  dropZone.addEventListener("dragover", (event) => {
    event.preventDefault();
    dropZone.classList.add("dragging");
  });
  dropZone.addEventListener("dragleave", () => dropZone.classList.remove("dragging"));
  dropZone.addEventListener("drop", (event) => {
    event.preventDefault();
    dropZone.classList.remove("dragging");
    takeFile(event.dataTransfer.files[0]);
  });
  document.addEventListener("paste", (event) => {
    const files = [...((event.clipboardData && event.clipboardData.files) || [])];
    const file = files.find((f) => f.type.startsWith("image/") || f.type.startsWith("video/"));
    if (file && takeFile(file)) event.preventDefault();
  });

  // ------------------------------------------------------------------ options

  $("threshold").addEventListener("input", () => {
    $("threshold-value").textContent = Number($("threshold").value).toFixed(2);
  });
  $("threshold").addEventListener("change", () => {
    state.threshold = Number($("threshold").value);
    if (state.lastImage) checkImage(state.lastImage);
  });
  $("blur").addEventListener("change", () => {
    state.blur = $("blur").checked;
    if (state.lastImage) checkImage(state.lastImage);
  });
  $("options").addEventListener("submit", (event) => event.preventDefault());

  // ------------------------------------------------------------------ video upload

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const VIDEO_JOB_KEY = "maskwatch-video-job"; // the running job, picked up after a reload
  // Answers of a server that is restarting or briefly away (no answer at all, or a proxy's
  // bad gateway / unavailable / timeout): the job goes on there, so its polling retries.
  const PASSING = [0, 502, 503, 504];

  // The status of the job at `url`. Passing failures are retried, the pause doubling from
  // retryMs to retryMaxMs, until they have lasted retryForMs; the status line says so
  // meanwhile. A 404 ends at once: the server no longer knows the job.
  async function jobStatus(url) {
    const started = performance.now();
    for (let pause = TIMING.retryMs; ; pause = Math.min(2 * pause, TIMING.retryMaxMs)) {
      try {
        return await api(url);
      } catch (err) {
        if (err.status === 404) {
          throw new ApiError("The server no longer knows this video job (it was restarted, " +
            "or the finished job expired). Choose the video again to check it.", 404);
        }
        if (!PASSING.includes(err.status)) throw err;
        if (performance.now() - started >= TIMING.retryForMs) {
          // the job is kept for the tab: a reload, or the server watch, picks it up again
          const lost = new ApiError(`${UNREACHABLE} The page stopped following the video ` +
            `after ${Math.round(TIMING.retryForMs / 1000)} s without an answer; it picks ` +
            "the job up again when the server is back.", err.status);
          lost.keepJob = true;
          throw lost;
        }
        $("video-status").textContent = "Server not answering, retrying…";
        await sleep(Math.min(pause, Math.max(0, started + TIMING.retryForMs - performance.now())));
      }
    }
  }

  // Upload a video and follow its job; or, with `resumed` ({url, name}), follow a job this
  // tab started before the page was reloaded.
  async function checkVideo(file, resumed = null) {
    const input = $("video-input");
    input.disabled = true;
    message("video-message", "");
    $("video-result").hidden = true;
    $("video-download").hidden = true;
    $("video-counts").hidden = true;
    $("video-people").hidden = true;
    $("video-progress-row").hidden = false;
    $("video-progress").value = 0;
    $("video-status").textContent = resumed ? `${resumed.name}: picking up the job…`
      : "Uploading…";
    const name = resumed ? resumed.name : file.name;
    let keepJob = false;
    try {
      let job = resumed;
      if (!job) {
        const form = new FormData();
        form.append("file", file, file.name);
        job = await api(videoUrl(), { method: "POST", body: form });
        sessionStorage.setItem(VIDEO_JOB_KEY, JSON.stringify({ url: job.url, name }));
      }
      let status;
      for (;;) {
        status = await jobStatus(job.url);
        $("video-progress").value = status.progress;
        const total = status.frames_total ? ` of ${status.frames_total}` : "";
        $("video-status").textContent = status.status === "queued"
          ? "Waiting for a free worker…"
          : `${status.frames_done}${total} frames`;
        if (!["queued", "running"].includes(status.status)) break;
        await sleep(TIMING.pollMs);
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
      link.download = `${name.replace(/\.[^.]+$/, "")}-maskwatch.mp4`;
      link.hidden = false;
      // people (tracked faces, as `maskwatch detect` counts them), not face-frames
      renderCounts($("video-counts"), [], { ...countFaces([]), ...(status.people || {}) });
      $("video-people").hidden = false;
      const most = document.createElement("div");
      most.innerHTML = "<dt>Most faces in one frame</dt><dd></dd>";
      most.querySelector("dd").textContent = String(status.counts.max_faces_in_frame);
      $("video-counts").append(most);
      $("video-counts").hidden = false;
    } catch (err) {
      keepJob = Boolean(err.keepJob);
      $("video-progress-row").hidden = true;
      message("video-message", err.message);
    } finally {
      if (!keepJob) sessionStorage.removeItem(VIDEO_JOB_KEY);
      input.disabled = false;
    }
  }

  // Follow the video job this tab started, if one is remembered and none is followed now.
  function resumeVideoJob() {
    const job = sessionStorage.getItem(VIDEO_JOB_KEY);
    if (job && !$("video-input").disabled) checkVideo(null, JSON.parse(job));
  }

  // The video route, with the page's blur choice. (Tracked video labels follow the
  // server's threshold: the slider applies to the live view and images.)
  function videoUrl() {
    return state.blur ? "/api/video?blur=all" : "/api/video";
  }

  $("video-input").addEventListener("change", () => {
    const file = $("video-input").files[0];
    if (file) checkVideo(file);
  });

  loadModel();
  resumeVideoJob();
})();
