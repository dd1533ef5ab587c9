"""API keys without a gateway: the key file's entries, which entries a presented key is checked
against, minting keys, and the key ring's reloads and derivation limits.

Pure and quick (no cluster, no S3): the mutation config of ``compose_gateway.auth`` runs these
first, so most mutants are caught before a test needs the control plane.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import os
import pathlib

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


def _scrypt(n: int, r: int, p: int, *, salt: int = 16, digest: int = 32) -> str:
    return f"scrypt:{n}:{r}:{p}:{_b64(salt)}:{_b64(digest)}"


def _refusal(text: str) -> str:
    with pytest.raises(auth.KeyFileError) as info:
        auth.parse_key_file(text)
    return str(info.value)


EXPECTED_FORM = "a: expected 'sha256:<hex>' or 'scrypt:<n>:<r>:<p>:<salt>:<hash>'"


@pytest.mark.parametrize(
    "value",
    [
        "sha256",  # no digest
        f"sha256:{'ab' * 32}:extra",
        f"scrypt:16384:8:1:{_b64(16)}",  # five fields
        f"{_scrypt(16384, 8, 1)}:extra",  # seven
        f"argon2:{'ab' * 32}",  # schemes sorting before and after the known ones
        f"zz:{'ab' * 32}",
        "argon2:16384:8:1:AAAA:AAAA",
        "zz:16384:8:1:AAAA:AAAA",
        f"SHA256:{'ab' * 32}",
    ],
)
def test_an_entry_of_no_known_form_is_refused_as_such(value: str) -> None:
    assert _refusal(f"a: '{value}'") == EXPECTED_FORM


def test_a_sha256_digest_has_exactly_64_hex_digits() -> None:
    key = "a-long-enough-key-k"
    digest = hashlib.sha256(key.encode()).hexdigest()
    (stored,) = auth.parse_key_file(f"a: sha256:{digest}")
    assert stored.digest == hashlib.sha256(key.encode()).digest()
    for wrong in (digest[:-2], digest + "ab", ""):
        assert _refusal(f"a: 'sha256:{wrong}'") == "a: a sha256 digest has 64 hex digits"
    assert "a:" in _refusal(f"a: sha256:{digest[:-1]}x")  # not hex


@pytest.mark.parametrize(
    ("n", "r", "p"), [(2, 1, 1), (4, 1, 1), (16384, 8, 1), (1024, 1, 3), (2**15, 1, 1)]
)
def test_scrypt_parameters_at_their_smallest_and_ordinary_are_accepted(
    n: int, r: int, p: int
) -> None:
    (stored,) = auth.parse_key_file(f"a: {_scrypt(n, r, p)}")
    assert (stored.scheme, stored.n, stored.r, stored.p) == ("scrypt", n, r, p)


@pytest.mark.parametrize(
    ("n", "r", "p"),
    [(1, 8, 1), (0, 8, 1), (-2, 8, 1), (3, 8, 1), (16385, 8, 1), (24576, 8, 1),
     (16384, 0, 1), (16384, -1, 1), (16384, 8, 0), (16384, 8, -1)],
)  # fmt: skip
def test_scrypt_parameters_out_of_range_are_refused(n: int, r: int, p: int) -> None:
    assert _refusal(f"a: {_scrypt(n, r, p)}") == (
        "a: bad scrypt parameters: n a power of 2, r and p at least 1"
    )


def test_a_salt_and_digest_longer_than_the_minimum_are_accepted() -> None:
    (stored,) = auth.parse_key_file(f"a: {_scrypt(16384, 8, 1, salt=32, digest=64)}")
    assert (len(stored.salt), len(stored.digest)) == (32, 64)
    assert "salt has at least 16 bytes" in _refusal(f"a: {_scrypt(16384, 8, 1, salt=0)}")


def test_a_salt_or_digest_that_is_not_base64_is_refused() -> None:
    # Characters outside base64 inside an otherwise valid value: not skipped, refused.
    salt, digest = _b64(16), _b64(32)
    for value in (
        f"scrypt:16384:8:1:{salt[:8]}!{salt[8:]}:{digest}",
        f"scrypt:16384:8:1:{salt}:{digest[:8]} {digest[8:]}",
    ):
        assert _refusal(f"a: '{value}'").startswith("a: "), value


def test_a_key_file_that_is_not_yaml_is_refused_as_such() -> None:
    assert _refusal("a: [unclosed").startswith("not YAML: ")
    assert _refusal("- a\n- b") == "expected one '<id>: <hash>' per line"


def test_the_memory_a_derivation_needs_is_what_openssl_allocates() -> None:
    for n, r, p in ((16, 1, 1), (1024, 8, 1), (256, 4, 3)):
        need = auth.scrypt_memory(n, r, p)
        hashlib.scrypt(b"key", salt=b"s" * 16, n=n, r=r, p=p, maxmem=need, dklen=16)
        with pytest.raises(ValueError, match="memory limit exceeded"):
            hashlib.scrypt(b"key", salt=b"s" * 16, n=n, r=r, p=p, maxmem=need - 1, dklen=16)


def test_scrypt_parameters_openssl_would_refuse_are_refused_with_the_file() -> None:
    # n=2**17, r=8 needs 128 * 8 * (2**17 + 2 + p) bytes: exactly 256 MiB at p = 2**17 - 2.
    (stored,) = auth.parse_key_file(f"a: {_scrypt(2**17, 8, 2**17 - 2)}")
    assert stored.p == 2**17 - 2
    assert _refusal(f"a: {_scrypt(2**17, 8, 2**17 - 1)}") == (
        f"a: scrypt parameters n=131072, r=8, p=131071 need {256 * 1024 * 1024 + 128 * 8} bytes"
        f" of memory, more than the limit of {256 * 1024 * 1024}"
    )
    # OpenSSL also wants n below 2**(16 r): 2**15 passes with r=1 (above), 2**16 does not.
    assert _refusal(f"a: {_scrypt(2**16, 1, 1)}") == (
        "a: scrypt parameters n=65536, r=1: n must be below 2**(16 * r)"
    )
    (stored,) = auth.parse_key_file(f"a: {_scrypt(2**16, 2, 1)}")
    assert stored.n == 2**16


def test_keys_with_costly_accepted_parameters_still_verify() -> None:
    # 2**15 * 8 needs 32 MiB and a little more: OpenSSL's default limit would refuse it.
    for n, r in ((2**15, 8), (2**15, 1)):
        salt = b"\x02" * 16
        digest = hashlib.scrypt(b"cgw_a~the-secret-value", salt=salt, n=n, r=r, p=1,
                                maxmem=auth.SCRYPT_MAX_MEMORY, dklen=32)  # fmt: skip
        line = f"a: scrypt:{n}:{r}:1:{base64.b64encode(salt).decode()}:"
        keys = auth.parse_key_file(line + base64.b64encode(digest).decode())
        assert auth.identify(keys, "cgw_a~the-secret-value") == "a", (n, r)
        assert auth.identify(keys, "cgw_a~the-secret-valuf") is None


def test_an_empty_key_file_holds_no_keys_and_odd_ids_are_refused() -> None:
    assert auth.parse_key_file("") == ()
    assert auth.parse_key_file("# no keys yet\n") == ()
    for text in (f"123: sha256:{'ab' * 32}", f"true: sha256:{'ab' * 32}", "a-: x"):
        assert "a key id is 1-63 letters" in _refusal(text), text


def test_a_hash_with_spaces_around_it_is_read() -> None:
    digest = hashlib.sha256(b"a-long-enough-key-k").hexdigest()
    (stored,) = auth.parse_key_file(f"a: '  sha256:{digest} '")
    assert stored.digest.hex() == digest


@pytest.mark.parametrize(
    ("presented", "claimed"),
    [
        ("cgw_bob~secret", "bob"),
        ("cgw_bob~secret~with~tildes", "bob"),
        ("cgw_partner-x.1~s", "partner-x.1"),
        ("cgw_bob", None),  # no separator
        ("bob~secret", None),  # no prefix
        ("xcgw_bob~secret", None),
        ("CGW_bob~secret", None),
        ("cgw_~secret", None),  # an empty id
        ("cgw_-bob~secret", None),  # not a key id
        ("cgw_bob-secret-without-a-tilde", None),
    ],
)
def test_the_id_a_key_names(presented: str, claimed: str | None) -> None:
    assert auth.claimed_id(presented) == claimed


def test_a_key_is_checked_only_if_its_length_is_16_to_512() -> None:
    digests = {size: hashlib.sha256(b"k" * size).hexdigest() for size in (15, 16, 512, 513)}
    keys = auth.parse_key_file("\n".join(f"s{n}: sha256:{d}" for n, d in digests.items()))
    assert auth.identify(keys, "k" * 16) == "s16"
    assert auth.identify(keys, "k" * 512) == "s512"
    assert auth.identify(keys, "k" * 15) is None
    assert auth.identify(keys, "k" * 513) is None


def test_a_key_naming_an_entry_is_checked_against_that_entry_only() -> None:
    shared = "cgw_a~the-same-secret-for-both"
    sha = hashlib.sha256(shared.encode()).hexdigest()
    keys = auth.parse_key_file(f"a: sha256:{'00' * 32}\nb: sha256:{sha}")
    # The key names a, whose hash is another: b's matching hash is not consulted.
    assert auth.candidates(keys, shared) == keys[:1]
    assert auth.identify(keys, shared) is None


def test_a_key_is_checked_against_one_entry_even_if_its_id_is_listed_twice() -> None:
    # A key file cannot list an id twice, but a ring of fixed keys (tools, tests) can.
    (entry,) = auth.parse_key_file(f"a: {_scrypt(2, 1, 1)}")
    keys = (entry, dataclasses.replace(entry, salt=b"\x03" * 16))
    assert auth.candidates(keys, "cgw_a~some-secret-value") == (entry,)


def test_two_entries_with_the_same_hash_identify_the_first() -> None:
    sha = hashlib.sha256(b"a-plain-shared-key-0").hexdigest()
    keys = auth.parse_key_file(f"first: sha256:{sha}\nsecond: sha256:{sha}")
    assert auth.identify(keys, "a-plain-shared-key-0") == "first"
    assert auth.identify(tuple(reversed(keys)), "a-plain-shared-key-0") == "second"


def test_hash_key_entries_parse_back_and_verify() -> None:
    key = auth.new_key("app")
    (sha,) = auth.parse_key_file(f"app: {auth.hash_key(key)}")
    (scrypt,) = auth.parse_key_file(f"app: {auth.hash_key(key, scheme='scrypt')}")
    again = auth.hash_key(key, scheme="scrypt")
    assert sha.scheme == "sha256" and auth.identify((sha,), key) == "app"
    # The documented cost and sizes: n=16384, r=8, p=1, a 16-byte salt, a 32-byte hash.
    assert (scrypt.n, scrypt.r, scrypt.p, len(scrypt.salt), len(scrypt.digest)) == (
        16384, 8, 1, 16, 32
    )  # fmt: skip
    assert auth.identify((scrypt,), key) == "app"
    assert again != auth.hash_key(key, scheme="scrypt")  # a fresh salt each time
    # Unknown schemes on either side of the known ones, in sort order.
    for scheme in ("argon2", "md5", "sha512", "zz", "SHA256"):
        with pytest.raises(ValueError, match=f"scheme: expected sha256 or scrypt, not '{scheme}'"):
            auth.hash_key(key, scheme=scheme)


def test_schemes_are_compared_by_value_not_identity() -> None:
    # A scheme read at run time (a command line, a file) equals the literal without being the
    # same object.
    sha256, scrypt = "".join(["sha", "256"]), "".join(["scr", "ypt"])
    key = "cgw_app~" + "s" * 20
    assert auth.hash_key(key, scheme=sha256).startswith("sha256:")
    assert auth.hash_key(key, scheme=scrypt).startswith("scrypt:16384:8:1:")
    (parsed,) = auth.parse_key_file(f"app: {auth.hash_key(key)}")
    stored = auth.StoredKey("app", sha256, parsed.digest)
    assert auth.identify((stored,), key) == "app"
    assert auth.identify((stored,), "a-key-naming-no-entry") is None
    assert auth.candidates((stored,), "a-key-naming-no-entry") == (stored,)
    ring = auth.KeyRing.from_keys((stored,))
    assert asyncio.run(ring.identify(key)) == "app"
    assert ring.derivations == 0


def test_new_keys_carry_256_random_bits() -> None:
    keys = {auth.new_key("app") for _ in range(3)}
    assert len(keys) == 3
    for key in keys:
        secret = key.removeprefix("cgw_app~")
        assert len(base64.urlsafe_b64decode(secret + "=")) == 32


# -- the key ring ---------------------------------------------------------------------------


def _sha256_line(key_id: str, key: str) -> str:
    return f"{key_id}: sha256:{hashlib.sha256(key.encode()).hexdigest()}\n"


def _rewrite(path: pathlib.Path, text: str) -> None:
    """Replace the file's content with a later mtime, as the kubelet's update of a Secret."""
    before = path.stat().st_mtime_ns
    path.write_text(text)
    os.utime(path, ns=(before + 10**9, before + 10**9))


A_KEY = "cgw_a~the-secret-of-key-a"
B_KEY = "cgw_b~the-secret-of-key-b"


async def test_a_ring_of_fixed_keys_keeps_them() -> None:
    keys = auth.parse_key_file(_sha256_line("a", A_KEY))
    ring = auth.KeyRing.from_keys(keys)

    assert ring.loaded
    assert ring.keys() == keys
    assert await ring.identify(A_KEY) == "a"
    assert ring.cached(A_KEY) == "a"
    assert ring.error is None


async def test_the_ring_reloads_a_changed_file_and_forgets_what_it_verified(
    tmp_path: pathlib.Path,
) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(_sha256_line("a", A_KEY))
    ring = auth.KeyRing(path)

    assert ring.cached(A_KEY) is None  # nothing verified yet
    assert await ring.identify(A_KEY) == "a"
    assert ring.cached(A_KEY) == "a"
    _rewrite(path, _sha256_line("b", B_KEY))

    assert ring.cached(A_KEY) is None
    assert await ring.identify(A_KEY) is None
    assert await ring.identify(B_KEY) == "b"
    assert [stored.key_id for stored in ring.keys()] == ["b"]  # noqa: SIM118 - not a dict


async def test_a_malformed_file_keeps_the_last_good_keys_and_is_reported_once(
    tmp_path: pathlib.Path,
) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(_sha256_line("a", A_KEY))
    reports: list[str] = []
    ring = auth.KeyRing(path, on_reload_error=reports.append)
    assert [stored.key_id for stored in ring.keys()] == ["a"]  # noqa: SIM118 - not a dict

    _rewrite(path, "a: md5:0123\n")
    for _ in range(3):
        assert await ring.identify(A_KEY) == "a"
    assert ring.loaded
    assert reports == [f"{path}: {EXPECTED_FORM}"]
    assert ring.error == reports[0]

    _rewrite(path, "b: md5:0123\n")  # another problem: reported too
    ring.keys()
    _rewrite(path, _sha256_line("b", B_KEY))  # fixed
    assert await ring.identify(B_KEY) == "b"
    assert ring.error is None
    assert reports[1:] == [f"{path}: b: " + EXPECTED_FORM.removeprefix("a: ")]


def test_a_missing_file_is_not_loaded_and_reported_once(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "keys.yaml"
    reports: list[str] = []
    ring = auth.KeyRing(path, on_reload_error=reports.append)

    assert not ring.loaded
    assert ring.keys() == ()
    assert reports == [f"{path}: No such file or directory"]
    assert ring.error == reports[0]

    path.write_text(_sha256_line("a", A_KEY))
    assert ring.loaded
    assert ring.error is None
    # Without a callback the problem is only logged and kept in ``error``.
    quiet = auth.KeyRing(tmp_path / "missing.yaml")
    assert quiet.keys() == () and quiet.error is not None


async def test_odd_keys_are_refused_by_the_ring_without_hashing(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(f"a: {auth.hash_key(A_KEY, scheme='scrypt')}\n")
    ring = auth.KeyRing(path)

    for odd in ("short", "cgw_a~" + "x" * 600, "cgw_a~with a space in it"):
        assert await ring.identify(odd) is None
    assert ring.derivations == 0
    assert await ring.identify(A_KEY) == "a"
    assert await ring.identify(A_KEY) == "a"  # from the cache: no second derivation
    assert ring.derivations == 1
    ring.close()


async def test_by_default_two_derivations_run_and_eight_wait(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(f"a: {_scrypt(2, 1, 1)}\n")
    ring = auth.KeyRing(path)

    answers = await asyncio.gather(
        *(ring.identify(f"cgw_a~wrong-secret-number-{i}") for i in range(13)),
        return_exceptions=True,
    )

    assert (answers.count(None), sum(isinstance(a, auth.Busy) for a in answers)) == (10, 3)
    ring.close()


async def test_closing_the_ring_cancels_the_checks_still_waiting(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(f"a: {auth.hash_key(A_KEY, scheme='scrypt')}\n")  # about 50 ms a check
    ring = auth.KeyRing(path, threads=1, waiting=4)
    checks = [
        asyncio.ensure_future(ring.identify(f"cgw_a~wrong-secret-{i}-xxxxx")) for i in range(3)
    ]
    await asyncio.sleep(0)  # each check is now running or waiting for the one thread

    ring.close()
    answers = await asyncio.gather(*checks, return_exceptions=True)

    assert answers[0] is None  # the running one finishes
    assert all(isinstance(a, asyncio.CancelledError) for a in answers[1:]), answers


def test_a_stored_key_cannot_be_changed() -> None:
    # The ring's keys are read by the derivation threads while requests come in.
    (stored,) = auth.parse_key_file(_sha256_line("a", A_KEY))
    with pytest.raises(dataclasses.FrozenInstanceError):
        stored.digest = b"\0" * 32  # type: ignore[misc]


@pytest.mark.parametrize(("threads", "waiting"), [(1, 1), (2, 3), (1, 299)])
async def test_derivations_beyond_the_threads_and_waiting_places_are_busy(
    tmp_path: pathlib.Path, threads: int, waiting: int
) -> None:
    # The cheapest scrypt parameters: the bound is about how many may be in progress at once.
    path = tmp_path / "keys.yaml"
    path.write_text(f"a: {_scrypt(2, 1, 1)}\n")
    ring = auth.KeyRing(path, threads=threads, waiting=waiting)
    attempts = threads + waiting + 3

    for batch in (1, 2):  # the second batch finds every place free again
        answers = await asyncio.gather(
            *(ring.identify(f"cgw_a~wrong-secret-number-{i}") for i in range(attempts)),
            return_exceptions=True,
        )

        assert answers.count(None) == threads + waiting
        assert sum(isinstance(a, auth.Busy) for a in answers) == 3
        assert ring.derivations == batch * (threads + waiting)
    ring.close()


async def test_the_verified_key_cache_is_bounded() -> None:
    size = auth.VERIFIED_CACHE_SIZE
    presented = [f"cgw_k{i}~secret-of-key-{i}" for i in range(size + 1)]
    keys = tuple(
        auth.StoredKey(f"k{i}", "sha256", hashlib.sha256(key.encode()).digest())
        for i, key in enumerate(presented)
    )
    ring = auth.KeyRing.from_keys(keys)
    for key in presented[:size]:
        await ring.identify(key)
    assert ring.cached(presented[0]) == "k0"
    assert ring.cached(presented[size - 1]) == f"k{size - 1}"

    assert await ring.identify(presented[size]) == f"k{size}"

    # One key more than the cache holds: it starts afresh rather than growing.
    assert ring.cached(presented[0]) is None
    assert ring.cached(presented[size]) == f"k{size}"
