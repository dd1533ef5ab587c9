"""Result reuse (``compose_inference.reuse``) against a real S3 server and the tiny models: a job
that asks for what an earlier one made gets a copy of its result, loads no model and generates
nothing; anything that changes the image is never reused; failed and opted-out jobs leave no
index entry; stale or foreign entries are misses."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from compose_api import contract, models, profiles
from compose_inference import errors, fetching, modelstore, reuse, runner, upload
from tests.inference.io.conftest import encode
from tests.support import s3

pytestmark = pytest.mark.slow

NAMESPACE = "team-a"
PREFIX = "results/"
GENERATED = {"face", "generate", "encode", "upload"}  # "load" only when cold


def make_worker(server: s3.S3Server, cache: Path) -> runner.Worker:
    client = server.client()
    return runner.Worker(
        fetcher=fetching.Fetcher(fetching.FetchSettings(), s3_client=client),
        store=modelstore.ModelStore(modelstore.StoreSettings(cache_dir=cache)),
        uploader=upload.Uploader(s3_client=client),
        results=reuse.Index(s3_client=client),
    )


@pytest.fixture(scope="module")
def worker(s3_server: s3.S3Server, tmp_path_factory: pytest.TempPathFactory) -> runner.Worker:
    """One warm worker for the module: the tiny models load once."""
    return make_worker(s3_server, tmp_path_factory.mktemp("cache"))


@dataclasses.dataclass
class Setting:
    """Fresh input and results buckets, the photos in them, and jobs over them."""

    server: s3.S3Server
    worker: runner.Worker
    profile: dict[str, Any]
    inputs: str
    results: str
    photos: dict[str, str] = dataclasses.field(default_factory=dict)

    def put(self, key: str, data: bytes) -> str:
        self.server.client().put_object(Bucket=self.inputs, Key=key, Body=data)
        return f"s3://{self.inputs}/{key}"

    def document(
        self,
        name: str,
        *,
        seed: int = 7,
        fmt: str = "png",
        params: dict[str, Any] | None = None,
        reuse: bool = True,
        profile: dict[str, Any] | None = None,
        person: str | None = None,
        category: str | None = "upper",
        sha256: dict[str, str] | None = None,
    ) -> contract.JobDocument:
        declared = sha256 or {}
        garment: dict[str, Any] = {"uri": self.photos["shirt"], "category": category}
        if "clothing" in declared:
            garment["sha256"] = declared["clothing"]
        spec = models.CompositionJobSpec.model_validate(
            {
                "inputs": {
                    "person": {"uri": person or self.photos["person"]},
                    "clothing": [garment],
                    "place": {"uri": self.photos["place"]},
                },
                "output": {"bucket": self.results, "prefix": PREFIX, "format": fmt,
                           "reuse": reuse},
                "params": params or {},
                "profile": (profile or self.profile)["name"],
            }
        )  # fmt: skip
        return contract.JobDocument(
            job=contract.JobIdentity(name=name, namespace=NAMESPACE, uid=f"uid-{name}"),
            spec=spec,
            profile=profiles.ModelProfile.model_validate(profile or self.profile),
            seed=seed,
            output_key_prefix=f"{PREFIX}{NAMESPACE}/{name}/uid-{name}/",
        )

    def run(
        self, name: str, *, worker: runner.Worker | None = None, **options: Any
    ) -> runner.Outcome:
        job = runner.Job.from_document(self.document(name, **options), default_bucket=None)
        return (worker or self.worker).run(job)

    def key(self, name: str, ext: str = "png") -> str:
        return f"{PREFIX}{NAMESPACE}/{name}/uid-{name}/result.{ext}"

    def body(self, key: str) -> bytes:
        data: bytes = self.server.client().get_object(Bucket=self.results, Key=key)["Body"].read()
        return data

    def index(self) -> dict[str, dict[str, Any]]:
        """The index entries: key -> parsed JSON."""
        client = self.server.client()
        listing = client.list_objects_v2(Bucket=self.results, Prefix=f"{PREFIX}.reuse/")
        return {
            item["Key"]: json.loads(self.body(item["Key"])) for item in listing.get("Contents", [])
        }

    def result_keys(self) -> list[str]:
        listing = self.server.client().list_objects_v2(Bucket=self.results)
        return sorted(
            item["Key"]
            for item in listing.get("Contents", [])
            if ".reuse" not in item["Key"].split("/")
        )


@pytest.fixture
def setting(
    s3_server: s3.S3Server,
    worker: runner.Worker,
    local_profile: dict[str, Any],
    photos: dict[str, bytes],
) -> Setting:
    made = Setting(
        server=s3_server,
        worker=worker,
        profile=local_profile,
        inputs=s3_server.new_bucket("inputs"),
        results=s3_server.new_bucket("results"),
    )
    made.photos = {name: made.put(f"{name}.png", data) for name, data in photos.items()}
    return made


@pytest.fixture(scope="module")
def photos() -> dict[str, bytes]:
    from skimage import data

    return {
        "person": encode(Image.fromarray(data.astronaut()), "PNG"),
        "shirt": encode(Image.fromarray(data.coffee()), "PNG"),
        "place": encode(Image.fromarray(data.rocket()), "PNG"),
    }


def generated(outcome: runner.Outcome) -> bool:
    return set(outcome.timings) >= GENERATED and outcome.reused_from is None


def reference(name: str) -> models.JobReference:
    return models.JobReference(namespace=NAMESPACE, name=name, uid=f"uid-{name}")


# -- a hit ---------------------------------------------------------------------------------------


def test_the_same_job_again_copies_the_result_and_loads_nothing(
    setting: Setting, s3_server: s3.S3Server, tmp_path: Path
) -> None:
    first = setting.run("first")
    assert generated(first)
    (entry_key, entry), *more = setting.index().items()
    assert not more
    assert entry_key.startswith(f"{PREFIX}.reuse/{NAMESPACE}/") and entry_key.endswith(".json")
    assert entry["job"] == {"namespace": NAMESPACE, "name": "first", "uid": "uid-first"}
    assert entry["result"]["s3Uri"] == f"s3://{setting.results}/{setting.key('first')}"
    assert entry["result"]["sha256"] == first.sha256

    # A worker that has loaded nothing: the hit needs no model at all.
    cold = make_worker(s3_server, tmp_path / "cold-cache")
    watch = runner.Stopwatch()
    job = runner.Job.from_document(setting.document("second"), default_bucket=None)
    second = cold.run(job, watch=watch)
    assert cold.loads == 0 and not cold.loaded(job.profile)
    assert set(second.timings) == {"check", "fetch", "validate", "reuse", "total"}
    assert second.reused_from == reference("first")
    assert (second.sha256, second.bytes, second.seed) == (first.sha256, first.bytes, first.seed)
    assert (second.width, second.height, second.steps) == (first.width, first.height, 2)
    assert second.uri == f"s3://{setting.results}/{setting.key('second')}"

    # The copy is this job's own object, with this job's metadata.
    assert setting.body(setting.key("second")) == setting.body(setting.key("first"))
    head = s3_server.client().head_object(Bucket=setting.results, Key=setting.key("second"))
    assert head["ContentType"] == "image/png"
    assert head["Metadata"]["job"] == f"{NAMESPACE}/second"
    assert head["Metadata"]["uid"] == "uid-second"
    assert head["Metadata"]["reused-from"] == f"{NAMESPACE}/first/uid-first"
    assert head["Metadata"]["sha256"] == first.sha256
    assert head["Metadata"]["seed"] == str(first.seed)

    # What the pod reports: the result names its source; no load, no generation.
    message = runner.termination_message(outcome=second, error=None, watch=watch)
    assert message.result is not None and message.result.reused_from == reference("first")
    assert message.message.startswith(f"reused the 64x64 png result of {NAMESPACE}/first")
    timings = message.timings
    assert timings is not None and timings.reuse is not None and timings.fetch is not None
    assert (timings.model_load, timings.face_analysis, timings.inference, timings.upload) == (
        None, None, None, None,
    )  # fmt: skip
    # The entry now points at the newest copy (which outlives the first under one retention).
    assert setting.index()[entry_key]["job"]["name"] == "second"
    assert setting.result_keys() == sorted([setting.key("first"), setting.key("second")])


def test_a_parameter_the_profile_pins_does_not_make_another_image(setting: Setting) -> None:
    """The description holds the parameters as run: steps the profile pins to 2 are 2."""
    setting.run("first")
    again = setting.run("again", params={"steps": 40})
    assert again.reused_from == reference("first")
    assert again.steps == 2


def test_a_later_attempt_of_the_same_job_takes_its_own_stored_result(setting: Setting) -> None:
    """An attempt stored its result and its entry, then could not report (its worker died): the
    next attempt finds the job's own result and hands it on, unchanged, as the job's own."""
    first = setting.run("retried")
    document = setting.document("retried")
    retry = document.model_copy(update={"job": document.job.model_copy(update={"attempt": 1})})
    again = setting.worker.run(runner.Job.from_document(retry, default_bucket=None))
    assert again.reused_from is None
    assert "generate" not in again.timings and "reuse" in again.timings
    assert (again.uri, again.sha256) == (first.uri, first.sha256)
    assert setting.result_keys() == [setting.key("retried")]
    # Gone meanwhile: the attempt generates it again.
    setting.server.client().delete_object(Bucket=setting.results, Key=setting.key("retried"))
    assert generated(setting.worker.run(runner.Job.from_document(retry, default_bucket=None)))


# -- misses --------------------------------------------------------------------------------------


def one_pixel_changed(data: bytes) -> bytes:
    with Image.open(io.BytesIO(data)) as image:
        array = np.array(image.convert("RGB"))
    array[0, 0, 0] ^= 1
    return encode(Image.fromarray(array), "PNG")


CHANGES: dict[str, dict[str, Any]] = {
    "another seed": {"seed": 8},
    "another guidance": {"params": {"guidance": 6.5}},
    "another prompt": {"params": {"prompt": "a person on a beach"}},
    "another garment category": {"category": "outerwear"},
    "another format": {"fmt": "webp"},
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_what_changes_the_image_is_never_reused(setting: Setting, change: str) -> None:
    setting.run("first")
    other = setting.run("other", **CHANGES[change])
    assert generated(other), other.timings
    assert len(setting.index()) == 2  # one entry per description


def test_a_changed_byte_in_an_input_is_another_image(
    setting: Setting, photos: dict[str, bytes]
) -> None:
    setting.run("first")
    person = setting.put("person-2.png", one_pixel_changed(photos["person"]))
    other = setting.run("other", person=person)
    assert generated(other)
    # ... while the same bytes under another key are the same input.
    copy = setting.put("elsewhere/person.png", photos["person"])
    same = setting.run("same", person=copy)
    assert same.reused_from == reference("first")


def test_another_model_revision_is_another_image(setting: Setting) -> None:
    setting.run("first")
    revised = json.loads(json.dumps(setting.profile))
    revised["models"]["base"]["revision"] = "0123456789abcdef0123456789abcdef01234567"
    other = setting.run("other", profile=revised)
    assert generated(other)


def test_a_job_that_opts_out_neither_reuses_nor_offers(setting: Setting) -> None:
    setting.run("out-first", reuse=False)
    assert setting.index() == {}
    setting.run("first")
    (entry_key, entry), *_ = setting.index().items()
    out = setting.run("out-again", reuse=False)
    assert generated(out)
    assert setting.index() == {entry_key: entry}  # untouched


# -- what never writes an entry --------------------------------------------------------------------


def test_a_failed_job_writes_no_entry(setting: Setting) -> None:
    faceless = setting.put(
        "faceless.png", encode(Image.fromarray(np.full((256, 256, 3), 128, np.uint8)), "PNG")
    )
    with pytest.raises(errors.NoFaceFound):
        setting.run("no-face", person=faceless)
    # Failed after the generation: the identity gate the tiny models never pass.
    strict = dict(setting.profile, minIdentitySimilarity=0.99)
    with pytest.raises(errors.IdentityCheckFailed):
        setting.run("strict", profile=strict)
    assert setting.index() == {}
    assert setting.result_keys() == []


def test_a_run_stopped_after_its_generation_writes_no_entry(setting: Setting) -> None:
    watch = runner.Stopwatch()

    def stop_once_generated() -> None:
        if "generate" in watch.seconds:
            raise errors.Stopped("taken back")

    job = runner.Job.from_document(setting.document("stopped"), default_bucket=None)
    with pytest.raises(errors.Stopped):
        setting.worker.run(job, watch=watch, stop=stop_once_generated)
    assert setting.index() == {}
    assert setting.result_keys() == []


# -- stale and foreign entries ---------------------------------------------------------------------


def test_a_deleted_result_is_a_miss_and_the_entry_moves_on(
    setting: Setting, s3_server: s3.S3Server
) -> None:
    setting.run("first")
    s3_server.client().delete_object(Bucket=setting.results, Key=setting.key("first"))
    second = setting.run("second")
    assert generated(second)
    (entry,) = setting.index().values()
    assert entry["job"]["name"] == "second"
    assert setting.run("third").reused_from == reference("second")


def test_a_result_replaced_since_it_was_indexed_is_a_miss(
    setting: Setting, s3_server: s3.S3Server, photos: dict[str, bytes]
) -> None:
    first = setting.run("first")
    s3_server.client().put_object(
        Bucket=setting.results, Key=setting.key("first"), Body=photos["place"]
    )
    second = setting.run("second")
    assert generated(second)
    assert setting.body(setting.key("second")) != photos["place"]
    assert second.sha256 == first.sha256  # the same image, made again


@pytest.mark.parametrize(
    "where", ["another bucket", "another namespace", "another description", "garbage"]
)
def test_an_entry_that_does_not_belong_to_the_job_is_ignored(
    setting: Setting, s3_server: s3.S3Server, where: str
) -> None:
    first = setting.run("first")
    (entry_key, entry), *_ = setting.index().items()
    client = s3_server.client()
    client.delete_object(Bucket=setting.results, Key=setting.key("first"))
    # Somewhere a job must never copy from.
    stray = "results/team-b/other/uid-other/result.png"
    if where == "another bucket":
        client.put_object(Bucket=setting.inputs, Key=stray, Body=b"secret")
        entry["result"]["s3Uri"] = f"s3://{setting.inputs}/{stray}"
    elif where == "another namespace":
        client.put_object(Bucket=setting.results, Key=stray, Body=b"secret")
        entry["result"]["s3Uri"] = f"s3://{setting.results}/{stray}"
    elif where == "another description":
        entry["digest"] = "0" * 64
    client.put_object(
        Bucket=setting.results,
        Key=entry_key,
        Body=b"{not json" if where == "garbage" else json.dumps(entry).encode(),
    )
    second = setting.run("second")
    assert generated(second)
    assert second.sha256 == first.sha256


# -- declared hashes -------------------------------------------------------------------------------


def test_declared_input_hashes_are_checked_against_the_fetched_bytes(
    setting: Setting, photos: dict[str, bytes]
) -> None:
    import hashlib

    right = hashlib.sha256(photos["shirt"]).hexdigest()
    assert generated(setting.run("checked", sha256={"clothing": right}))
    wrong = hashlib.sha256(b"another file").hexdigest()
    with pytest.raises(errors.InputRejected) as info:
        setting.run("tampered", sha256={"clothing": wrong})
    assert info.value.message.startswith("spec.inputs.clothing[0].sha256: the fetched image's")
    assert right in info.value.message and wrong in info.value.message


# -- at once ---------------------------------------------------------------------------------------


def test_two_identical_jobs_at_once_both_succeed(
    setting: Setting, s3_server: s3.S3Server, tmp_path: Path
) -> None:
    """Two workers take the same description at the same moment: both miss and generate, or
    one reuses; either way both succeed and the index holds one whole entry."""
    other = make_worker(s3_server, tmp_path / "cache")
    start = threading.Barrier(2)
    outcomes: dict[str, runner.Outcome] = {}
    failures: list[BaseException] = []

    def run(name: str, worker: runner.Worker) -> None:
        job = runner.Job.from_document(setting.document(name), default_bucket=None)
        if worker is other:
            worker.load(job.profile)  # both start warm, so both look up at about one time
        start.wait(timeout=120)
        try:
            outcomes[name] = worker.run(job)
        except BaseException as error:
            failures.append(error)

    threads = [
        threading.Thread(target=run, args=("left", setting.worker)),
        threading.Thread(target=run, args=("right", other)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not failures, failures
    assert set(outcomes) == {"left", "right"}
    for name, outcome in outcomes.items():
        assert setting.body(setting.key(name)) and outcome.sha256
    (entry,) = setting.index().values()
    assert entry["job"]["name"] in {"left", "right"}
    third = setting.run("third")
    assert third.reused_from is not None and third.reused_from.name in {"left", "right"}
    assert third.sha256 == outcomes[third.reused_from.name].sha256


# -- the pod's process -----------------------------------------------------------------------------


def test_the_pod_process_reuses_a_result_without_loading_a_model(
    setting: Setting, s3_server: s3.S3Server, tmp_path: Path
) -> None:
    first = setting.run("first")
    log = tmp_path / "termination-log"
    env = dict(os.environ)
    env.update(s3_server.env())
    env.update(
        {
            contract.JOB_DOCUMENT_ENV: setting.document("second").to_json(),
            "COMPOSE_TERMINATION_LOG": str(log),
            "COMPOSE_MODEL_CACHE": str(tmp_path / "cache"),
        }
    )
    completed = subprocess.run(
        [sys.executable, "-m", "compose_inference"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    message = contract.TerminationMessage.parse(log.read_text())
    assert message is not None and message.result is not None
    assert message.result.reused_from == reference("first")
    assert message.result.sha256 == first.sha256
    assert message.result.s3_uri == f"s3://{setting.results}/{setting.key('second')}"
    assert message.timings is not None and message.timings.reuse is not None
    assert message.timings.model_load is None and message.timings.inference is None
    assert "stage reuse" in completed.stderr
    assert "stage load" not in completed.stderr and "stage face" not in completed.stderr
    assert json.loads(log.read_text())["result"]["reusedFrom"] == {
        "namespace": NAMESPACE, "name": "first", "uid": "uid-first",
    }  # fmt: skip
