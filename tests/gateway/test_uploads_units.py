"""Uploads without a gateway or a cluster: the replica's admission of uploads, and
uploads.receive on its own, a multipart body fed in chunks of any size into the real S3 test
server.

Limits at their exact bounds, the form's fields and files as the payload names them, every
malformed body, and what is left in the bucket after each failure. The uploads mutation config
runs these first: a mutant they catch never starts the control plane.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import pathlib
from collections.abc import AsyncIterator

import pytest
from PIL import Image

from compose_gateway import bodies, storage, translate, uploads
from tests.support import s3

BOUNDARY = "test-boundary-7f3a"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"
LIMITS = uploads.Limits(max_request_bytes=8 * 1024 * 1024, max_file_bytes=1024 * 1024)
PREFIX = "uploads/alice/job-1/"


def _png(colour: str = "white") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _webp() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "blue").save(buffer, format="WEBP")
    return buffer.getvalue()


JPEG_HEAD = b"\xff\xd8\xff\xe0"


def field(name: str, value: str | bytes, *, headers: bytes = b"") -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return f'Content-Disposition: form-data; name="{name}"\r\n'.encode() + headers + b"\r\n" + data


def file(name: str, data: bytes, filename: str = "f.bin", *, headers: bytes = b"") -> bytes:
    return (
        f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'.encode()
        + b"Content-Type: application/octet-stream\r\n"
        + headers
        + b"\r\n"
        + data
    )


def body(*parts: bytes) -> bytes:
    delimiter = f"--{BOUNDARY}\r\n".encode()
    return b"".join(delimiter + part + b"\r\n" for part in parts) + f"--{BOUNDARY}--\r\n".encode()


async def _chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


@pytest.fixture
def bucket(s3_env: s3.S3Server) -> str:
    return s3_env.new_bucket("uploads")


@pytest.fixture
def sink(s3_env: s3.S3Server, bucket: str) -> storage.UploadSink:
    store = storage.Storage(
        inputs_bucket=bucket,
        inputs_prefix="uploads/",
        presign_expires_seconds=60,
        client=s3_env.client(),
    )
    return store.upload_sink(owner="alice", job_name="job-1")


async def receive(
    data: bytes,
    sink: storage.UploadSink,
    *,
    chunk: int = 64 * 1024,
    content_type: str = CONTENT_TYPE,
    declared_length: str | None = None,
    limits: uploads.Limits = LIMITS,
    remove_on_error: bool = True,
) -> uploads.Received:
    return await uploads.receive(
        _chunks(data, chunk),
        content_type=content_type,
        declared_length=declared_length,
        limits=limits,
        sink=sink,
        remove_on_error=remove_on_error,
    )


def leftovers(s3_env: s3.S3Server, bucket: str) -> tuple[list[str], list[str]]:
    """(object keys, keys of unfinished multipart uploads) in ``bucket``."""
    client = s3_env.client()
    objects = [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    pending = [u["Key"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]
    return sorted(objects), pending


def stored(s3_env: s3.S3Server, bucket: str, key: str) -> tuple[bytes, str]:
    got = s3_env.client().get_object(Bucket=bucket, Key=key)
    return got["Body"].read(), got["ContentType"]


def field_errors(info: pytest.ExceptionInfo[translate.RequestError]) -> list[tuple[str, str]]:
    return [(error.field, error.message) for error in info.value.errors]


# -- admission -----------------------------------------------------------------------------------


def test_admission_counts_bytes_and_keys_and_releases_on_error() -> None:
    admission = uploads.Admission(budget_bytes=30, per_upload_bytes=10, per_key=2)
    with admission.admit("alice"), admission.admit("alice"):
        with pytest.raises(uploads.TooManyUploads), admission.admit("alice"):
            pass
        with admission.admit("bob"):
            assert admission.in_flight_bytes == 30
            with pytest.raises(uploads.UploadsBusy), admission.admit("carol"):
                pass
        with pytest.raises(RuntimeError), admission.admit("bob"):
            raise RuntimeError("the upload failed")
        assert admission.in_flight_bytes == 20
    assert admission.in_flight_bytes == 0
    with admission.admit("carol"):
        assert admission.in_flight_bytes == 10


@pytest.mark.parametrize("per_key", [1, 2, 3, 300])  # the setting allows 1 to 1000
def test_a_key_regains_exactly_the_slots_its_finished_uploads_free(per_key: int) -> None:
    admission = uploads.Admission(
        budget_bytes=10 * (per_key + 2), per_upload_bytes=10, per_key=per_key
    )
    with contextlib.ExitStack() as held:
        for _ in range(per_key - 1):
            held.enter_context(admission.admit("alice"))
        with admission.admit("alice"):
            pass
        # One of alice's uploads has finished: one more fits, a second does not.
        with (
            admission.admit("alice"),
            pytest.raises(uploads.TooManyUploads) as refused,
            admission.admit("alice"),
        ):
            pass
    assert admission.in_flight_bytes == 0
    assert (refused.value.limit, refused.value.retry_after) == (per_key, 2)
    assert f"already has {per_key} uploads in progress" in str(refused.value)


def test_an_upload_that_does_not_fit_the_budget_is_refused_with_a_retry_time() -> None:
    admission = uploads.Admission(budget_bytes=25, per_upload_bytes=10, per_key=5)
    with admission.admit("alice"), admission.admit("bob"):
        with pytest.raises(uploads.UploadsBusy) as busy, admission.admit("carol"):
            pass
        assert admission.in_flight_bytes == 20
    assert busy.value.retry_after == 2  # the gateway README's Retry-After
    with admission.admit("carol"), admission.admit("dave"):
        assert admission.in_flight_bytes == 20


# -- the form, whatever the chunking ------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 7, 4096, 1024 * 1024])
async def test_a_form_is_read_alike_in_chunks_of_any_size(
    s3_env: s3.S3Server, bucket: str, sink: storage.UploadSink, chunk: int
) -> None:
    person, shirt, trousers, place = JPEG_HEAD + b"person", _png(), _png("black"), _webp()
    data = body(
        field("prompt", "on a beach"),
        file("personImage", person),
        file("clothingImages", shirt),
        field("steps", "8"),
        file("clothingImages", trousers),
        file("placeImage", place),
    )

    received = await receive(data, sink, chunk=chunk)

    names = {
        content: f"{PREFIX}{hashlib.sha256(content).hexdigest()[:32]}.{extension}"
        for content, extension in ((person, "jpg"), (shirt, "png"), (trousers, "png"),
                                   (place, "webp"))
    }  # fmt: skip
    assert received.payload == {
        "prompt": "on a beach",
        "personImage": f"s3://{bucket}/{names[person]}",
        "clothingImages": [f"s3://{bucket}/{names[shirt]}", f"s3://{bucket}/{names[trousers]}"],
        "steps": "8",
        "placeImage": f"s3://{bucket}/{names[place]}",
    }
    assert [(s.field, s.key) for s in received.stored] == [
        ("personImage", names[person]),
        ("clothingImages[0]", names[shirt]),
        ("clothingImages[1]", names[trousers]),
        ("placeImage", names[place]),
    ]
    assert stored(s3_env, bucket, names[person]) == (person, "image/jpeg")
    assert stored(s3_env, bucket, names[trousers]) == (trousers, "image/png")
    assert stored(s3_env, bucket, names[place]) == (place, "image/webp")
    assert leftovers(s3_env, bucket) == (sorted(set(names.values())), [])


async def test_a_header_name_is_matched_in_any_case(sink: storage.UploadSink) -> None:
    part = b'content-DISPOSITION: form-data; name="prompt"\r\n\r\nhello'
    received = await receive(body(part), sink, chunk=3)
    assert received.payload == {"prompt": "hello"}


async def test_other_part_headers_do_not_replace_the_disposition(sink: storage.UploadSink) -> None:
    part = field("prompt", "hello", headers=b'X-Note: name="other"\r\n')
    received = await receive(body(part), sink, chunk=5)
    assert received.payload == {"prompt": "hello"}


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        (f"{CONTENT_TYPE}; charset=latin-1", "café"),
        (f"{CONTENT_TYPE}; charset=no-such-charset", "café"),  # unknown: latin-1
        (CONTENT_TYPE, "caf\ufffd"),  # utf-8 by default, undecodable bytes replaced
    ],
)
async def test_field_text_is_decoded_with_the_body_charset(
    sink: storage.UploadSink, content_type: str, expected: str
) -> None:
    data = body(field("prompt", "café".encode("latin-1")))
    received = await receive(data, sink, content_type=content_type)
    assert received.payload == {"prompt": expected}


async def test_utf8_field_names_and_values_are_read(sink: storage.UploadSink) -> None:
    received = await receive(body(field("prompt", "plage à midi")), sink, chunk=2)
    assert received.payload == {"prompt": "plage à midi"}


async def test_a_field_given_twice_is_named(
    s3_env: s3.S3Server, bucket: str, sink: storage.UploadSink
) -> None:
    data = body(field("steps", "8"), field("steps", "9"), file("personImage", _png()))
    with pytest.raises(translate.RequestError) as info:
        await receive(data, sink)
    assert field_errors(info) == [("steps", "given more than once")]
    assert leftovers(s3_env, bucket) == ([], [])


# -- limits, at their bounds --------------------------------------------------------------------


async def test_a_body_of_exactly_the_request_limit_passes_and_one_byte_more_does_not(
    sink: storage.UploadSink,
) -> None:
    data = body(file("personImage", _png()), field("prompt", "x"))
    exact = uploads.Limits(max_request_bytes=len(data), max_file_bytes=LIMITS.max_file_bytes)
    short = uploads.Limits(max_request_bytes=len(data) - 1, max_file_bytes=LIMITS.max_file_bytes)

    received = await receive(data, sink, limits=exact, declared_length=str(len(data)))
    with pytest.raises(bodies.BodyTooLarge) as info:
        await receive(data, sink, limits=short, chunk=100)  # counted while streaming

    assert received.payload["prompt"] == "x"
    assert (info.value.field, info.value.limit) == ("body", len(data) - 1)


async def test_a_declared_length_over_the_limit_is_refused_before_reading(
    sink: storage.UploadSink,
) -> None:
    async def never() -> AsyncIterator[bytes]:
        raise AssertionError("the body was read")
        yield b""

    with pytest.raises(bodies.BodyTooLarge):
        await uploads.receive(
            never(),
            content_type=CONTENT_TYPE,
            declared_length=str(LIMITS.max_request_bytes + 1),
            limits=LIMITS,
            sink=sink,
            remove_on_error=True,
        )


@pytest.mark.parametrize("declared", [None, "", "abc", "-5", "1e9", " 12"])
async def test_a_missing_or_odd_declared_length_leaves_the_count_to_the_stream(
    sink: storage.UploadSink, declared: str | None
) -> None:
    data = body(field("prompt", "x" * 100))
    small = uploads.Limits(max_request_bytes=len(data) - 1, max_file_bytes=1024)
    assert (await receive(data, sink, declared_length=declared)).payload == {"prompt": "x" * 100}
    with pytest.raises(bodies.BodyTooLarge):
        await receive(data, sink, declared_length=declared, limits=small)


async def test_a_file_of_exactly_the_file_limit_passes_and_one_byte_more_does_not(
    s3_env: s3.S3Server, bucket: str, sink: storage.UploadSink
) -> None:
    limits = uploads.Limits(max_request_bytes=LIMITS.max_request_bytes, max_file_bytes=1000)
    exact = _png() + b"\0" * (1000 - len(_png()))

    received = await receive(body(file("clothingImages", exact)), sink, limits=limits, chunk=99)
    with pytest.raises(bodies.BodyTooLarge) as info:
        await receive(body(file("clothingImages", exact + b"\0")), sink, limits=limits, chunk=99)

    assert received.stored[0].field == "clothingImages[0]"
    assert (info.value.field, info.value.limit) == ("clothingImages[0]", 1000)
    assert leftovers(s3_env, bucket)[0] == [received.stored[0].key]


async def test_a_refused_file_still_counts_against_the_file_limit(sink: storage.UploadSink) -> None:
    limits = uploads.Limits(max_request_bytes=LIMITS.max_request_bytes, max_file_bytes=100)
    with pytest.raises(bodies.BodyTooLarge) as info:
        await receive(body(file("prompt", b"x" * 101)), sink, limits=limits, chunk=10)
    assert info.value.field == "prompt"


def test_the_form_limits_are_the_documented_ones() -> None:
    readme = (pathlib.Path(__file__).resolve().parents[2] / "gateway" / "README.md").read_text()
    documented = " ".join(readme.split())  # one line, whatever the wrapping
    assert (
        "A form has at most 10 files (a person, a place, 8 garments), 64 text fields and"
        " 64 KiB per text field"
    ) in documented
    assert "`503 UploadCapacity` with `Retry-After: 2`" in documented
    limits = (uploads.MAX_FILES, uploads.MAX_FIELDS, uploads.MAX_FIELD_BYTES)
    assert limits == (10, 64, 64 * 1024)


async def test_a_text_field_of_exactly_64_kib_passes_and_one_byte_more_does_not(
    sink: storage.UploadSink,
) -> None:
    size = 64 * 1024
    received = await receive(body(field("prompt", "p" * size)), sink, chunk=1000)
    with pytest.raises(translate.RequestError) as info:
        await receive(body(field("prompt", "p" * (size + 1))), sink, chunk=1000)

    assert received.payload == {"prompt": "p" * size}
    assert field_errors(info) == [("prompt", f"longer than {size} bytes")]


async def test_at_most_64_fields_and_ten_files(
    s3_env: s3.S3Server, bucket: str, sink: storage.UploadSink
) -> None:
    fields = [field(f"f{i}", "v") for i in range(64)]
    files = [file("clothingImages", _png()) for _ in range(10)]

    received = await receive(body(*fields, *files), sink)
    with pytest.raises(translate.RequestError) as too_many_fields:
        await receive(body(*fields, field("one-more", "v")), sink)
    red = [file("clothingImages", _png("red")) for _ in range(11)]
    with pytest.raises(translate.RequestError) as too_many_files:
        await receive(body(*red), sink)

    assert len(received.payload) == 64 + 1
    assert len(received.payload["clothingImages"]) == 10
    assert field_errors(too_many_fields) == [
        ("body", "malformed multipart body (more than 64 fields)")
    ]
    assert field_errors(too_many_files) == [
        ("body", "malformed multipart body (more than 10 files)")
    ]
    # The refused request removed what it had stored; the first one's single object stays.
    assert leftovers(s3_env, bucket) == ([received.stored[0].key], [])


# -- what a file must be -------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 5, 64 * 1024])
async def test_files_are_judged_by_their_first_bytes_whatever_the_chunking(
    s3_env: s3.S3Server, bucket: str, sink: storage.UploadSink, chunk: int
) -> None:
    data = body(
        file("personImage", b"GIF89a" + b"\0" * 20, "me.png"),  # declared PNG, is a GIF
        file("clothingImages", _png()),
        file("clothingImages", b""),
        file("clothingImages", b"RIFF\0\0\0\0WEBX"),  # RIFF, but not WebP
        file("placeImage", JPEG_HEAD),  # short, but a JPEG
    )

    with pytest.raises(translate.RequestError) as info:
        await receive(data, sink, chunk=chunk)

    assert field_errors(info) == [
        ("personImage", "is not a JPEG, PNG or WebP image"),
        ("clothingImages[1]", "is an empty file"),
        ("clothingImages[2]", "is not a JPEG, PNG or WebP image"),
    ]
    assert leftovers(s3_env, bucket) == ([], [])  # the good files were removed too


async def test_a_short_file_that_is_no_image_is_refused_at_its_end(
    s3_env: s3.S3Server, bucket: str, sink: storage.UploadSink
) -> None:
    with pytest.raises(translate.RequestError) as info:
        await receive(body(file("placeImage", b"GIF8")), sink, chunk=1)
    assert field_errors(info) == [("placeImage", "is not a JPEG, PNG or WebP image")]
    assert leftovers(s3_env, bucket) == ([], [])


async def test_a_file_in_a_text_field_is_named_and_not_stored(
    s3_env: s3.S3Server, bucket: str, sink: storage.UploadSink
) -> None:
    data = body(file("prompt", _png()), file("personImage", _png()), field("steps", "8"))
    with pytest.raises(translate.RequestError) as info:
        await receive(data, sink, chunk=11)
    assert field_errors(info) == [("prompt", "must not be a file")]
    assert leftovers(s3_env, bucket) == ([], [])


async def test_a_file_larger_than_a_part_is_stored_whole(
    s3_env: s3.S3Server, bucket: str, sink: storage.UploadSink
) -> None:
    big = _png() + bytes(range(256)) * (storage.PART_BYTES // 256 + 100)
    limits = uploads.Limits(max_request_bytes=4 * storage.PART_BYTES, max_file_bytes=len(big))

    received = await receive(body(file("placeImage", big)), sink, limits=limits, chunk=300_000)

    (one,) = received.stored
    assert one.key == f"{PREFIX}{hashlib.sha256(big).hexdigest()[:32]}.png"
    assert stored(s3_env, bucket, one.key) == (big, "image/png")
    assert leftovers(s3_env, bucket) == ([one.key], [])


# -- malformed bodies ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "data", "detail"),
    [
        ("multipart/form-data", body(field("a", "b")), "no boundary in Content-Type"),
        ("multipart/form-data; boundary=", body(field("a", "b")), "no boundary in Content-Type"),
        (CONTENT_TYPE, body(b"Content-Type: text/plain\r\n\r\nx"),
         "a part has no Content-Disposition name"),
        (CONTENT_TYPE, body(b'Content-Disposition: form-data; filename="a.png"\r\n\r\nx'),
         "a part has no Content-Disposition name"),
    ],
)  # fmt: skip
async def test_a_malformed_body_is_named(
    sink: storage.UploadSink, content_type: str, data: bytes, detail: str
) -> None:
    with pytest.raises(translate.RequestError) as info:
        await receive(data, sink, content_type=content_type)
    assert field_errors(info) == [("body", f"malformed multipart body ({detail})")]


async def test_a_body_the_parser_refuses_is_malformed(sink: storage.UploadSink) -> None:
    with pytest.raises(translate.RequestError) as info:
        await receive(b"not a multipart body at all\r\n", sink)
    ((where, message),) = field_errors(info)
    assert where == "body" and message.startswith("malformed multipart body (")


@pytest.mark.parametrize("cut", [60, 150, -20])  # in headers, in data, before the end
async def test_a_body_that_ends_inside_a_part_is_malformed_and_leaves_nothing(
    s3_env: s3.S3Server, bucket: str, sink: storage.UploadSink, cut: int
) -> None:
    data = body(file("personImage", _png()), field("prompt", "on a beach"))
    with pytest.raises(translate.RequestError) as info:
        await receive(data[:cut], sink, chunk=16)
    assert field_errors(info) == [
        ("body", "malformed multipart body (the body ends inside a part)")
    ]
    assert leftovers(s3_env, bucket) == ([], [])


# -- what stays in the bucket after a failure ----------------------------------------------------


async def test_an_idempotent_request_keeps_its_finished_files_and_aborts_the_open_one(
    s3_env: s3.S3Server, bucket: str, sink: storage.UploadSink
) -> None:
    person = _png()
    big = _png("black") + b"\0" * (storage.PART_BYTES + 200_000)
    limits = uploads.Limits(
        max_request_bytes=storage.PART_BYTES + 100_000, max_file_bytes=len(big) + 1000
    )
    data = body(file("personImage", person), file("placeImage", big))

    with pytest.raises(bodies.BodyTooLarge):  # over the request limit inside the second file
        await receive(data, sink, limits=limits, remove_on_error=False, chunk=256 * 1024)

    key = f"{PREFIX}{hashlib.sha256(person).hexdigest()[:32]}.png"
    assert leftovers(s3_env, bucket) == ([key], [])  # the open multipart upload was aborted


async def test_removing_stored_uploads_is_best_effort(
    s3_env: s3.S3Server, bucket: str, sink: storage.UploadSink
) -> None:
    received = await receive(body(file("personImage", _png()), file("placeImage", _webp())), sink)
    gone = uploads.Stored(field="x", uri="s3://elsewhere/k", key="no-such-key", sha256="0" * 64)
    elsewhere = storage.Storage(
        inputs_bucket="no-such-bucket-for-removal",
        inputs_prefix="uploads/",
        presign_expires_seconds=60,
        client=s3_env.client(),
    ).upload_sink(owner="alice", job_name="job-1")

    await uploads.remove(elsewhere, received.stored)  # S3 refuses each removal: nothing raised
    assert len(leftovers(s3_env, bucket)[0]) == 2
    await uploads.remove(sink, [gone, *received.stored])
    assert leftovers(s3_env, bucket) == ([], [])
