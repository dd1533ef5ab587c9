"""S3: storing uploaded inputs and handing out result URLs.

The upload handler of ``POST /generate`` stores each multipart file in the inputs bucket under
the caller's prefix and references it by ``s3://`` URI; every view of a succeeded job turns the
result's ``s3://`` URI into the URL a client downloads: ``<CDN base URL>/<key>`` when one is
configured, else a presigned HTTPS GET URL (computed locally by boto3: no request to S3). boto3 is
blocking, so uploads run in a worker thread.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from typing import Any

import boto3
from botocore import config as botocore_config

from compose_gateway import settings as settings_module

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
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp", "image/webp"
    return None


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """(bucket, key) of ``s3://bucket/key``; ValueError otherwise."""
    parts = urllib.parse.urlsplit(uri)
    key = parts.path.lstrip("/")
    if parts.scheme != "s3" or not parts.netloc or not key:
        raise ValueError(f"not an s3://bucket/key URI: {uri!r}")
    return parts.netloc, key


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

    async def put_upload(self, *, owner: str, name: str, data: bytes, content_type: str) -> str:
        """Store one uploaded file as ``<prefix><owner>/<name>``; returns its s3:// URI."""
        if not self.inputs_bucket:
            raise RuntimeError("no inputs bucket configured")
        key = f"{self.inputs_prefix}{owner}/{name}"
        await asyncio.to_thread(
            self._client.put_object,
            Bucket=self.inputs_bucket,
            Key=key,
            Body=data,
            ContentType=content_type,
        )
        return f"s3://{self.inputs_bucket}/{key}"

    def result_url(self, s3_uri: str) -> str:
        """The URL a client downloads the result from."""
        bucket, key = parse_s3_uri(s3_uri)
        if self._cdn:
            return f"{self._cdn}/{urllib.parse.quote(key)}"
        url: str = self._client.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=self._expires
        )
        return url
