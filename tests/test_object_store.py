"""Inputs named by URI (s3://, gs://, file://) are listed and read through pyarrow: a
local file:// folder and a local S3 stand-in (moto's server on 127.0.0.1)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

pytest.importorskip("pyarrow", reason="pyarrow comes with maskwatch[ray]")
pytest.importorskip("onnx")

from conftest import read_jsonl  # noqa: E402

from maskwatch.cli import main as cli_main  # noqa: E402
from maskwatch.errors import MaskwatchError  # noqa: E402
from maskwatch.imaging import list_uri, load_rgb  # noqa: E402


@pytest.fixture
def folder(face_folder) -> Path:
    """The shared face folder with an unreadable .png added."""
    (face_folder / "a" / "broken.png").write_bytes(b"not an image")
    return face_folder


def test_file_uris_classify_like_paths_and_resume(tmp_path, tiny_model, folder, capsys):
    uri = folder.as_uri()
    found = list_uri(uri, {".png"})
    assert found == sorted(p.as_uri() for p in folder.rglob("*.png"))
    assert (load_rgb(found[3]) == load_rgb(folder / found[3][len(uri) + 1 :])).all()
    with pytest.raises(MaskwatchError, match="no such file"):
        list_uri(uri + "/missing", {".png"})
    local, remote = tmp_path / "local.jsonl", tmp_path / "uri.jsonl"
    assert cli_main(["classify", str(folder), "--model", str(tiny_model), "--output",
                     str(local)]) == 1  # broken.png
    assert cli_main(["classify", uri, "--model", str(tiny_model), "--output", str(remote)]) == 1
    assert "broken.png" in capsys.readouterr().err
    assert cli_main(["classify", uri, "--model", str(tiny_model), "--output", str(remote),
                     "--resume"]) == 1  # only broken.png is tried again
    assert "0 image(s) written" in capsys.readouterr().err
    assert [Path(r["path"]).as_uri() for r in read_jsonl(local)] == [
        r["path"] for r in read_jsonl(remote)]
    assert [r["label"] for r in read_jsonl(local)] == [r["label"] for r in read_jsonl(remote)]


@pytest.fixture
def s3(monkeypatch):
    """An S3 endpoint on 127.0.0.1 (moto), with throw-away credentials."""
    pytest.importorskip("moto", reason="the local S3 stand-in needs moto (in maskwatch[dev])")
    pytest.importorskip("flask", reason="moto's server needs flask (in maskwatch[dev])")
    import boto3
    from moto.server import ThreadedMotoServer

    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}"), port
    finally:
        server.stop()


def test_s3_uris_through_a_local_stand_in(tmp_path, tiny_model, folder, s3, capsys):
    client, port = s3
    client.create_bucket(Bucket="photos")
    for path in folder.rglob("*"):
        if path.is_file():
            client.upload_file(str(path), "photos", f"crops/{path.relative_to(folder)}")
    query = f"?endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1"
    found = list_uri(f"s3://photos/crops{query}", {".png"})
    keys = sorted(f"crops/{p.relative_to(folder)}" for p in folder.rglob("*.png"))
    assert found == [f"s3://photos/{k}{query}" for k in keys]
    local, remote = tmp_path / "local.csv", tmp_path / "s3.csv"
    assert cli_main(["classify", str(folder), "--model", str(tiny_model), "--output",
                     str(local)]) == 1
    assert cli_main(["classify", f"s3://photos/crops{query}", "--model", str(tiny_model),
                     "--output", str(remote)]) == 1
    err = capsys.readouterr().err
    assert "broken.png" in err and "40 image(s) written" in err
    labels = [line.split(",")[1] for line in local.read_text().splitlines()]
    assert [line.split(",")[1] for line in remote.read_text().splitlines()] == labels
    with pytest.raises(MaskwatchError, match="no such file"):
        list_uri(f"s3://photos/nothing-here{query}", {".png"})
