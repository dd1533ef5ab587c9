"""Result reuse: a job that asks for an image an earlier job of its namespace made already gets
a copy of that result, with no model loaded and nothing generated.

``runner.Worker.run`` calls it in a stage of its own (``reuse``), after the inputs are fetched
and validated and before the face analysis; ``__main__`` gives the worker an :class:`Index`.

**What makes two jobs the same** (:func:`describe`, hashed by :func:`digest`): the SHA-256 of
each input's bytes as fetched (person, each garment with its category, in order, and place: the
contents, not the URIs, so a re-upload or another URL of the same bytes matches and a changed
byte does not), the parameters after the profile's pins with the seed set (prompt, negative
prompt, seed, steps, guidance, size, the three strengths: everything the pipeline reads), the
output format (the bytes stored), and of the profile everything that can change the pixels: its
name, dtype, every model source (URI, revision, subfolder, file selection, variant, checksum:
another revision is another model), its pipeline options, its identity gate (minimum similarity
and retries decide which seed's image is kept) and its safety check (an image accepted without
a check must not serve a profile that checks). Left out: the profile's description, image,
resources, placement and licence, which decide where and how the job runs, not what it makes;
and the job's name, bucket and prefix, which are where the result goes. :data:`SCHEME` and the
installed release of this package are in it too, so a release (or a change of the runner's
output, which bumps ``SCHEME``) never serves images of an earlier one.

**Where the index is**: in the results bucket, next to the results, one small JSON object per
description: ``<spec.output.prefix>.reuse/<namespace>/<digest>.json`` (no namespace can be
named ``.reuse``, so the index never mixes with a namespace's results). Every worker and pod
reads and writes the same objects, so the index is shared and survives restarts. It is scoped
per namespace (a namespace is a tenant): a job never learns of another namespace's jobs.

**Written** after a successful upload (:meth:`Index.record`), never for a failed or stopped run,
and not for a job with ``spec.output.reuse: false``. One PUT of a whole object: two jobs that
record the same description at once leave one of their two complete entries, never a mix.

**Reused** by copy (:meth:`Index.reuse`): S3 CopyObject of the earlier result to this job's own
key (``<prefix><namespace>/<name>/<uid>/result.<ext>``), server-side, with this job's metadata.
A copy, not a pointer, because results are deleted with their jobs (the operator's
``retention.deleteResults`` removes the object in the job's own folder): a pointer would break
when the earlier job goes, and the later job's retention would never remove what it hands out.
The copy's SHA-256 (S3 computes it during the copy) must equal the entry's, else the earlier
object changed and the job generates after all. The runner then rewrites the entry to point at
the new copy, the newest, which outlives the older ones under the same retention. A missing or
unreadable entry, a deleted result or any S3 error is a miss: the index never fails a job.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import functools
import hashlib
import importlib.metadata
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pydantic
from pydantic import alias_generators

from compose_api import models, profiles
from compose_inference import errors, images, retrying, storage, upload

log = logging.getLogger("compose_inference.reuse")

# Bump when the runner makes other bytes from the same description (a new step, another
# encoder setting): entries of the earlier scheme are then never matched.
SCHEME = 1
INDEX_FOLDER = ".reuse"
DISTRIBUTION = "nextunicorn-compose"
REUSED_FROM_METADATA = "reused-from"


@functools.cache
def release() -> str:
    """The installed release of this package ("unknown" when it is not installed); read once."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@dataclasses.dataclass(frozen=True)
class Scope:
    """Where one job's index lives (its results bucket and ``spec.output.prefix``) and which
    job it is."""

    bucket: str
    prefix: str
    job: models.JobReference

    def index_key(self, digest: str) -> str:
        return f"{self.prefix}{INDEX_FOLDER}/{self.job.namespace}/{digest}.json"

    def results_folder(self) -> str:
        """The namespace's results: the only objects an entry may point to."""
        return f"{self.prefix}{self.job.namespace}/"


# -- the description --------------------------------------------------------------------------


def hash_inputs(fetched: Sequence[tuple[str, bytes]], declared: Mapping[str, str]) -> list[str]:
    """The SHA-256 of each fetched input ``(field, bytes)``, in order; InputRejected naming the
    field when its declared ``sha256`` (``declared[field]``) differs from what was fetched."""
    found = []
    for field, data in fetched:
        digest = hashlib.sha256(data).hexdigest()
        expected = declared.get(field)
        if expected is not None and expected != digest:
            raise errors.InputRejected(
                f"{field}.sha256: the fetched image's SHA-256 is {digest}, not {expected} (the "
                "object changed after the job was made)"
            )
        found.append(digest)
    return found


def describe(
    *,
    person: str,
    clothing: Sequence[tuple[str, models.ClothingCategory | None]],
    place: str,
    params: models.Params,
    output_format: str,
    profile: profiles.ModelProfile,
) -> dict[str, Any]:
    """The canonical description of what a job makes (see the module docstring): input hashes
    (``clothing`` as ``(sha256, category)``), final parameters (pins applied, seed set), format
    and the profile's parts that change the pixels."""
    if params.seed is None:
        raise ValueError("params.seed: unset; the description needs the job's seed")
    return {
        "scheme": SCHEME,
        "release": release(),
        "inputs": {
            "person": person,
            "clothing": [
                {"sha256": digest, "category": None if category is None else str(category)}
                for digest, category in clothing
            ],
            "place": place,
        },
        "params": params.model_dump(mode="json", by_alias=True),
        "format": output_format,
        "profile": profile.model_dump(
            mode="json",
            by_alias=True,
            include={
                "name",
                "dtype",
                "models",
                "options",
                "min_identity_similarity",
                "identity_retries",
                "safety",
            },
        ),
    }


def digest(description: Mapping[str, Any]) -> str:
    """The SHA-256 of the description as canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(description, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


# -- the index --------------------------------------------------------------------------------


class Entry(pydantic.BaseModel):
    """One index object: the job whose result object holds the image, and that result."""

    model_config = pydantic.ConfigDict(
        alias_generator=alias_generators.to_camel, populate_by_name=True, extra="ignore"
    )

    version: int = 1
    digest: str
    job: models.JobReference
    result: models.Result
    recorded_at: datetime.datetime


class Index:
    """Reads and writes index entries, and copies reused results; one instance serves many jobs.

    Its S3 calls are retried on transient errors, briefly (the index only saves work): what
    still fails is logged and treated as a miss."""

    def __init__(
        self,
        *,
        s3_client: Any | None = None,
        backoff: retrying.Backoff = retrying.Backoff(attempts=2, base=0.2, cap=1.0),
        sleep: Callable[[float], None] = time.sleep,
        now: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC),
    ) -> None:
        self._s3 = s3_client
        self._backoff = backoff
        self._sleep = sleep
        self._now = now

    def _client(self) -> Any:
        if self._s3 is None:
            self._s3 = storage.make_client()
        return self._s3

    def _call(self, operation: Callable[[], Any]) -> Any:
        return retrying.call(
            operation, transient=storage.is_transient, backoff=self._backoff, sleep=self._sleep
        )

    def reuse(
        self,
        scope: Scope,
        key: str,
        *,
        target_key: str,
        output_format: str,
        metadata: Callable[[models.Result], Mapping[str, str]],
    ) -> models.Result | None:
        """On a hit: the earlier result copied to ``target_key`` (in the scope's bucket, with
        ``metadata(earlier result)`` as its S3 metadata), as this job's result, ``reused_from``
        naming the job it came from. None on a miss.

        An entry of this very job (an earlier attempt stored the result, then could not report
        it) is this job's own result: it is taken as it is, when still there, with no copy and
        no ``reused_from``."""
        entry = self._entry(scope, key, output_format)
        if entry is None:
            return None
        source = storage.parse_uri(entry.result.s3_uri)
        if entry.job.uid == scope.job.uid and source.key == target_key:
            return entry.result if self._stored(source, entry.result.sha256) else None
        meta = upload.ascii_metadata(metadata(entry.result))
        meta["sha256"] = entry.result.sha256
        meta[REUSED_FROM_METADATA] = f"{entry.job.namespace}/{entry.job.name}/{entry.job.uid}"
        try:
            copied = self._call(
                lambda: self._client().copy_object(
                    Bucket=scope.bucket,
                    Key=target_key,
                    CopySource={"Bucket": source.bucket, "Key": source.key},
                    MetadataDirective="REPLACE",
                    Metadata=meta,
                    ContentType=images.CONTENT_TYPES[output_format],
                    ChecksumAlgorithm="SHA256",
                )
            )
        except Exception as error:
            code = storage.error_code(error)
            if code in ("NoSuchKey", "404"):
                log.info("reuse: %s is gone (its job's retention): generating", source.uri)
            else:
                log.warning("reuse: copying %s failed (%s): generating", source.uri, error)
            return None
        target = storage.S3Location(bucket=scope.bucket, key=target_key)
        checksum = (copied.get("CopyObjectResult") or {}).get("ChecksumSHA256")
        if checksum is None:
            checksum = self._checksum(target)
        if checksum != _base64(entry.result.sha256):
            log.warning("reuse: %s changed since it was indexed: generating", source.uri)
            return None
        log.info("reuse: %s copied from %s", target.uri, source.uri)
        return entry.result.model_copy(
            update={"s3_uri": target.uri, "url": None, "reused_from": entry.job}
        )

    def record(self, scope: Scope, key: str, result: models.Result) -> None:
        """Offer ``result`` (this job's, just stored) to later jobs of the same description.
        Best effort: a failure is logged, the job has succeeded anyway."""
        entry = Entry(
            digest=key,
            job=scope.job,
            result=result.model_copy(update={"url": None, "reused_from": None}),
            recorded_at=self._now(),
        )
        body = entry.model_dump_json(by_alias=True, exclude_none=True).encode()
        index_key = scope.index_key(key)
        try:
            self._call(
                lambda: self._client().put_object(
                    Bucket=scope.bucket,
                    Key=index_key,
                    Body=body,
                    ContentType="application/json",
                )
            )
        except Exception as error:
            log.warning("reuse: writing s3://%s/%s failed: %s", scope.bucket, index_key, error)

    def _entry(self, scope: Scope, key: str, output_format: str) -> Entry | None:
        """The entry for ``key``, when there is one that may be used."""
        index_key = scope.index_key(key)
        try:
            response = self._call(
                lambda: self._client().get_object(Bucket=scope.bucket, Key=index_key)
            )
            text = response["Body"].read()
        except Exception as error:
            if storage.error_code(error) not in ("NoSuchKey", "404"):
                log.warning("reuse: reading s3://%s/%s failed: %s", scope.bucket, index_key, error)
            return None
        try:
            entry = Entry.model_validate_json(text)
            source = storage.parse_uri(entry.result.s3_uri)
        except (pydantic.ValidationError, ValueError) as error:
            log.warning("reuse: s3://%s/%s is not an entry: %s", scope.bucket, index_key, error)
            return None
        # Only a result of this namespace, in the same bucket, of the asked format: an entry
        # can never make a job copy another object its role could read.
        usable = (
            entry.version == 1
            and entry.digest == key
            and entry.job.namespace == scope.job.namespace
            and source.bucket == scope.bucket
            and source.key.startswith(scope.results_folder())
            and entry.result.format == output_format
        )
        if not usable:
            log.warning(
                "reuse: s3://%s/%s does not match this job: ignored", scope.bucket, index_key
            )
            return None
        return entry

    def _stored(self, location: storage.S3Location, sha256: str) -> bool:
        """Whether the object is there with this content (its ``sha256`` metadata)."""
        try:
            head = self._call(
                lambda: self._client().head_object(Bucket=location.bucket, Key=location.key)
            )
        except Exception as error:
            log.info("reuse: %s is not there (%s): generating", location.uri, error)
            return False
        return bool((head.get("Metadata") or {}).get("sha256") == sha256)

    def _checksum(self, target: storage.S3Location) -> str | None:
        """The copy's SHA-256 (base64) where the store did not return it: hashed from its body."""
        try:
            body = self._call(
                lambda: self._client().get_object(Bucket=target.bucket, Key=target.key)
            )["Body"].read()
        except Exception as error:
            log.warning("reuse: reading back %s failed: %s", target.uri, error)
            return None
        return base64.b64encode(hashlib.sha256(body).digest()).decode("ascii")


def _base64(hex_digest: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_digest)).decode("ascii")
