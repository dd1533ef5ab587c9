"""API keys without a gateway: the key file's entries, which entries a presented key is checked
against, minting keys, and the key ring's reloads and derivation limits.

Pure and quick (no cluster, no S3): the mutation config of ``compose_gateway.auth`` runs these
first, so most mutants are caught before a test needs the control plane.
"""

from __future__ import annotations

import base64
import hashlib

import pytest

from compose_gateway import auth


def test_a_key_costs_at_most_one_scrypt_derivation() -> None:
    many = "\n".join(f"k{i}: {auth.hash_key(f'cgw_k{i}~secret-number-{i}', scheme='scrypt')}"
                      for i in range(4))  # fmt: skip
    keys = auth.parse_key_file(many + f"\ns: {auth.hash_key('a-plain-sha256-key-000')}")

    assert [k.key_id for k in auth.candidates(keys, "cgw_k2~not-the-right-secret")] == ["k2"]
    assert [k.key_id for k in auth.candidates(keys, "cgw_nobody~whatever-secret")] == []
    # A key that names no entry is checked against the sha256 entries only.
    assert [k.key_id for k in auth.candidates(keys, "a-plain-sha256-key-000")] == ["s"]
    assert auth.identify(keys, "cgw_k2~secret-number-2") == "k2"
    assert auth.identify(keys, "cgw_k1~secret-number-2") is None
    for odd in ("short", "has space in it, long enough", "ключ-ключ-ключ-ключ", "x" * 513, ""):
        assert auth.candidates(keys, odd) == (), odd


def test_new_keys_name_their_entry() -> None:
    key = auth.new_key("partner-x")
    assert key.startswith("cgw_partner-x~")
    assert auth.claimed_id(key) == "partner-x"
    assert auth.KEY_SHAPE.match(key)
    with pytest.raises(ValueError, match="not a key id"):
        auth.new_key("-bad-")


def test_key_file_entries_are_checked() -> None:
    key = "a-long-enough-key-k"
    digest = hashlib.sha256(key.encode()).hexdigest()
    assert auth.identify(auth.parse_key_file(f"a: sha256:{digest}"), key) == "a"
    assert auth.identify(auth.parse_key_file(f"a: sha256:{digest}"), key.upper()) is None
    for text, fragment in (
        ("a: md5:abc", "expected 'sha256:<hex>'"),
        ("a: sha256:abcd", "64 hex digits"),
        ("-bad-: sha256:" + digest, "a key id is"),
        ("- a\n- b", "one '<id>: <hash>' per line"),
        ("a: [1]", "must be a string"),
        (f"a: scrypt:16384:8:1:{_b64(16)}:{_b64(15)}", "at least 16 bytes"),
        (f"a: scrypt:16384:8:1:{_b64(15)}:{_b64(32)}", "salt has at least 16 bytes"),
        (f"a: scrypt:1000:8:1:{_b64(16)}:{_b64(32)}", "n a power of 2"),
        (f"a: scrypt:16384:0:1:{_b64(16)}:{_b64(32)}", "r and p at least 1"),
    ):
        try:
            auth.parse_key_file(text)
        except auth.KeyFileError as error:
            assert fragment in str(error), (text, error)
        else:
            raise AssertionError(f"accepted: {text!r}")


def _b64(size: int) -> str:
    return base64.b64encode(b"\x01" * size).decode()


def test_a_scrypt_digest_of_exactly_16_bytes_is_accepted() -> None:
    (stored,) = auth.parse_key_file(f"a: scrypt:16384:8:1:{_b64(16)}:{_b64(16)}")
    assert (stored.scheme, len(stored.digest), len(stored.salt)) == ("scrypt", 16, 16)
