"""multipart/form-data uploads: stored in the inputs bucket under the key's prefix, referenced by
s3:// URI; size and type checked."""

from __future__ import annotations

import io

import httpx
from PIL import Image

from tests.gateway.conftest import ALICE_KEY, Gateway, MakeGateway
from tests.support import kube_client, s3
from tests.support.kube_emulator import COMPOSITION_JOBS


def _image(kind: str, colour: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), colour).save(buffer, format=kind)
    return buffer.getvalue()


def _files(clothing: list[tuple[str, bytes, str]]) -> list[tuple[str, tuple[str, bytes, str]]]:
    files = [("personImage", ("me.jpg", _image("JPEG", "red"), "image/jpeg"))]
    files += [("clothingImages", item) for item in clothing]
    files.append(("placeImage", ("beach.webp", _image("WEBP", "blue"), "image/webp")))
    return files


async def _upload(
    gateway: Gateway,
    files: list[tuple[str, tuple[str, bytes, str]]],
    data: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    return await gateway.client.post(
        "/generate",
        files=files,
        data=data or {},
        headers={"X-API-Key": ALICE_KEY, **(headers or {})},
    )


async def test_uploads_become_s3_inputs(
    gateway: Gateway,
    cluster: kube_client.KubeClient,
    s3_env: s3.S3Server,
    buckets: dict[str, str],
) -> None:
    shirt, trousers = _image("PNG", "white"), _image("PNG", "black")
    files = _files(
        [("shirt.png", shirt, "image/png"), ("trousers", trousers, "application/octet-stream")]
    )

    response = await _upload(gateway, files, {"steps": "8", "prompt": "on a beach"})

    assert response.status_code == 202, response.text
    job = await cluster.get(COMPOSITION_JOBS, response.json()["jobId"], namespace="compose")
    inputs = job["spec"]["inputs"]
    uris = [
        inputs["person"]["uri"],
        *(c["uri"] for c in inputs["clothing"]),
        inputs["place"]["uri"],
    ]
    prefix = f"s3://{buckets['inputs']}/uploads/alice/{job['metadata']['name']}/"
    assert all(uri.startswith(prefix) for uri in uris), uris
    assert [uri.rsplit(".", 1)[1] for uri in uris] == ["jpg", "png", "png", "webp"]
    client = s3_env.client()
    stored = [client.get_object(Bucket=buckets["inputs"], Key=uri.split("/", 3)[3]) for uri in uris]
    assert stored[1]["Body"].read() == shirt
    assert stored[2]["Body"].read() == trousers
    assert stored[2]["ContentType"] == "image/png"
    assert (job["spec"]["params"]["steps"], job["spec"]["params"]["prompt"]) == (8, "on a beach")


async def test_a_file_that_is_not_an_image_is_named(
    gateway: Gateway, s3_env: s3.S3Server, buckets: dict[str, str]
) -> None:
    files = _files([("a.png", _image("PNG", "white"), "image/png"),
                    ("b.png", b"GIF89a not really", "image/png")])  # fmt: skip

    response = await _upload(gateway, files)

    assert response.status_code == 422
    assert response.json()["errors"] == [
        {"field": "clothingImages[1]", "message": "is not a JPEG, PNG or WebP image"}
    ]
    assert s3_env.client().list_objects_v2(Bucket=buckets["inputs"]).get("KeyCount") == 0


async def test_an_invalid_parameter_stores_nothing(
    gateway: Gateway, s3_env: s3.S3Server, buckets: dict[str, str]
) -> None:
    files = _files([("a.png", _image("PNG", "white"), "image/png")])

    response = await _upload(gateway, files, {"steps": "many"})

    assert response.status_code == 422
    assert [e["field"] for e in response.json()["errors"]] == ["steps"]
    assert s3_env.client().list_objects_v2(Bucket=buckets["inputs"]).get("KeyCount") == 0


async def test_an_oversized_file_is_413(make_gateway: MakeGateway) -> None:
    gateway = await make_gateway(max_upload_bytes=4096)
    big = _image("PNG", "white") + b"\0" * 5000
    response = await _upload(gateway, _files([("big.png", big, "image/png")]))

    assert response.status_code == 413
    assert "clothingImages[0]" in response.json()["message"]


async def test_an_oversized_request_is_413(make_gateway: MakeGateway) -> None:
    gateway = await make_gateway(max_request_bytes=4096)
    files = _files([("a.png", _image("PNG", "white") + b"\0" * 5000, "image/png")])

    response = await _upload(gateway, files)

    assert response.status_code == 413
    assert response.json()["message"].startswith("body: larger than 4096 bytes")


async def test_a_missing_image_field_is_named(gateway: Gateway) -> None:
    files = [f for f in _files([]) if f[0] != "placeImage"]
    files.append(("clothingImages", ("a.png", _image("PNG", "white"), "image/png")))

    response = await _upload(gateway, files)

    assert response.status_code == 422
    assert {e["field"] for e in response.json()["errors"]} == {"placeImage"}


async def test_uploads_need_an_inputs_bucket(make_gateway: MakeGateway) -> None:
    gateway = await make_gateway(inputs_bucket=None)

    response = await _upload(gateway, _files([("a.png", _image("PNG", "white"), "image/png")]))

    assert response.status_code == 415
    assert response.json()["reason"] == "UploadsDisabled"


async def test_a_replayed_upload_is_the_same_job_and_other_files_conflict(
    gateway: Gateway,
    cluster: kube_client.KubeClient,
    s3_env: s3.S3Server,
    buckets: dict[str, str],
) -> None:
    white = _image("PNG", "white")
    files = _files([("a.png", white, "image/png")])
    other = _files([("a.png", _image("PNG", "green"), "image/png")])

    first = await _upload(gateway, files, headers={"Idempotency-Key": "upload-1"})
    again = await _upload(gateway, files, headers={"Idempotency-Key": "upload-1"})
    changed = await _upload(gateway, other, headers={"Idempotency-Key": "upload-1"})

    assert first.status_code == again.status_code == 202
    assert first.json()["jobId"] == again.json()["jobId"]
    assert changed.status_code == 409
    jobs = await cluster.list(COMPOSITION_JOBS, namespace="compose")
    assert len(jobs) == 1
    # The first job's inputs were not overwritten by the conflicting upload.
    key = jobs[0]["spec"]["inputs"]["clothing"][0]["uri"].split("/", 3)[3]
    stored = s3_env.client().get_object(Bucket=buckets["inputs"], Key=key)
    assert stored["Body"].read() == white
