"""Orchestration: run one composition job through every stage, timing each.

``__main__`` builds a :class:`Worker` once and calls :meth:`Worker.run` per job (one job in a pod,
any number in a long-lived worker). The order puts cheap checks first, so bad input fails in
seconds instead of after a minute of model loading:

1. fetch      every input's bytes (``fetching``)
2. validate   decode and check every image (``images``)
3. face       resolve the face models only, find the face (``modelstore``, ``faces``)
4. load       resolve and load the generation pipeline, once per profile (``pipeline``)
5. generate   the image, with the identity check and retries on a new seed (``quality``)
6. encode     to the requested format (``images.encode``)
7. upload     to S3 with metadata (``upload``), or write a local file in local mode

Loaded face analyzers and pipelines are kept per profile, so a warm worker loads once and runs
many. Every failure is a ``errors.ComposeError`` carrying its exit code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from compose_api import contract, models, profiles
from compose_inference import errors, fetching, images, modelstore, upload

log = logging.getLogger("compose_inference")

FACE_COMPONENT = "face_analysis"
# Profile options that pin a job parameter (the smoke profile pins 64x64 and 2 steps).
PINNED_PARAMS = ("steps", "width", "height")


_DEFAULTS = models.Params()


@dataclasses.dataclass(frozen=True)
class Params:
    """Generation parameters, as the job or the command line gives them."""

    prompt: str = _DEFAULTS.prompt
    negative_prompt: str = _DEFAULTS.negative_prompt
    seed: int = 0
    steps: int = _DEFAULTS.steps
    guidance: float = _DEFAULTS.guidance
    width: int = _DEFAULTS.width
    height: int = _DEFAULTS.height
    identity_strength: float = _DEFAULTS.identity_strength
    clothing_strength: float = _DEFAULTS.clothing_strength
    place_strength: float = _DEFAULTS.place_strength

    @classmethod
    def from_spec(cls, params: models.Params, *, seed: int) -> Params:
        # The same fields as the API's Params, with the seed the job runs with.
        return cls(**{**params.model_dump(), "seed": seed})

    def pinned_by(self, options: Mapping[str, Any]) -> Params:
        """These parameters with the profile's pinned values (``options.steps``, ``width``,
        ``height``, ``guidance``): a few-step profile pins its steps and guidance, the smoke
        profile its tiny size."""
        changes: dict[str, Any] = {}
        for name in PINNED_PARAMS:
            value = options.get(name)
            if value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise errors.ModelLoadFailed(
                    f"profile.options.{name}: expected a positive integer, got {value!r}"
                )
            changes[name] = value
        guidance = options.get("guidance")
        if guidance is not None:
            if not isinstance(guidance, int | float) or isinstance(guidance, bool) or guidance < 0:
                raise errors.ModelLoadFailed(
                    f"profile.options.guidance: expected a number >= 0, got {guidance!r}"
                )
            changes["guidance"] = float(guidance)
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class S3Target:
    bucket: str
    key: str


@dataclasses.dataclass(frozen=True)
class LocalTarget:
    path: Path


@dataclasses.dataclass(frozen=True)
class Job:
    """One composition, whichever way it arrived."""

    label: str  # "namespace/name" in a pod, "local" on the command line
    profile: profiles.ModelProfile
    # Final parameters: the profile's pinned values (Params.pinned_by) are already applied.
    person: str
    clothing: list[tuple[str, str | None]]
    place: str
    params: Params
    output_format: str
    target: S3Target | LocalTarget
    metadata: dict[str, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_document(cls, document: contract.JobDocument, *, default_bucket: str | None) -> Job:
        spec = document.spec
        bucket = spec.output.bucket or default_bucket
        if not bucket:
            raise errors.InputRejected(
                "spec.output.bucket: empty, and no default results bucket (COMPOSE_OUTPUT_BUCKET)"
            )
        fmt = str(spec.output.format)
        identity = document.job
        return cls(
            label=f"{identity.namespace}/{identity.name}",
            profile=document.profile,
            person=spec.inputs.person.uri,
            clothing=[
                (item.uri, str(item.category) if item.category else None)
                for item in spec.inputs.clothing
            ],
            place=spec.inputs.place.uri,
            params=Params.from_spec(spec.params, seed=document.seed).pinned_by(
                document.profile.options
            ),
            output_format=fmt,
            target=S3Target(bucket=bucket, key=upload.result_key(document.output_key_prefix, fmt)),
            metadata={
                "job": f"{identity.namespace}/{identity.name}",
                "uid": identity.uid,
                "attempt": str(identity.attempt),
            },
        )


@dataclasses.dataclass
class Outcome:
    """What a successful job produced."""

    uri: str  # s3://bucket/key, or the local file path
    sha256: str
    bytes: int
    width: int
    height: int
    format: str
    seed: int
    identity_similarity: float | None
    timings: dict[str, float]
    attempts: int

    def result(self) -> models.Result:
        return models.Result(
            s3_uri=self.uri,
            sha256=self.sha256,
            width=self.width,
            height=self.height,
            format=models.ImageFormat(self.format),
            bytes=self.bytes,
            seed=self.seed,
            identity_similarity=(
                None if self.identity_similarity is None else round(self.identity_similarity, 4)
            ),
        )


class Stopwatch:
    """Seconds per stage; ``time.perf_counter`` unless a clock is injected."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._started = clock()
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = self._clock()
        try:
            yield
        finally:
            elapsed = self._clock() - started
            self.seconds[name] = self.seconds.get(name, 0.0) + elapsed
            log.info("stage %s: %.3f s", name, elapsed)

    def total(self) -> float:
        return self._clock() - self._started

    def timings(self) -> models.Timings:
        """The stages in the CompositionJob status' terms."""
        s = self.seconds
        fetch = s.get("fetch", 0.0) + s.get("validate", 0.0)
        return models.Timings(
            fetch=_round(fetch) if "fetch" in s else None,
            face_analysis=_round(s.get("face")),
            model_load=_round(s.get("load")),
            inference=_round(s.get("generate")),
            postprocess=_round(s.get("encode")),
            upload=_round(s.get("upload")),
            total=_round(self.total()),
        )


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


@dataclasses.dataclass
class _Loaded:
    analyzer: Any | None = None
    pipeline: Any | None = None


class Worker:
    """Runs jobs; keeps face analyzers and pipelines loaded per profile between jobs."""

    def __init__(
        self,
        *,
        fetcher: fetching.Fetcher,
        store: modelstore.ModelStore,
        uploader: upload.Uploader | None = None,
        limits: images.ImageLimits = images.ImageLimits(),
        device: str | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.fetcher = fetcher
        self.store = store
        self.uploader = uploader
        self.limits = limits
        self.device = device
        self._clock = clock
        self._loaded: dict[str, _Loaded] = {}
        self.loads = 0  # pipelines loaded so far (a warm worker loads each profile once)

    def run(self, job: Job, *, watch: Stopwatch | None = None) -> Outcome:
        """Run ``job`` through every stage; raises errors.ComposeError (with its exit code)."""
        watch = watch or Stopwatch(self._clock)
        try:
            return self._run(job, watch)
        except errors.ComposeError:
            raise
        except Exception as error:
            raise errors.classify(error) from error

    def _run(self, job: Job, watch: Stopwatch) -> Outcome:
        from compose_inference import pipeline as pipeline_module

        params = job.params
        # 1. fetch
        with watch.stage("fetch"):
            person_bytes = self.fetcher.fetch(job.person, field="spec.inputs.person.uri")
            clothing_bytes = [
                self.fetcher.fetch(uri, field=f"spec.inputs.clothing[{index}].uri")
                for index, (uri, _) in enumerate(job.clothing)
            ]
            place_bytes = self.fetcher.fetch(job.place, field="spec.inputs.place.uri")
        # 2. validate
        with watch.stage("validate"):
            person = images.decode(person_bytes, field="spec.inputs.person.uri", limits=self.limits)
            clothing = [
                (
                    images.decode(
                        data, field=f"spec.inputs.clothing[{index}].uri", limits=self.limits
                    ).image,
                    job.clothing[index][1],
                )
                for index, data in enumerate(clothing_bytes)
            ]
            place = images.decode(place_bytes, field="spec.inputs.place.uri", limits=self.limits)
        # 3. face analysis, with only the (small) face models resolved
        with watch.stage("face"):
            analyzer = self._analyzer(job.profile)
            face = analyzer.analyze(person.image)
        # 4. load the pipeline (once per profile)
        with watch.stage("load"):
            pipe = self._pipeline(job.profile)
        request = pipeline_module.GenerationRequest(
            face=face,
            person=person.image,
            clothing=clothing,
            place=place.image,
            **dataclasses.asdict(params),
        )
        try:
            pipe.check_request(request)
        except ValueError as error:
            raise errors.InputRejected(f"spec.params.{error}") from None
        # 5. generate, with the identity gate
        with watch.stage("generate"):
            image, seed, similarity, attempts = self._generate(job.profile, pipe, analyzer, request)
        # 6. encode
        with watch.stage("encode"):
            data = images.encode(image, job.output_format)
            digest = hashlib.sha256(data).hexdigest()
        # 7. upload (or write the local file)
        with watch.stage("upload"):
            uri = self._store(job, data, seed=seed, similarity=similarity)
        watch.seconds["total"] = watch.total()
        return Outcome(
            uri=uri,
            sha256=digest,
            bytes=len(data),
            width=image.width,
            height=image.height,
            format=job.output_format,
            seed=seed,
            identity_similarity=similarity,
            timings=dict(watch.seconds),
            attempts=attempts,
        )

    # -- stages that keep state ---------------------------------------------------------------

    def _slot(self, profile: profiles.ModelProfile) -> _Loaded:
        key = hashlib.sha256(profile.model_dump_json().encode()).hexdigest()
        return self._loaded.setdefault(key, _Loaded())

    def device_for(self, profile: profiles.ModelProfile) -> str:
        chosen = self.device or profile.options.get("device")
        if isinstance(chosen, str) and chosen:
            return chosen
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def _analyzer(self, profile: profiles.ModelProfile) -> Any:
        from compose_inference import faces

        slot = self._slot(profile)
        if slot.analyzer is not None:
            return slot.analyzer
        source = profile.models.get(FACE_COMPONENT)
        if source is None:
            raise errors.ModelLoadFailed(f"profile {profile.name}: no {FACE_COMPONENT!r} model")
        path = self.store.resolve_source(FACE_COMPONENT, source)
        policy = profile.options.get("multiple_faces", "largest")
        providers = ["CPUExecutionProvider"]
        if self.device_for(profile).startswith("cuda"):
            import onnxruntime

            # The GPU build of onnxruntime offers CUDA; the CPU build runs the face models fine.
            available = set(onnxruntime.get_available_providers())
            providers = [
                name
                for name in ("CUDAExecutionProvider", "CPUExecutionProvider")
                if name in available
            ]
        try:
            slot.analyzer = faces.FaceAnalyzer.load(
                path, providers=providers, multiple_faces=policy
            )
        except Exception as error:
            raise errors.ModelLoadFailed(
                f"profile.models.{FACE_COMPONENT}: {type(error).__name__}: {error}"
            ) from error
        return slot.analyzer

    def _pipeline(self, profile: profiles.ModelProfile) -> Any:
        from compose_inference import pipeline as pipeline_module

        slot = self._slot(profile)
        if slot.pipeline is not None:
            return slot.pipeline
        components = {
            name: self.store.resolve_source(name, source)
            for name, source in profile.models.items()
            if name != FACE_COMPONENT
        }
        device = self.device_for(profile)
        dtype = profile.dtype if device.startswith("cuda") else "float32"
        try:
            slot.pipeline = pipeline_module.ComposePipeline.load(
                components,
                dtype=dtype,
                device=device,
                options=profile.options,
                variants={name: source.variant for name, source in profile.models.items()},
            )
        except Exception as error:
            if errors.is_out_of_memory(error):
                raise errors.OutOfGpuMemory(f"out of GPU memory while loading: {error}") from error
            raise errors.ModelLoadFailed(
                f"profile {profile.name}: {type(error).__name__}: {error}"
            ) from error
        self.loads += 1
        return slot.pipeline

    def _generate(
        self, profile: profiles.ModelProfile, pipe: Any, analyzer: Any, request: Any
    ) -> tuple[Any, int, float | None, int]:
        from compose_inference import quality

        minimum = profile.min_identity_similarity
        best: tuple[Any, int, float | None] | None = None
        tries = profile.identity_retries + 1
        for attempt in range(tries):
            seed = (request.seed + attempt * 7919) % 2**32
            result = pipe(dataclasses.replace(request, seed=seed))
            similarity = quality.identity_similarity(analyzer, request.face, result.image)
            log.info("identity similarity (seed %d): %s", seed, similarity)
            if minimum <= 0 or (similarity is not None and similarity >= minimum):
                return result.image, seed, similarity, attempt + 1
            if best is None or (similarity or -1.0) > (best[2] or -1.0):
                best = (result.image, seed, similarity)
        best_text = "no face in the output" if best is None or best[2] is None else f"{best[2]:.3f}"
        raise errors.IdentityCheckFailed(
            f"identity similarity below the profile minimum {minimum} after {tries} seed(s)"
            f" (best: {best_text})"
        )

    def _store(self, job: Job, data: bytes, *, seed: int, similarity: float | None) -> str:
        if isinstance(job.target, LocalTarget):
            path = job.target.path
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
            except OSError as error:
                raise errors.UploadFailed(f"--out {path}: {error.strerror or error}") from error
            return str(path)
        if self.uploader is None:
            raise errors.UploadFailed("no uploader configured for an S3 target")
        metadata = dict(job.metadata)
        metadata.update({"seed": str(seed), "profile": job.profile.name})
        if similarity is not None:
            metadata["identity-similarity"] = f"{similarity:.4f}"
        stored = self.uploader.upload(
            data,
            bucket=job.target.bucket,
            key=job.target.key,
            fmt=job.output_format,
            metadata=metadata,
        )
        return stored.uri


def termination_message(
    *, outcome: Outcome | None, error: errors.ComposeError | None, watch: Stopwatch
) -> contract.TerminationMessage:
    """The JSON the pod leaves in /dev/termination-log for the operator."""
    if outcome is not None:
        code = contract.ExitCode.OK
        return contract.TerminationMessage(
            exit_code=int(code),
            reason=str(code.reason),
            message=f"composed {outcome.width}x{outcome.height} {outcome.format}",
            result=outcome.result(),
            timings=watch.timings(),
        )
    failure = error or errors.ComposeError("internal error")
    return contract.TerminationMessage(
        exit_code=int(failure.exit_code),
        reason=str(failure.exit_code.reason),
        message=failure.message,
        timings=watch.timings(),
    )
