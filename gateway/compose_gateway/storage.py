"""S3: storing uploaded inputs and handing out result URLs.

The upload handler of ``POST /generate`` streams each multipart file into the inputs bucket under
the caller's prefix (:class:`UploadStream`: one S3 part in memory at most; files larger than a
part go up as a multipart upload under a staging key, then are copied to their content-addressed
key) and references it by ``s3://`` URI; every view of a succeeded job turns the
result's ``s3://`` URI into the URL a client downloads: ``<CDN base URL>/<key>`` when one is
configured, else a presigned HTTPS GET URL (computed locally by boto3: no request to S3). boto3 is
blocking, so uploads run in a worker thread.
"""

from __future__ import annotations

import asyncio
import urllib.parse
import uuid
from typing import Any

import boto3
from botocore import config as botocore_config
from botocore import exceptions as botocore_exceptions

from compose_gateway import settings as settings_module

# S3's smallest part of a multipart upload (but the last): the most one upload holds in memory.
PART_BYTES = 5 * 1024 * 1024

# What sniff_image() needs at most: RIFF, a 4-byte size, WEBP.
SNIFF_BYTES = 12
# Magic numbers of the accepted image types: (prefix, extension, content type).
_SIGNATURES: tuple[tuple[bytes, str, str], ...] = (
    (b"\xff\xd8\xff", "jpg", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png", "image/png"),
)


def sniff_image(data: bytes) -> tuple[str, str] | None:
    """(extension, content type) of a JPEG, PNG or WebP by its first bytes, else None."""
    for magic, extension, content_type in _SIGNATURES:
        if data.startswith(magic):
            return extension, content_type
    if len(data) >= SNIFF_BYTES and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp", "image/webp"
    return None


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """(bucket, key) of ``s3://bucket/key``; ValueError otherwise."""
    parts = urllib.parse.urlsplit(uri)
    key = parts.path.lstrip("/")
    if parts.scheme != "s3" or not parts.netloc or not key:
        raise ValueError(f"not an s3://bucket/key URI: {uri!r}")
    return parts.netloc, key


class StorageError(Exception):
    """S3 refused or did not answer while storing an upload."""


async def _call(function: Any, /, **kwargs: Any) -> Any:
    """One blocking S3 call in a worker thread; its failures as StorageError."""
    try:
        return await asyncio.to_thread(function, **kwargs)
    except (botocore_exceptions.BotoCoreError, botocore_exceptions.ClientError) as error:
        raise StorageError(f"S3 {function.__name__}: {error}") from error


class Storage:
    """Uploads and result URLs. ``client`` is a boto3 S3 client (built from settings if None)."""

    def __init__(
        self,
        *,
        inputs_bucket: str | None,
        inputs_prefix: str,
        presign_expires_seconds: int,
        cdn_base_url: str | None = None,
        client: Any = None,
        endpoint_url: str | None = None,
        region: str | None = None,
    ) -> None:
        self.inputs_bucket = inputs_bucket
        self.inputs_prefix = inputs_prefix
        self._expires = presign_expires_seconds
        self._cdn = cdn_base_url
        if client is None:
            client = boto3.client(
                "s3",
                endpoint_url=endpoint_url,
                region_name=region,
                config=botocore_config.Config(
                    signature_version="s3v4",
                    s3={"addressing_style": "path" if endpoint_url else "auto"},
                ),
            )
        self._client = client

    @classmethod
    def from_settings(cls, settings: settings_module.Settings) -> Storage:
        return cls(
            inputs_bucket=settings.inputs_bucket,
            inputs_prefix=settings.inputs_prefix,
            presign_expires_seconds=settings.presign_expires_seconds,
            cdn_base_url=settings.cdn_base_url,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.aws_region,
        )

    def owner_prefix(self, owner: str) -> str | None:
        """``s3://<inputs bucket>/<prefix><owner>/``: where one key's uploads live."""
        if not self.inputs_bucket:
            return None
        return f"s3://{self.inputs_bucket}/{self.inputs_prefix}{owner}/"

    def upload_sink(self, *, owner: str, job_name: str) -> UploadSink:
        """Where the uploads of one request go: ``<prefix><owner>/<job name>/``."""
        if not self.inputs_bucket:
            raise RuntimeError("no inputs bucket configured")
        return UploadSink(self, self.inputs_bucket, f"{self.inputs_prefix}{owner}/{job_name}/")

    def result_url(self, s3_uri: str) -> str:
        """The URL a client downloads the result from."""
        bucket, key = parse_s3_uri(s3_uri)
        if self._cdn:
            return f"{self._cdn}/{urllib.parse.quote(key)}"
        url: str = self._client.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=self._expires
        )
        return url

    def download_url(self, s3_uri: str, file_name: str) -> str | None:
        """A presigned URL of the result that browsers save as ``file_name`` (S3 answers it
        with ``Content-Disposition: attachment``); None with a CDN, whose URLs carry no such
        override."""
        if self._cdn:
            return None
        bucket, key = parse_s3_uri(s3_uri)
        disposition = f'attachment; filename="{file_name}"'
        url: str = self._client.generate_presigned_url(
            "get_object",
            Params={"Bucket": bucket, "Key": key, "ResponseContentDisposition": disposition},
            ExpiresIn=self._expires,
        )
        return url

    def result_sources(self) -> list[str]:
        """Where result URLs point, as Content-Security-Policy sources: the CDN's origin; else
        the S3 endpoint's (an S3-compatible server), or any ``*.amazonaws.com`` host for AWS
        itself (presigned URLs name the bucket in the host, global or regional)."""
        base = self._cdn or str(self._client.meta.endpoint_url)
        parts = urllib.parse.urlsplit(base)
        host = (parts.hostname or "").lower()
        if not self._cdn and (host == "amazonaws.com" or host.endswith(".amazonaws.com")):
            return ["https://*.amazonaws.com"]
        return [f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"]


class UploadSink:
    """The objects of one request's uploads, all under one key prefix."""

    def __init__(self, store: Storage, bucket: str, prefix: str) -> None:
        self._client = store._client
        self.bucket = bucket
        self.prefix = prefix

    def open(self) -> UploadStream:
        return UploadStream(self._client, self.bucket, f"{self.prefix}.partial-{uuid.uuid4().hex}")

    def key(self, file_name: str) -> str:
        return self.prefix + file_name

    async def remove(self, key: str) -> None:
        await _call(self._client.delete_object, Bucket=self.bucket, Key=key)


class UploadStream:
    """One object written in pieces, holding at most about one part in memory.

    Until a part's worth has arrived nothing is sent; :meth:`finish` then stores it with one PUT.
    Beyond that, a multipart upload to a staging key takes each full part as it fills, and
    :meth:`finish` completes it and copies it (server side) to its final key. Every S3 call runs
    in a worker thread (boto3 blocks).
    """

    def __init__(self, client: Any, bucket: str, staging_key: str) -> None:
        self._client = client
        self._bucket = bucket
        self._staging = staging_key
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []

    async def write(self, data: bytes) -> None:
        self._buffer.extend(data)
        if len(self._buffer) >= PART_BYTES:
            await self._send_part()

    async def _send_part(self) -> None:
        if self._upload_id is None:
            created = await _call(
                self._client.create_multipart_upload, Bucket=self._bucket, Key=self._staging
            )
            self._upload_id = str(created["UploadId"])
        body, self._buffer = self._buffer, bytearray()
        number = len(self._parts) + 1
        sent = await _call(
            self._client.upload_part,
            Bucket=self._bucket,
            Key=self._staging,
            UploadId=self._upload_id,
            PartNumber=number,
            Body=body,
        )
        self._parts.append({"PartNumber": number, "ETag": sent["ETag"]})

    async def finish(self, key: str, content_type: str) -> str:
        """Store what was written as ``key``; returns its s3:// URI."""
        if self._upload_id is None:
            body, self._buffer = self._buffer, bytearray()
            await _call(
                self._client.put_object,
                Bucket=self._bucket,
                Key=key,
                Body=body,
                ContentType=content_type,
            )
            return f"s3://{self._bucket}/{key}"
        if self._buffer:
            await self._send_part()
        await _call(
            self._client.complete_multipart_upload,
            Bucket=self._bucket,
            Key=self._staging,
            UploadId=self._upload_id,
            MultipartUpload={"Parts": self._parts},
        )
        self._upload_id = None
        try:
            await _call(
                self._client.copy_object,
                Bucket=self._bucket,
                Key=key,
                CopySource={"Bucket": self._bucket, "Key": self._staging},
                ContentType=content_type,
                MetadataDirective="REPLACE",
            )
        finally:
            await _call(self._client.delete_object, Bucket=self._bucket, Key=self._staging)
        return f"s3://{self._bucket}/{key}"

    async def abort(self) -> None:
        """Drop what was written (nothing stays in the bucket)."""
        self._buffer = bytearray()
        if self._upload_id is not None:
            upload_id, self._upload_id = self._upload_id, None
            await _call(
                self._client.abort_multipart_upload,
                Bucket=self._bucket,
                Key=self._staging,
                UploadId=upload_id,
            )
