"""Face detection, the detect pipeline (faces + mask labels), drawing, video, tracking, alerts.

Heavy modules load lazily: ``from maskwatch.detection import Detector`` imports onnxruntime
only when the detector is built.
"""

from __future__ import annotations

__all__ = ["Detector", "Face", "counted", "FaceDetector", "make_face_detector", "draw_faces",
           "Annotator", "blur_faces", "IoUTracker", "VideoSource", "VideoWriter", "AlertHook"]

_WHERE = {
    "Detector": "pipeline", "Face": "pipeline", "counted": "pipeline", "FaceDetector": "faces",
    "make_face_detector": "faces", "draw_faces": "draw", "Annotator": "draw",
    "blur_faces": "privacy", "IoUTracker": "tracker", "VideoSource": "video",
    "VideoWriter": "video", "AlertHook": "alerts",
}


def __getattr__(name: str):
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(name)
