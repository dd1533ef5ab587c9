"""multipart/form-data uploads: streamed into the inputs bucket under the key's prefix, referenced
by s3:// URI; size and type checked; admitted within the replica's buffer budget and the key's
concurrent-upload limit. Admission and the body's parsing on their own: test_uploads_units.py."""

from __future__ import annotations

import asyncio
import hashlib
import io
import random
from collections.abc import AsyncIterator

import httpx
import pytest
from PIL import Image

from compose_gateway import storage
from tests.gateway.conftest import ALICE_KEY, BOB_KEY, Gateway, MakeGateway, original_request
from tests.support import cluster_client, s3
from tests.support.resources import COMPOSITION_JOBS


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
    cluster: cluster_client.ClusterClient,
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


async def test_the_upload_hashes_reach_the_job(
    gateway: Gateway, cluster: cluster_client.ClusterClient
) -> None:
    """Each uploaded file's SHA-256, computed as it streamed through, is declared on the input
    it fills (the inference image checks the bytes it fetches and keys result reuse on it); an
    image given by URL carries none. A text field opts out of reuse."""
    person, shirt = _image("JPEG", "red"), _image("PNG", "white")
    files = [
        ("personImage", ("me.jpg", person, "image/jpeg")),
        ("clothingImages", ("shirt.png", shirt, "image/png")),
    ]
    form = {"placeImage": "https://example.com/beach.jpg", "reuse": "false"}

    response = await _upload(gateway, files, form)

    assert response.status_code == 202, response.text
    job = await cluster.get(COMPOSITION_JOBS, response.json()["jobId"], namespace="compose")
    inputs = job["spec"]["inputs"]
    assert inputs["person"]["sha256"] == hashlib.sha256(person).hexdigest()
    assert inputs["clothing"][0]["sha256"] == hashlib.sha256(shirt).hexdigest()
    assert inputs["place"] == {"uri": "https://example.com/beach.jpg"}
    assert job["spec"]["output"]["reuse"] is False


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


async def test_categories_go_with_the_garment_files_in_order(
    gateway: Gateway, cluster: cluster_client.ClusterClient
) -> None:
    files = _files([("a.png", _image("PNG", "white"), "image/png"),
                    ("b.png", _image("PNG", "black"), "image/png"),
                    ("c.png", _image("PNG", "gray"), "image/png")])  # fmt: skip
    form = {"clothingCategories": ["upper", "", "shoes"]}

    response = await gateway.client.post(
        "/generate", files=files, data=form, headers={"X-API-Key": ALICE_KEY}
    )

    assert response.status_code == 202, response.text
    job = await cluster.get(COMPOSITION_JOBS, response.json()["jobId"], namespace="compose")
    clothing = job["spec"]["inputs"]["clothing"]
    assert [c.get("category") for c in clothing] == ["upper", None, "shoes"]
    assert [c["uri"].rsplit(".", 1)[1] for c in clothing] == ["png", "png", "png"]


@pytest.mark.parametrize(
    ("categories", "errors"),
    [
        (["upper"], [("clothingCategories", "gives 1 categories for 2 clothingImages: send "
                      "one per garment, in the same order (empty for none)")]),
        (["upper", "hat"], [("clothingCategories[1]", "must be one of upper, lower, dress, "
                             "outerwear, shoes, accessory (or empty)")]),
        (["dress", "upper"], [("clothingImages", "a dress cannot be combined with upper or "
                               "lower garments")]),
    ],
)  # fmt: skip
async def test_bad_categories_are_named_and_store_nothing(
    gateway: Gateway,
    s3_env: s3.S3Server,
    buckets: dict[str, str],
    categories: list[str],
    errors: list[tuple[str, str]],
) -> None:
    files = _files([("a.png", _image("PNG", "white"), "image/png"),
                    ("b.png", _image("PNG", "black"), "image/png")])  # fmt: skip
    form = {"clothingCategories": categories}

    response = await gateway.client.post(
        "/generate", files=files, data=form, headers={"X-API-Key": ALICE_KEY}
    )

    assert response.status_code == 422
    assert [(e["field"], e["message"]) for e in response.json()["errors"]] == errors
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
    cluster: cluster_client.ClusterClient,
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


def _png_of(size: int, seed: int = 0) -> bytes:
    """``size`` bytes that sniff as PNG (the gateway checks magic bytes, not pixels)."""
    head = _image("PNG", "white")
    return head + random.Random(seed).randbytes(size - len(head))


def _leftovers(s3_env: s3.S3Server, bucket: str) -> tuple[list[str], list[str]]:
    """(object keys, keys of unfinished multipart uploads) in ``bucket``."""
    client = s3_env.client()
    objects = [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    pending = [u["Key"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]
    return objects, pending


async def test_a_file_larger_than_a_part_is_streamed_and_stored_whole(
    gateway: Gateway,
    cluster: cluster_client.ClusterClient,
    s3_env: s3.S3Server,
    buckets: dict[str, str],
) -> None:
    big = _png_of(storage.PART_BYTES * 2 - 4321)
    files = _files([("big.png", big, "image/png")])

    response = await _upload(gateway, files)

    assert response.status_code == 202, response.text
    job = await cluster.get(COMPOSITION_JOBS, response.json()["jobId"], namespace="compose")
    uri = job["spec"]["inputs"]["clothing"][0]["uri"]
    key = uri.split("/", 3)[3]
    assert key.endswith(hashlib.sha256(big).hexdigest()[:32] + ".png")
    stored = s3_env.client().get_object(Bucket=buckets["inputs"], Key=key)
    assert stored["ContentType"] == "image/png"
    assert stored["Body"].read() == big
    objects, pending = _leftovers(s3_env, buckets["inputs"])
    assert len(objects) == 3  # person, the big garment, place: no staging object left
    assert pending == []


async def test_a_request_that_grows_too_large_midway_leaves_nothing(
    make_gateway: MakeGateway, s3_env: s3.S3Server, buckets: dict[str, str]
) -> None:
    gateway = await make_gateway(max_request_bytes=storage.PART_BYTES + 2 * 1024 * 1024)
    files = _files([("a.png", _png_of(storage.PART_BYTES + 1024 * 1024), "image/png"),
                    ("b.png", _png_of(2 * 1024 * 1024, seed=1), "image/png")])  # fmt: skip

    response = await _upload(gateway, files)

    assert response.status_code == 413
    assert _leftovers(s3_env, buckets["inputs"]) == ([], [])
    assert gateway.services.uploads.in_flight_bytes == 0


class HeldBody:
    """A multipart body sent in two halves; the second only once ``release`` is set."""

    def __init__(self, files: list[tuple[str, tuple[str, bytes, str]]]) -> None:
        request = httpx.Request("POST", "http://gateway.test/generate", files=files)
        self.content_type = request.headers["content-type"]
        self.body = request.read()
        self.release = asyncio.Event()
        self.started = asyncio.Event()

    async def chunks(self) -> AsyncIterator[bytes]:
        half = len(self.body) // 2
        yield self.body[:half]
        self.started.set()
        await self.release.wait()
        yield self.body[half:]


async def test_uploads_beyond_the_key_limit_and_the_replica_budget_are_refused(
    make_gateway: MakeGateway,
) -> None:
    gateway = await make_gateway(
        max_concurrent_uploads_per_key=1, upload_buffer_bytes=8 * 1024 * 1024
    )
    files = _files([("a.png", _image("PNG", "white"), "image/png")])
    held = HeldBody(files)
    first = asyncio.create_task(
        gateway.client.post(
            "/generate",
            content=held.chunks(),
            headers={"X-API-Key": ALICE_KEY, "Content-Type": held.content_type},
        )
    )
    await asyncio.wait_for(held.started.wait(), 10)

    same_key = await _upload(gateway, files)
    other_key = await gateway.client.post("/generate", files=files, headers={"X-API-Key": BOB_KEY})
    json_meanwhile = await gateway.post(original_request())
    held.release.set()
    finished = await asyncio.wait_for(first, 10)
    after = await _upload(gateway, files)

    assert same_key.status_code == 429
    assert same_key.json()["reason"] == "TooManyUploads"
    assert int(same_key.headers["Retry-After"]) >= 1
    assert other_key.status_code == 503
    assert other_key.json()["reason"] == "UploadCapacity"
    assert int(other_key.headers["Retry-After"]) >= 1
    assert json_meanwhile.status_code == 202  # JSON requests hold no upload buffer
    assert finished.status_code == 202, finished.text
    assert after.status_code == 202, after.text
    assert gateway.services.uploads.in_flight_bytes == 0


async def test_an_upload_s3_refuses_is_a_502_naming_storage(make_gateway: MakeGateway) -> None:
    gateway = await make_gateway(inputs_bucket="no-such-bucket-for-uploads")

    response = await _upload(gateway, _files([("a.png", _image("PNG", "white"), "image/png")]))

    assert response.status_code == 502
    assert response.json()["reason"] == "StorageError"
    assert gateway.services.uploads.in_flight_bytes == 0


async def test_a_body_that_never_finishes_is_408_and_frees_its_slot(
    make_gateway: MakeGateway, s3_env: s3.S3Server, buckets: dict[str, str]
) -> None:
    gateway = await make_gateway(upload_timeout_seconds=0.5, max_concurrent_uploads_per_key=1)
    files = _files([("a.png", _png_of(storage.PART_BYTES + 1024, seed=3), "image/png")])
    held = HeldBody(files)  # never released: the second half never comes

    response = await gateway.client.post(
        "/generate",
        content=held.chunks(),
        headers={"X-API-Key": ALICE_KEY, "Content-Type": held.content_type},
    )
    after = await _upload(gateway, _files([("b.png", _image("PNG", "white"), "image/png")]))

    assert response.status_code == 408
    assert response.json()["reason"] == "RequestTimeout"
    assert after.status_code == 202  # the key's only slot came back
    assert gateway.services.uploads.in_flight_bytes == 0
    objects, pending = _leftovers(s3_env, buckets["inputs"])
    assert pending == []  # the multipart upload of the unfinished file was aborted
    assert len(objects) == 3  # only the second request's files


async def test_a_key_over_its_quota_uploads_nothing(
    make_gateway: MakeGateway, s3_env: s3.S3Server, buckets: dict[str, str]
) -> None:
    gateway = await make_gateway(max_retained_jobs_per_key=1)
    files = _files([("a.png", _image("PNG", "white"), "image/png")])
    assert (await _upload(gateway, files)).status_code == 202
    stored = _leftovers(s3_env, buckets["inputs"])

    refused = await _upload(gateway, _files([("b.png", _image("PNG", "green"), "image/png")]))

    assert refused.status_code == 429
    assert refused.json()["reason"] == "QuotaExceeded"
    assert _leftovers(s3_env, buckets["inputs"]) == stored


async def test_a_chunked_body_without_length_is_cut_at_the_limit(
    make_gateway: MakeGateway, s3_env: s3.S3Server, buckets: dict[str, str]
) -> None:
    gateway = await make_gateway(max_request_bytes=storage.PART_BYTES + 512 * 1024)
    files = _files([("a.png", _png_of(storage.PART_BYTES + 1024 * 1024, seed=4), "image/png")])
    request = httpx.Request("POST", "http://gateway.test/generate", files=files)
    body = request.read()

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 64 * 1024):
            yield body[start : start + 64 * 1024]

    response = await gateway.client.post(
        "/generate",
        content=chunks(),  # no Content-Length: only the streaming count can stop it
        headers={"X-API-Key": ALICE_KEY, "Content-Type": request.headers["content-type"]},
    )

    assert response.status_code == 413
    assert response.json()["message"].startswith(
        f"body: larger than {storage.PART_BYTES + 512 * 1024}"
    )
    assert _leftovers(s3_env, buckets["inputs"]) == ([], [])


async def test_a_file_of_exactly_the_limit_passes_and_one_byte_more_does_not(
    make_gateway: MakeGateway,
) -> None:
    gateway = await make_gateway(max_upload_bytes=8192)
    exact = _files([("a.png", _png_of(8192, seed=5), "image/png")])
    over = _files([("a.png", _png_of(8193, seed=6), "image/png")])

    assert (await _upload(gateway, exact)).status_code == 202
    refused = await _upload(gateway, over)
    assert refused.status_code == 413
    assert "clothingImages[0]: larger than 8192 bytes" in refused.json()["message"]
