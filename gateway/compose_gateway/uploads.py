"""Streamed multipart uploads: from the request body to S3 without holding whole files.

Called by the ``POST /generate`` handler for ``multipart/form-data``. The body is fed, chunk by
chunk as it arrives, to python-multipart's streaming parser; each file's bytes go to an
:class:`storage.UploadStream`, which keeps at most one S3 part (:data:`storage.PART_BYTES`) in
memory before sending it. So one upload holds about one part, whatever the size of its files, and
a replica holds at most its :class:`Admission` budget: an upload that does not fit is refused
before its body is read (503 with ``Retry-After``), and so is a key's upload beyond its
concurrent-upload limit (429). Size limits (each file, the whole body) apply while streaming.

Files are checked by content (JPEG, PNG or WebP magic bytes, not the declared type) and stored
under ``<inputs prefix><owner>/<job name>/<sha256 of the content>.<ext>``, so a replayed request
names the same objects. What :func:`receive` returns is the form as a JSON-like payload with
each file replaced by its ``s3://`` URI, and the stored objects with the SHA-256 of each (hashed
as the bytes stream through: the job declares it, so the inference image checks what it fetches
and keys result reuse on it; and for clean-up when the request then fails).
"""

from __future__ import annotations

import codecs
import collections
import contextlib
import dataclasses
import hashlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import python_multipart
from python_multipart import exceptions as multipart_exceptions
from python_multipart import multipart

from compose_api import models
from compose_gateway import bodies, storage, translate

IMAGE_FIELDS = ("personImage", "clothingImages", "placeImage")
LIST_FIELDS = frozenset({"clothingImages", translate.CATEGORIES_FIELD})
MAX_FILES = 2 + models.MAX_CLOTHING_ITEMS
MAX_FIELDS = 64
MAX_FIELD_BYTES = 64 * 1024
RETRY_AFTER_SECONDS = 2


class UploadsBusy(Exception):
    """This replica's upload buffers are all in use: retry after ``retry_after`` seconds."""

    def __init__(self, retry_after: int) -> None:
        self.retry_after = retry_after
        super().__init__(
            "this gateway replica is receiving as many uploads as it can hold; retry later"
        )


class TooManyUploads(Exception):
    """This key already has as many uploads in progress as it may."""

    def __init__(self, limit: int, retry_after: int) -> None:
        self.limit = limit
        self.retry_after = retry_after
        super().__init__(
            f"this API key already has {limit} uploads in progress; wait for one to finish"
        )


class Admission:
    """Uploads in progress on this replica: a budget of buffer bytes, and a count per key.

    Every upload reserves ``per_upload_bytes`` (the most it holds in memory at once) for as long
    as it runs. Non-blocking: an upload that does not fit is refused at once, so a queue of
    waiting bodies never builds up in memory either.
    """

    def __init__(self, *, budget_bytes: int, per_upload_bytes: int, per_key: int) -> None:
        self.budget_bytes = budget_bytes
        self.per_upload_bytes = per_upload_bytes
        self.per_key = per_key
        self.in_flight_bytes = 0
        self._by_key: collections.Counter[str] = collections.Counter()

    @contextlib.contextmanager
    def admit(self, owner: str) -> Iterator[None]:
        """Hold a slot for one upload of ``owner``; UploadsBusy or TooManyUploads otherwise."""
        # A key's count grows one at a time and is refused on reaching the limit, never past it:
        # `==` for `>=` is the same test.
        if self._by_key[owner] >= self.per_key:  # pragma: no mutate: *_GtE_Eq
            raise TooManyUploads(self.per_key, RETRY_AFTER_SECONDS)
        if self.in_flight_bytes + self.per_upload_bytes > self.budget_bytes:
            raise UploadsBusy(RETRY_AFTER_SECONDS)
        self.in_flight_bytes += self.per_upload_bytes
        self._by_key[owner] += 1
        try:
            yield
        finally:
            self.in_flight_bytes -= self.per_upload_bytes
            self._by_key[owner] -= 1
            if not self._by_key[owner]:
                del self._by_key[owner]  # no entry left behind per key ever seen


# Nothing assigns the fields of Limits or Stored; frozen only says so (False changes nothing).
@dataclasses.dataclass(frozen=True)  # pragma: no mutate: ReplaceTrueWithFalse
class Limits:
    max_request_bytes: int
    max_file_bytes: int


@dataclasses.dataclass(frozen=True)  # pragma: no mutate: ReplaceTrueWithFalse
class Stored:
    """One stored upload: the form field it fills and where it is."""

    field: str
    uri: str
    key: str
    sha256: str  # of the whole content


@dataclasses.dataclass
class _File:
    field: str
    stream: storage.UploadStream | None
    size: int = 0
    head: bytes = b""
    hasher: Any = dataclasses.field(default_factory=hashlib.sha256)
    problem: str | None = None


@dataclasses.dataclass
class _Part:
    begun: bool = False  # between the parser's part begin and part end
    name: str = ""
    disposition: bytes = b""
    text: bytearray = dataclasses.field(default_factory=bytearray)
    file: _File | None = None
    is_file: bool = False


@dataclasses.dataclass
class Received:
    """The form as a JSON-like payload (files as their s3:// URIs) and what was stored."""

    payload: dict[str, Any]
    stored: list[Stored]

    def digests(self) -> dict[str, str]:
        """The SHA-256 of each stored file, by its ``s3://`` URI."""
        return {item.uri: item.sha256 for item in self.stored}


async def receive(
    stream: AsyncIterator[bytes],
    *,
    content_type: str,
    declared_length: str | None,
    limits: Limits,
    sink: storage.UploadSink,
    remove_on_error: bool,
) -> Received:
    """Parse a multipart body from ``stream``, storing each file in ``sink`` as it arrives.

    On any error, unfinished objects are aborted and, with ``remove_on_error``, finished ones
    are removed, before the error propagates (an idempotent request keeps them: a replay of an
    earlier request names the same objects, which its job may already use). RequestError names
    each bad field, BodyTooLarge the field over its limit.
    """
    if (
        declared_length is not None
        and declared_length.isdigit()
        and int(declared_length) > limits.max_request_bytes
    ):
        raise bodies.BodyTooLarge(limits.max_request_bytes)
    receiver = _Receiver(limits=limits, sink=sink)
    try:
        await receiver.run(stream, content_type)
    except BaseException:
        await receiver.discard(remove_stored=remove_on_error)
        raise
    return Received(payload=receiver.payload(), stored=receiver.stored)


class _Receiver:
    def __init__(self, *, limits: Limits, sink: storage.UploadSink) -> None:
        self._limits = limits
        self._sink = sink
        self._events: list[tuple[str, bytes]] = []
        self._part = _Part()
        self._header_name = b""
        self._header_value = b""
        self._charset = "utf-8"
        self._files = 0
        self._fields = 0
        self._values: dict[str, list[Any]] = {}
        self._errors: list[translate.FieldError] = []
        self._open: list[storage.UploadStream] = []
        self.stored: list[Stored] = []

    # --- the parser's callbacks only record events; run() acts on them between writes

    def _on(self, name: str) -> Callable[..., None]:
        # python-multipart passes start and end whenever it passes data; without data they are
        # unused, so their defaults cannot change what is recorded.
        def record(
            data: bytes = b"",
            start: int = 0,  # pragma: no mutate: NumberReplacer
            end: int = 0,  # pragma: no mutate: NumberReplacer
        ) -> None:
            self._events.append((name, data[start:end] if data else b""))

        return record

    async def run(self, stream: AsyncIterator[bytes], content_type: str) -> None:
        _, options = multipart.parse_options_header(content_type)
        charset = options.get(b"charset", b"utf-8")
        try:
            self._charset = codecs.lookup(charset.decode("latin-1")).name
        except LookupError:
            self._charset = "latin-1"
        boundary = options.get(b"boundary")
        if not boundary:
            raise _malformed("no boundary in Content-Type")
        callbacks: Any = {
            name: self._on(name)
            for name in (
                "on_part_begin",
                "on_part_data",
                "on_part_end",
                "on_header_field",
                "on_header_value",
                "on_header_end",
                "on_headers_finished",
            )
        }
        parser = python_multipart.MultipartParser(boundary, callbacks)
        total = 0
        try:
            async for chunk in stream:
                total += len(chunk)
                if total > self._limits.max_request_bytes:
                    raise bodies.BodyTooLarge(self._limits.max_request_bytes)
                parser.write(chunk)
                await self._drain()
            parser.finalize()
            await self._drain()
        except multipart_exceptions.FormParserError as error:
            raise _malformed(str(error)) from None
        if self._part.begun:  # even within its headers, before a name is known
            raise _malformed("the body ends inside a part")
        if self._errors:
            raise translate.RequestError(self._errors)

    async def _drain(self) -> None:
        events, self._events = self._events, []
        for name, data in events:
            match name:
                case "on_part_begin":
                    self._part = _Part(begun=True)
                case "on_header_field":
                    self._header_name += data
                case "on_header_value":
                    self._header_value += data
                case "on_header_end":
                    if self._header_name.lower() == b"content-disposition":
                        self._part.disposition = self._header_value
                    self._header_name = self._header_value = b""
                case "on_headers_finished":
                    self._begin_part()
                case "on_part_data":
                    await self._data(data)
                case "on_part_end":
                    await self._end_part()
                    self._part = _Part()

    def _begin_part(self) -> None:
        part = self._part
        _, options = multipart.parse_options_header(part.disposition)
        if b"name" not in options:
            raise _malformed("a part has no Content-Disposition name")
        part.name = options[b"name"].decode(self._charset, errors="replace")
        if b"filename" not in options:
            self._fields += 1
            if self._fields > MAX_FIELDS:
                raise _malformed(f"more than {MAX_FIELDS} fields")
            return
        part.is_file = True
        self._files += 1
        if self._files > MAX_FILES:
            raise _malformed(f"more than {MAX_FILES} files")
        field = self._field_name(part.name)
        if part.name not in IMAGE_FIELDS:
            self._errors.append(translate.FieldError(field, "must not be a file"))
            part.file = _File(field=field, stream=None, problem="ignored")
            return
        stream = self._sink.open()
        self._open.append(stream)
        part.file = _File(field=field, stream=stream)

    def _field_name(self, name: str) -> str:
        if name in LIST_FIELDS:
            return f"{name}[{len(self._values.get(name, []))}]"
        return name

    async def _data(self, data: bytes) -> None:
        part = self._part
        if not part.is_file:
            if len(part.text) + len(data) > MAX_FIELD_BYTES:
                raise translate.RequestError(
                    [translate.FieldError(part.name, f"longer than {MAX_FIELD_BYTES} bytes")]
                )
            part.text.extend(data)
            return
        upload = part.file
        if upload is None:  # pragma: no cover - _begin_part always sets it for files
            return
        upload.size += len(data)
        if upload.size > self._limits.max_file_bytes:
            raise bodies.BodyTooLarge(self._limits.max_file_bytes, upload.field)
        if upload.problem is not None:
            return  # refused already: read past it, store nothing
        # The head stops growing at SNIFF_BYTES, where the file has been judged: `<=`, `!=` or
        # `is not` for `<` only lets a judged head through again, adding nothing to it.
        sniff = storage.SNIFF_BYTES
        if len(upload.head) < sniff:  # pragma: no mutate: *_Lt_LtE, *_Lt_NotEq, *_Lt_IsNot
            upload.head = (upload.head + data)[:sniff]
            # Judged as soon as the head is full: it never passes SNIFF_BYTES, so `==` or `is`
            # is the same test, and a head judged only at the part's end (`>`) gets the same
            # refusal there; judging early only spares sending the rest of the file to S3.
            if (
                len(upload.head) >= sniff  # pragma: no mutate: *_GtE_Eq, *_GtE_Is, *_GtE_Gt
                and storage.sniff_image(upload.head) is None
            ):
                await self._refuse(upload, "is not a JPEG, PNG or WebP image")
                return
        upload.hasher.update(data)
        if upload.stream is not None:
            await upload.stream.write(data)

    async def _refuse(self, upload: _File, problem: str) -> None:
        upload.problem = problem
        self._errors.append(translate.FieldError(upload.field, problem))
        # The body now fails with this error, and receive() aborts every stream still open:
        # aborting here (the stream is always set) only frees its buffer sooner.
        if upload.stream is not None:  # pragma: no mutate: *_IsNot_Is, AddNot
            await upload.stream.abort()
            self._open.remove(upload.stream)
            upload.stream = None

    async def _end_part(self) -> None:
        part = self._part
        if not part.is_file:
            self._add(part.name, part.text.decode(self._charset, errors="replace"))
            return
        upload = part.file
        if upload is None:  # pragma: no cover - _begin_part always sets it for files
            return
        if upload.problem is None:
            kind = storage.sniff_image(upload.head) if upload.size else None
            if not upload.size:
                await self._refuse(upload, "is an empty file")
            elif kind is None:
                await self._refuse(upload, "is not a JPEG, PNG or WebP image")
            elif upload.stream is not None:
                extension, media_type = kind
                digest = upload.hasher.hexdigest()
                key = self._sink.key(f"{digest[:32]}.{extension}")
                uri = await upload.stream.finish(key, media_type)
                self._open.remove(upload.stream)
                self.stored.append(Stored(field=upload.field, uri=uri, key=key, sha256=digest))
                self._add(part.name, uri)
                return
        self._add(part.name, None)

    def _add(self, name: str, value: Any) -> None:
        values = self._values.setdefault(name, [])
        if name not in LIST_FIELDS and values:
            self._errors.append(translate.FieldError(name, "given more than once"))
            return
        values.append(value)

    def payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {}
        for name, values in self._values.items():
            if name in LIST_FIELDS:
                payload[name] = values
            else:
                (payload[name],) = values  # _add keeps one value of any other field
        return payload

    async def discard(self, *, remove_stored: bool) -> None:
        """Abort unfinished objects and (``remove_stored``) remove the finished ones."""
        for stream in self._open:
            with contextlib.suppress(Exception):
                await stream.abort()
        self._open.clear()
        if remove_stored:
            await remove(self._sink, self.stored)


async def remove(sink: storage.UploadSink, stored: list[Stored]) -> None:
    """Remove stored uploads (best effort: a leftover is only an orphan object)."""
    for item in stored:
        with contextlib.suppress(Exception):
            await sink.remove(item.key)


def _malformed(detail: str) -> translate.RequestError:
    return translate.RequestError(
        [translate.FieldError("body", f"malformed multipart body ({detail})")]
    )
