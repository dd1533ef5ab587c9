"""API keys: parsing the hashed key file, checking a presented key, minting new keys.

The key file is mounted from a Kubernetes Secret (``Settings.api_keys_file``) and holds only
hashes, one ``<id>: <hash>`` per line (a YAML mapping)::

    mobile-app: sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
    partner-x: scrypt:16384:8:1:<salt base64>:<hash base64>

The id becomes the owner label of the key's jobs, so it must be a valid label value. ``sha256``
suits the long random keys :func:`new_key` mints; ``scrypt`` suits keys people chose. Every stored
hash is compared with :func:`hmac.compare_digest`, and all of them are compared on every check, so
the time taken says nothing about which key or how much of it matched.

:class:`KeyRing` (used by the app's auth dependency) re-reads the file when it changes on disk, as
the kubelet updates a mounted Secret in place, so keys rotate without a restart.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import os
import pathlib
import secrets
import threading
from typing import Any

import yaml

from compose_gateway import naming

SCRYPT_DEFAULTS = (16384, 8, 1)
KEY_PREFIX = "cgw_"
VERIFIED_CACHE_SIZE = 4096


class KeyFileError(ValueError):
    """The key file is malformed; the message names the entry and the problem."""


@dataclasses.dataclass(frozen=True)
class StoredKey:
    key_id: str
    scheme: str
    digest: bytes
    salt: bytes = b""
    n: int = 0
    r: int = 0
    p: int = 0

    def matches(self, presented: bytes, presented_sha256: bytes) -> bool:
        if self.scheme == "sha256":
            return hmac.compare_digest(self.digest, presented_sha256)
        derived = hashlib.scrypt(
            presented,
            salt=self.salt,
            n=self.n,
            r=self.r,
            p=self.p,
            maxmem=256 * 1024 * 1024,
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
            if n < 2 or n & (n - 1) or r < 1 or p < 1 or len(digest) < 16:
                raise ValueError("bad scrypt parameters")
            return StoredKey(key_id, "scrypt", digest, salt=salt, n=n, r=r, p=p)
    except ValueError as error:
        raise KeyFileError(f"{key_id}: {error}") from None
    raise KeyFileError(f"{key_id}: expected 'sha256:<hex>' or 'scrypt:<n>:<r>:<p>:<salt>:<hash>'")


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


def identify(keys: tuple[StoredKey, ...], presented: str) -> str | None:
    """The id of the key ``presented`` matches, or None. Compares against every stored key."""
    raw = presented.encode()
    presented_sha256 = hashlib.sha256(raw).digest()
    found: str | None = None
    for stored in keys:
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


def new_key() -> str:
    """A fresh random API key (256 bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


class KeyRing:
    """The keys of the mounted file, re-read when the file changes."""

    def __init__(self, path: pathlib.Path) -> None:
        self._path = path
        self._stamp: tuple[int, int] | None = None
        self._keys: tuple[StoredKey, ...] = ()
        self._lock = threading.Lock()
        # sha256 of recently verified keys -> key id, so a scrypt key costs one derivation per
        # key file version, not one per request. Emptied whenever the file is re-read.
        self._verified: dict[bytes, str] = {}
        self.error: str | None = None

    @classmethod
    def from_keys(cls, keys: tuple[StoredKey, ...]) -> KeyRing:
        """A ring with fixed keys and no file (tests, tools)."""
        ring = cls(pathlib.Path(os.devnull))
        ring._keys = keys
        ring._stamp = (-1, -1)
        return ring

    def keys(self) -> tuple[StoredKey, ...]:
        """The current keys; a malformed new file keeps the previous keys (and sets ``error``)."""
        if self._stamp == (-1, -1):
            return self._keys
        try:
            info = self._path.stat()
        except OSError as error:
            self.error = f"{self._path}: {error.strerror}"
            return self._keys
        stamp = (info.st_mtime_ns, info.st_size)
        if stamp != self._stamp:
            with self._lock:
                try:
                    self._keys = parse_key_file(self._path.read_text())
                    self._verified = {}
                    self.error = None
                except (OSError, KeyFileError) as error:
                    self.error = f"{self._path}: {error}"
                self._stamp = stamp
        return self._keys

    def identify(self, presented: str) -> str | None:
        keys = self.keys()
        digest = hashlib.sha256(presented.encode()).digest()
        cached = self._verified.get(digest)
        if cached is not None:
            return cached
        found = identify(keys, presented)
        if found is not None:
            if len(self._verified) >= VERIFIED_CACHE_SIZE:
                self._verified.clear()
            self._verified[digest] = found
        return found
