"""Pool workers and Job pods on one node share the node-local model cache (COMPOSE_MODEL_CACHE).

Real processes, each loading a profile whose every component lies in one ``model.tar.gz`` in S3
(as the original design stored its model): two starting at once on a cold cache download and
extract it once between them, and both load; after the S3 object is deleted, a third process
loads from the cache with no request at all and without extracting again; what a process killed
mid-download left behind is removed by the next one that takes the entry's lock.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from compose_api import profiles
from compose_inference import modelstore
from tests.inference.io.test_end_to_end import pack, tarball_profile
from tests.support import s3

pytestmark = pytest.mark.slow

LOAD = """
import json, sys
from compose_api import profiles
from compose_inference import fetching, modelstore, runner
profile = profiles.ModelProfile.model_validate_json(sys.argv[1])
store = modelstore.ModelStore(modelstore.StoreSettings.from_env())
worker = runner.Worker(fetcher=fetching.Fetcher(fetching.FetchSettings()), store=store)
worker.load(profile)
print(json.dumps({"downloads": store.downloads, "loads": worker.loads}))
"""


def start(profile: profiles.ModelProfile, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", LOAD, profile.model_dump_json(by_alias=True)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]
    found: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return found


def stamp(path: Path) -> tuple[int, int]:
    info = path.stat()
    return info.st_ino, info.st_mtime_ns


def test_processes_share_the_cache_without_downloading_or_extracting_twice(
    s3_server: s3.S3Server, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    root = tiny_models["base"].parent
    bucket = s3_server.new_bucket("models")
    archive = pack(root)
    client = s3_server.client()
    client.put_object(Bucket=bucket, Key="tiny/model.tar.gz", Body=archive)
    uri = f"s3://{bucket}/tiny/model.tar.gz"
    profile = profiles.ModelProfile.model_validate(
        tarball_profile(tiny_models, root, uri, hashlib.sha256(archive).hexdigest())
    )
    cache = tmp_path / "node-cache"
    env = {key: value for key, value in os.environ.items() if not key.startswith("COMPOSE_")}
    env.update(s3_server.env())
    env.update({"COMPOSE_MODEL_CACHE": str(cache), "OMP_NUM_THREADS": "1"})
    store = modelstore.ModelStore(modelstore.StoreSettings(cache_dir=cache))
    entry = store.s3_entry(profile.models["base"])

    # Cold cache, two processes at once: the test holds the entry's lock until both wait on it.
    entry.mkdir(parents=True)
    with (entry.parent / f"{entry.name}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        first, second = start(profile, env), start(profile, env)
        time.sleep(3)  # both import and reach the lock
        assert first.poll() is None and second.poll() is None
        assert not (entry / "extracted").exists()
        fcntl.flock(lock, fcntl.LOCK_UN)
    results = [finish(first), finish(second)]
    assert sorted(result["downloads"] for result in results) == [0, 1]
    assert [result["loads"] for result in results] == [1, 1]
    marker = entry / "extracted" / ".complete"
    before = stamp(entry / "extracted"), stamp(marker)
    assert sorted(path.name for path in entry.iterdir()) == ["extracted"]

    # Warm cache, the S3 object gone: no request, no extraction, still loads.
    client.delete_object(Bucket=bucket, Key="tiny/model.tar.gz")
    (entry / "staging-left-by-a-killed-process").mkdir()
    (entry / "staging-left-by-a-killed-process" / "unet.bin").write_bytes(b"partial")
    (entry / "download-0123.part").write_bytes(b"partial")
    third = finish(start(profile, env))
    assert third == {"downloads": 0, "loads": 1}
    assert (stamp(entry / "extracted"), stamp(marker)) == before
    assert sorted(path.name for path in entry.iterdir()) == ["extracted"]
