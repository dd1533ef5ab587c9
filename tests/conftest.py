"""Fixtures shared by every test group."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import s3


@pytest.fixture(scope="session")
def s3_server() -> Iterator[s3.S3Server]:
    """A real S3-compatible server on 127.0.0.1 for the whole session."""
    yield from s3.start()


@pytest.fixture
def s3_env(s3_server: s3.S3Server, monkeypatch: pytest.MonkeyPatch) -> s3.S3Server:
    """Point boto3 at the test server through the environment, as a pod's env would."""
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    return s3_server
