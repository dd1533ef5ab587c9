"""API keys: parsing the hashed key file, checking a presented key, minting new keys.

The key file is mounted from a Kubernetes Secret (``Settings.api_keys_file``) and holds only
hashes, one ``<id>: <hash>`` per line (a YAML mapping)::

    mobile-app: sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
    partner-x: scrypt:16384:8:1:<salt base64>:<hash base64>

The id becomes the owner label of the key's jobs, so it must be a valid label value. ``sha256``
suits the long random keys :func:`new_key` mints; ``scrypt`` suits keys people chose.

A key names its entry: ``cgw_<key id>~<secret>`` (:func:`new_key` mints them so). So a presented
key costs at most one scrypt derivation, of the entry it names, however many entries the file
has; a key without that prefix is compared with the ``sha256`` entries only (cheap), never with a
``scrypt`` one. Anything not shaped like a key (:data:`KEY_SHAPE`) is refused before any hashing.
Hashes are compared with :func:`hmac.compare_digest`. Which key ids exist is not a secret (they
are the owner labels of jobs), so naming an unknown one may answer sooner than a known one.

:class:`KeyRing` (used by the app's auth dependency) re-reads the file when it changes on disk, as
the kubelet updates a mounted Secret in place, so keys rotate without a restart; a malformed new
file keeps the last good keys. scrypt derivations run in a small thread pool, off the event loop,
with a bound on how many may wait: beyond it :class:`Busy` (a 503), so a flood of bad keys cannot
queue work without end.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import dataclasses
import hashlib
import hmac
import logging
import os
import pathlib
import re
import secrets
import threading
from collections.abc import Callable
from typing import Any

import yaml

from compose_gateway import naming

logger = logging.getLogger(__name__)

SCRYPT_DEFAULTS = (16384, 8, 1)
KEY_PREFIX = "cgw_"
ID_SEPARATOR = "~"
# Only bounds the cache's memory: a size one larger or smaller changes no result.
VERIFIED_CACHE_SIZE = 4096  # pragma: no mutate: NumberReplacer
MIN_DIGEST_BYTES = 16
MIN_SALT_BYTES = 16
# The most memory one scrypt derivation may take (hashlib's maxmem). Parameters that need more
# are refused when the key file is read, not at every request that presents the key.
SCRYPT_MAX_MEMORY = 256 * 1024 * 1024
# What a presented key may look like: RFC 6750 token characters, 16 to 512 of them.
KEY_SHAPE = re.compile(r"^[A-Za-z0-9._~+/=-]{16,512}$")
DERIVATION_THREADS = 2
DERIVATIONS_WAITING = 8


class Busy(Exception):
    """Too many key derivations are already waiting; the request should be retried."""


class KeyFileError(ValueError):
    """The key file is malformed; the message names the entry and the problem."""


@dataclasses.dataclass(frozen=True)
class StoredKey:
    key_id: str
    scheme: str
    digest: bytes
    # Set for scrypt entries only; a sha256 entry never reads them, so their defaults matter not.
    salt: bytes = b""
    n: int = 0  # pragma: no mutate: NumberReplacer
    r: int = 0  # pragma: no mutate: NumberReplacer
    p: int = 0  # pragma: no mutate: NumberReplacer

    def matches(self, presented: bytes, presented_sha256: bytes) -> bool:
        # A scheme is "sha256" or "scrypt" (parse_hash), and "scrypt" < "sha256": `>=` for `==`
        # is the same test (here, in candidates and in KeyRing.identify).
        if self.scheme == "sha256":  # pragma: no mutate: *_Eq_GtE
            return hmac.compare_digest(self.digest, presented_sha256)
        derived = hashlib.scrypt(
            presented,
            salt=self.salt,
            n=self.n,
            r=self.r,
            p=self.p,
            maxmem=SCRYPT_MAX_MEMORY,
            dklen=len(self.digest),
        )
        return hmac.compare_digest(self.digest, derived)


def parse_hash(key_id: str, text: str) -> StoredKey:
    """``sha256:<hex>`` or ``scrypt:<n>:<r>:<p>:<salt b64>:<hash b64>``."""
    parts = text.strip().split(":")
    try:
        if parts[0] == "sha256" and len(parts) == 2:
            digest = bytes.fromhex(parts[1])
            if len(digest) != 32:
                raise ValueError("a sha256 digest has 64 hex digits")
            return StoredKey(key_id, "sha256", digest)
        if parts[0] == "scrypt" and len(parts) == 6:
            n, r, p = (int(v) for v in parts[1:4])
            salt = base64.b64decode(parts[4], validate=True)
            digest = base64.b64decode(parts[5], validate=True)
            # n < 2 covers the only n without a set bit (0): `>` for `!=` is the same test.
            if n < 2 or n.bit_count() != 1 or r < 1 or p < 1:  # pragma: no mutate: *_NotEq_Gt
                raise ValueError("bad scrypt parameters: n a power of 2, r and p at least 1")
            if len(digest) < MIN_DIGEST_BYTES:
                raise ValueError(f"a scrypt digest has at least {MIN_DIGEST_BYTES} bytes")
            if len(salt) < MIN_SALT_BYTES:
                raise ValueError(f"a scrypt salt has at least {MIN_SALT_BYTES} bytes")
            # Parameters hashlib accepts but OpenSSL refuses would fail every request with
            # the key: refused here, naming the entry.
            if scrypt_memory(n, r, p) > SCRYPT_MAX_MEMORY:
                raise ValueError(
                    f"scrypt parameters n={n}, r={r}, p={p} need {scrypt_memory(n, r, p)} bytes"
                    f" of memory, more than the limit of {SCRYPT_MAX_MEMORY}"
                )
            # Within the memory limit this can only happen with r = 1 (n >= 2**16), where
            # 16 ** r is 16 * r: `**` for `*` cannot change the result.
            if n.bit_length() > 16 * r:  # pragma: no mutate: *_Mul_Pow
                raise ValueError(f"scrypt parameters n={n}, r={r}: n must be below 2**(16 * r)")
            return StoredKey(key_id, "scrypt", digest, salt=salt, n=n, r=r, p=p)
    except ValueError as error:
        raise KeyFileError(f"{key_id}: {error}") from None
    raise KeyFileError(f"{key_id}: expected 'sha256:<hex>' or 'scrypt:<n>:<r>:<p>:<salt>:<hash>'")


def scrypt_memory(n: int, r: int, p: int) -> int:
    """The bytes one scrypt derivation allocates (what OpenSSL checks against maxmem)."""
    return 128 * r * (n + 2 + p)


def parse_key_file(text: str) -> tuple[StoredKey, ...]:
    """Every key of a key file (a YAML mapping of id to hash)."""
    try:
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise KeyFileError(f"not YAML: {error}") from None
    if data is None:
        return ()
    if not isinstance(data, dict):
        raise KeyFileError("expected one '<id>: <hash>' per line")
    keys = []
    for key_id, value in data.items():
        if not isinstance(key_id, str) or not naming.KEY_ID_PATTERN.match(key_id):
            raise KeyFileError(
                f"{key_id!r}: a key id is 1-63 letters, digits, '.', '_' or '-', "
                "alphanumeric at both ends"
            )
        if not isinstance(value, str):
            raise KeyFileError(f"{key_id}: the hash must be a string")
        keys.append(parse_hash(key_id, value))
    return tuple(keys)


def claimed_id(presented: str) -> str | None:
    """The key id a ``cgw_<id>~<secret>`` key names, or None."""
    if not presented.startswith(KEY_PREFIX) or ID_SEPARATOR not in presented:
        return None
    key_id = presented[len(KEY_PREFIX) :].partition(ID_SEPARATOR)[0]
    return key_id if naming.KEY_ID_PATTERN.match(key_id) else None


def candidates(keys: tuple[StoredKey, ...], presented: str) -> tuple[StoredKey, ...]:
    """The entries a presented key is checked against: the one it names (when it names one),
    else every ``sha256`` entry; never more than one ``scrypt`` entry, none for a bad shape."""
    if not KEY_SHAPE.match(presented):
        return ()
    key_id = claimed_id(presented)
    if key_id is not None:
        return tuple(stored for stored in keys if stored.key_id == key_id)[:1]
    return tuple(
        stored
        for stored in keys
        if stored.scheme == "sha256"  # pragma: no mutate: *_Eq_GtE
    )


def identify(keys: tuple[StoredKey, ...], presented: str) -> str | None:
    """The id of the key ``presented`` matches, or None (synchronous: tools and tests)."""
    raw = presented.encode()
    presented_sha256 = hashlib.sha256(raw).digest()
    found: str | None = None
    for stored in candidates(keys, presented):
        if stored.matches(raw, presented_sha256) and found is None:
            found = stored.key_id
    return found


def hash_key(key: str, *, scheme: str = "sha256") -> str:
    """The line value to store for ``key``."""
    if scheme == "sha256":
        return "sha256:" + hashlib.sha256(key.encode()).hexdigest()
    if scheme == "scrypt":
        n, r, p = SCRYPT_DEFAULTS
        salt = secrets.token_bytes(16)
        digest = hashlib.scrypt(key.encode(), salt=salt, n=n, r=r, p=p, dklen=32)
        encoded = base64.b64encode(salt).decode(), base64.b64encode(digest).decode()
        return f"scrypt:{n}:{r}:{p}:{encoded[0]}:{encoded[1]}"
    raise ValueError(f"scheme: expected sha256 or scrypt, not {scheme!r}")


def new_key(key_id: str) -> str:
    """A fresh random API key (256 bits) that names its entry ``key_id``."""
    if not naming.KEY_ID_PATTERN.match(key_id):
        raise ValueError(f"not a key id: {key_id!r}")
    return f"{KEY_PREFIX}{key_id}{ID_SEPARATOR}{secrets.token_urlsafe(32)}"


class KeyRing:
    """The keys of the mounted file, re-read when the file changes."""

    def __init__(
        self,
        path: pathlib.Path,
        *,
        threads: int = DERIVATION_THREADS,
        waiting: int = DERIVATIONS_WAITING,
        on_reload_error: Callable[[str], None] | None = None,
    ) -> None:
        self._path: pathlib.Path | None = path  # None: fixed keys, no file
        self._stamp: tuple[int, int] | None = None
        self._keys: tuple[StoredKey, ...] = ()
        self._loaded = False
        self._lock = threading.Lock()
        # sha256 of recently verified keys -> key id, so a scrypt key costs one derivation per
        # key file version, not one per request. Emptied whenever the file is re-read.
        self._verified: dict[bytes, str] = {}
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix="key-derivation"
        )
        self._waiting_limit = threads + waiting
        self._in_flight = 0
        self._on_reload_error = on_reload_error
        self.derivations = 0
        self.error: str | None = None

    @classmethod
    def from_keys(cls, keys: tuple[StoredKey, ...]) -> KeyRing:
        """A ring with fixed keys and no file (tests, tools)."""
        ring = cls(pathlib.Path(os.devnull))
        ring._path = None
        ring._keys = keys
        ring._loaded = True
        return ring

    @property
    def loaded(self) -> bool:
        """Whether a key file has ever been read successfully (the ring has keys to serve)."""
        self.keys()
        return self._loaded

    def keys(self) -> tuple[StoredKey, ...]:
        """The current keys; a malformed new file keeps the previous keys (and sets ``error``)."""
        if self._path is None:
            return self._keys
        try:
            info = self._path.stat()
        except OSError as error:
            self._failed(f"{self._path}: {error.strerror}", stamp=None)
            return self._keys
        stamp = (info.st_mtime_ns, info.st_size)
        if stamp != self._stamp:
            with self._lock:
                try:
                    self._keys = parse_key_file(self._path.read_text())
                    self._verified = {}
                    self._loaded = True
                    self.error = None
                    self._stamp = stamp
                except (OSError, KeyFileError) as error:
                    self._failed(f"{self._path}: {error}", stamp=stamp)
        return self._keys

    def _failed(self, message: str, *, stamp: tuple[int, int] | None) -> None:
        """Keep the last good keys; report a new problem once (log and callback)."""
        if message != self.error:
            logger.error("API key file not (re)loaded, the last good keys stay: %s", message)
            if self._on_reload_error is not None:
                self._on_reload_error(message)
        self.error = message
        # Remembering the stamp of a malformed file only spares reading it again: the keys kept
        # and the reports are the same either way (so `is` for `is not`, or a `not`, is too).
        if stamp is not None:  # pragma: no mutate: *_IsNot_Is, AddNot
            self._stamp = stamp

    def cached(self, presented: str) -> str | None:
        """The key id of a key verified since the file was last read, without hashing more
        than one sha256."""
        self.keys()
        return self._verified.get(hashlib.sha256(presented.encode()).digest())

    async def identify(self, presented: str) -> str | None:
        """The key id ``presented`` matches, or None. Busy when derivations are saturated."""
        keys = self.keys()
        if not KEY_SHAPE.match(presented):
            return None
        raw = presented.encode()
        digest = hashlib.sha256(raw).digest()
        cached = self._verified.get(digest)
        if cached is not None:
            return cached
        found: str | None = None
        for stored in candidates(keys, presented):
            if stored.scheme == "sha256":  # pragma: no mutate: *_Eq_GtE
                matched = stored.matches(raw, digest)
            else:
                matched = await self._derive(stored, raw, digest)
            if matched and found is None:
                found = stored.key_id
        if found is not None:
            # The cache grows by one entry at a time, so it reaches the size exactly before it
            # could pass it: `==` for `>=` cannot change when it is emptied.
            if len(self._verified) >= VERIFIED_CACHE_SIZE:  # pragma: no mutate: *_GtE_Eq
                self._verified.clear()
            self._verified[digest] = found
        return found

    async def _derive(self, stored: StoredKey, raw: bytes, digest: bytes) -> bool:
        # In flight grows by one at a time up to the limit and no further: `==` for `>=` is the
        # same test.
        if self._in_flight >= self._waiting_limit:  # pragma: no mutate: *_GtE_Eq
            raise Busy("too many API key checks in progress")
        self._in_flight += 1
        self.derivations += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._pool, stored.matches, raw, digest)
        finally:
            self._in_flight -= 1

    def close(self) -> None:
        """Stop the derivation threads; checks still waiting for one are cancelled."""
        # Waiting (`wait=True`) would only make close() return after the running derivations
        # (one per thread, well under a second each) instead of before: no result changes.
        self._pool.shutdown(wait=False, cancel_futures=True)  # pragma: no mutate: *FalseWithTrue
