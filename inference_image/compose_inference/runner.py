"""Orchestration: run one composition job through every stage, timing each.

``__main__`` builds a :class:`Worker` once and calls :meth:`Worker.run` per job (one job in a pod,
any number in a long-lived worker). The order puts cheap checks first, so bad input fails in
a fraction of a second instead of after a minute of model loading; torch and diffusers are not
even imported until step 5:

1. check      the request against the profile's pipeline (``checks``), no input read yet
2. fetch      every input's bytes (``fetching``), and their SHA-256, checked against the hashes
              the job declares (the gateway's, for uploads)
3. validate   decode and check every image (``images``)
   reuse      when an earlier job of the namespace made this very image (same input hashes,
              parameters, seed, format and profile: ``reuse``), its result is copied to this
              job's key and the run ends here: no model is loaded, nothing generated. Then,
              when the profile's ``safety`` says ``inputs``, the safety check of every photo
              (``moderation``)
4. face       resolve the face models only, find the face (``modelstore``, ``faces``)
5. load       resolve and load the generation pipeline, once per profile (``pipeline``)
6. generate   the image (and the face refinement, timed as ``refine``), with the identity check
              and retries on a new seed (``quality``)
   then, when the profile's ``safety`` says ``output`` (its default), the safety check of the
   image (``moderation``): a flagged image fails the job with CONTENT_REJECTED, nothing stored
7. encode     to the requested format (``images.encode``)
8. upload     to S3 with metadata (``upload``), or write a local file in local mode; then the
              reuse index entry that offers this result to later jobs (timed as ``reuse``)

Parameters: the job's ``models.Params`` are the only parameter type, from the job document or
from the command-line flags generated from the same model (``compose_api.parameters``). A
profile's ``options`` that pin parameters win, in both modes (``parameters.pin``); what they
changed is said in the termination message, and the values used (size, steps, guidance) are in
the result.

Loaded face analyzers and pipelines are kept per profile, so a warm worker loads once and runs
many (``compose worker``, ``pool_worker``, loads them before its first job with
:meth:`Worker.load`); a job that finds its pipeline loaded has no ``load`` stage at all. A run can
be stopped from outside: the ``stop`` callable given to :meth:`Worker.run` is called between
stages and between denoising steps, and stops the run by raising (``errors.Stopped`` when the job
was taken back, ``errors.DeadlineExceeded`` past its deadline); it is called once more just before
the upload, so a stopped run uploads nothing.

Every failure is a ``errors.ComposeError`` carrying its exit code.

Each stage timed by :class:`Stopwatch` is also a span (``compose_api.tracing``), a child of the
span current when the run starts: the pod's or the worker's run span, which the caller makes; the
face refinement is a span inside ``generate`` (``pipeline``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from compose_api import contract, models, parameters, profiles, tracing
from compose_inference import checks, errors, fetching, images, modelstore, reuse, upload

log = logging.getLogger("compose_inference")

FACE_COMPONENT = "face_analysis"

# Called between stages (and denoising steps) of a run; raises an errors.ComposeError to stop it.
Stop = Callable[[], None]


def pin_profile(params: models.Params, profile: profiles.ModelProfile) -> parameters.Pinned:
    """``parameters.pin`` with a bad pin reported as the profile's fault."""
    try:
        return parameters.pin(params, profile.options)
    except ValueError as error:
        raise errors.ModelLoadFailed(f"profile {profile.name}: {error}") from None


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
    person: str
    clothing: list[tuple[str, models.ClothingCategory | None]]
    place: str
    # Final parameters, seed set: the profile's pins (parameters.pin) are already applied.
    params: models.Params
    output_format: str
    target: S3Target | LocalTarget
    metadata: dict[str, str] = dataclasses.field(default_factory=dict)
    # What the profile's pins changed: name -> (asked, used).
    pinned: dict[str, tuple[Any, Any]] = dataclasses.field(default_factory=dict)
    # The SHA-256 the job declares for its inputs, by field (``spec.inputs.person``, ...).
    declared: dict[str, str] = dataclasses.field(default_factory=dict)
    # Where this job's results are indexed for reuse; None: no reuse (opted out, local mode).
    reuse: reuse.Scope | None = None

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
        inputs = spec.inputs
        refs = [
            ("spec.inputs.person", inputs.person.sha256),
            *((f"spec.inputs.clothing[{i}]", c.sha256) for i, c in enumerate(inputs.clothing)),
            ("spec.inputs.place", inputs.place.sha256),
        ]
        scope = None
        if spec.output.reuse and identity.uid:
            scope = reuse.Scope(
                bucket=bucket,
                prefix=spec.output.prefix,
                job=models.JobReference(
                    namespace=identity.namespace, name=identity.name, uid=identity.uid
                ),
            )
        pinned = pin_profile(
            spec.params.model_copy(update={"seed": document.seed}), document.profile
        )
        return cls(
            label=f"{identity.namespace}/{identity.name}",
            profile=document.profile,
            person=spec.inputs.person.uri,
            clothing=[
                (item.uri, models.ClothingCategory(item.category) if item.category else None)
                for item in spec.inputs.clothing
            ],
            place=spec.inputs.place.uri,
            params=pinned.params,
            pinned=pinned.changed,
            output_format=fmt,
            target=S3Target(bucket=bucket, key=upload.result_key(document.output_key_prefix, fmt)),
            metadata={
                "job": f"{identity.namespace}/{identity.name}",
                "uid": identity.uid,
                "attempt": str(identity.attempt),
            },
            declared={field: digest for field, digest in refs if digest is not None},
            reuse=scope,
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
    steps: int | None = None
    guidance: float | None = None
    identity_similarity_before_refinement: float | None = None
    reused_from: models.JobReference | None = None  # the job whose result was copied

    def result(self) -> models.Result:
        return models.Result(
            s3_uri=self.uri,
            sha256=self.sha256,
            width=self.width,
            height=self.height,
            format=models.ImageFormat(self.format),
            bytes=self.bytes,
            seed=self.seed,
            steps=self.steps,
            guidance=self.guidance,
            identity_similarity=_round4(self.identity_similarity),
            identity_similarity_before_refinement=_round4(
                self.identity_similarity_before_refinement
            ),
            reused_from=self.reused_from,
        )


def _round4(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


class Stopwatch:
    """Seconds per stage; ``time.perf_counter`` unless a clock is injected."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._started = clock()
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the block as stage ``name``; it is also a span, a child of the run's."""
        started = self._clock()
        try:
            with tracing.span(name):
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
            refine=_round(s.get("refine")),
            safety_check=_round(s.get("safety")),
            postprocess=_round(s.get("encode")),
            upload=_round(s.get("upload")),
            reuse=_round(s.get("reuse")),
            total=_round(self.total()),
        )


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


@dataclasses.dataclass(frozen=True)
class _Generated:
    image: Any
    seed: int
    similarity: float | None
    similarity_before_refinement: float | None
    attempts: int
    refine_seconds: float | None


@dataclasses.dataclass
class _Loaded:
    analyzer: Any | None = None
    pipeline: Any | None = None
    checker: Any | None = None


class Worker:
    """Runs jobs; keeps face analyzers and pipelines loaded per profile between jobs."""

    def __init__(
        self,
        *,
        fetcher: fetching.Fetcher,
        store: modelstore.ModelStore,
        uploader: upload.Uploader | None = None,
        results: reuse.Index | None = None,
        limits: images.ImageLimits = images.ImageLimits(),
        device: str | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.fetcher = fetcher
        self.store = store
        self.uploader = uploader
        self.results = results  # the reuse index; None: every job generates
        self.limits = limits
        self.device = device
        self._clock = clock
        self._loaded: dict[str, _Loaded] = {}
        self.loads = 0  # pipelines loaded so far (a warm worker loads each profile once)

    def run(
        self,
        job: Job,
        *,
        watch: Stopwatch | None = None,
        stop: Stop | None = None,
        fetcher: fetching.Fetcher | None = None,
    ) -> Outcome:
        """Run ``job`` through every stage; raises errors.ComposeError (with its exit code).

        ``stop`` is called between stages and denoising steps and stops the run by raising;
        ``fetcher`` replaces the worker's own for this run (the warm-up reads local samples)."""
        watch = watch or Stopwatch(self._clock)
        try:
            return self._run(job, watch, stop or _go_on, fetcher or self.fetcher)
        except errors.ComposeError:
            raise
        except Exception as error:
            raise errors.classify(error) from error

    def load(self, profile: profiles.ModelProfile) -> None:
        """Resolve and load the face analyzer and the pipeline of ``profile`` now (a warm
        worker's start), and its safety checker when the profile checks; jobs of that profile
        then have no load stage."""
        self._analyzer(profile)
        self._pipeline(profile)
        safety = profile.safety
        if safety is not None and (safety.inputs or safety.output):
            self._checker(profile)

    def loaded(self, profile: profiles.ModelProfile) -> bool:
        return self._slot(profile).pipeline is not None

    def _run(self, job: Job, watch: Stopwatch, stop: Stop, fetcher: fetching.Fetcher) -> Outcome:
        params = job.params
        # 1. check the request against the profile's pipeline, before reading any input
        with watch.stage("check"):
            self.check(job)
        # 2. fetch
        stop()
        with watch.stage("fetch"):
            person_bytes = fetcher.fetch(job.person, field="spec.inputs.person.uri")
            clothing_bytes = [
                fetcher.fetch(uri, field=f"spec.inputs.clothing[{index}].uri")
                for index, (uri, _) in enumerate(job.clothing)
            ]
            place_bytes = fetcher.fetch(job.place, field="spec.inputs.place.uri")
            person_sha, *clothing_sha, place_sha = reuse.hash_inputs(
                [
                    ("spec.inputs.person", person_bytes),
                    *((f"spec.inputs.clothing[{i}]", b) for i, b in enumerate(clothing_bytes)),
                    ("spec.inputs.place", place_bytes),
                ],
                job.declared,
            )
        # 3. validate
        stop()
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
        # 3b. reuse: an earlier job made this very image; a hit copies it and ends the run
        scope = job.reuse if self.results is not None else None
        key = None
        if scope is not None:
            key = reuse.digest(
                reuse.describe(
                    person=person_sha,
                    clothing=[
                        (sha, c) for sha, (_, c) in zip(clothing_sha, job.clothing, strict=True)
                    ],
                    place=place_sha,
                    params=params,
                    output_format=job.output_format,
                    profile=job.profile,
                )
            )
            stop()
            reused = self._reuse(job, scope, key, watch)
            if reused is not None:
                return reused
        # 3c. the safety check of the inputs, before any model for generation is loaded
        if job.profile.safety is not None and job.profile.safety.inputs:
            photos = [
                ("spec.inputs.person.uri", person.image),
                *((f"spec.inputs.clothing[{i}].uri", c) for i, (c, _) in enumerate(clothing)),
                ("spec.inputs.place.uri", place.image),
            ]
            self._screen(job.profile, photos, watch)
        # 4. face analysis, with only the (small) face models resolved
        stop()
        with watch.stage("face"):
            analyzer = self._analyzer(job.profile)
            face = analyzer.analyze(person.image)
        # 5. load the pipeline (once per profile: a warm job has no load stage); torch and
        # diffusers are imported here
        from compose_inference import pipeline as pipeline_module

        stop()
        if self.loaded(job.profile):
            pipe = self._pipeline(job.profile)
        else:
            with watch.stage("load"):
                pipe = self._pipeline(job.profile)
        request = pipeline_module.GenerationRequest(
            face=face, person=person.image, clothing=clothing, place=place.image, params=params
        )
        pipe.check_request(request)  # the loaded model's own size multiple
        # 6. generate, with the identity gate (the refinement pass is timed apart)
        stop()
        with watch.stage("generate"):
            generated = self._generate(job.profile, pipe, analyzer, request, stop)
        if generated.refine_seconds is not None:
            watch.seconds["generate"] -= generated.refine_seconds
            watch.seconds["refine"] = generated.refine_seconds
        image = generated.image
        # 6c. the safety check of the output: a flagged image is never encoded nor stored
        if job.profile.safety is not None and job.profile.safety.output:
            self._screen(job.profile, [("the generated image", image)], watch)
        # 7. encode
        stop()
        with watch.stage("encode"):
            data = images.encode(image, job.output_format)
            digest = hashlib.sha256(data).hexdigest()
        # 8. upload (or write the local file); a run stopped by now uploads nothing
        stop()
        with watch.stage("upload"):
            uri = self._store(job, data, seed=generated.seed, similarity=generated.similarity)
        outcome = Outcome(
            uri=uri,
            sha256=digest,
            bytes=len(data),
            width=image.width,
            height=image.height,
            format=job.output_format,
            seed=generated.seed,
            identity_similarity=generated.similarity,
            timings=dict(watch.seconds),
            attempts=generated.attempts,
            steps=params.steps,
            guidance=params.guidance,
            identity_similarity_before_refinement=generated.similarity_before_refinement,
        )
        # 9. offer the stored result to later jobs of the same description
        if scope is not None and key is not None and self.results is not None:
            with watch.stage("reuse"):
                self.results.record(scope, key, outcome.result())
        watch.seconds["total"] = watch.total()
        outcome.timings = dict(watch.seconds)
        return outcome

    def _reuse(self, job: Job, scope: reuse.Scope, key: str, watch: Stopwatch) -> Outcome | None:
        """The earlier result copied to this job's key, and the index pointed at the copy (the
        newest, which outlives the others); None when there is none to reuse."""
        if self.results is None or not isinstance(job.target, S3Target):
            return None
        with watch.stage("reuse"):
            result = self.results.reuse(
                scope,
                key,
                target_key=job.target.key,
                output_format=job.output_format,
                metadata=lambda found: _metadata(
                    job, seed=found.seed, similarity=found.identity_similarity
                ),
            )
            if result is None:
                return None
            self.results.record(scope, key, result)
        watch.seconds["total"] = watch.total()
        return Outcome(
            uri=result.s3_uri,
            sha256=result.sha256,
            bytes=result.bytes or 0,
            width=result.width,
            height=result.height,
            format=job.output_format,
            seed=result.seed,
            identity_similarity=result.identity_similarity,
            timings=dict(watch.seconds),
            attempts=0,
            steps=result.steps,
            guidance=result.guidance,
            identity_similarity_before_refinement=result.identity_similarity_before_refinement,
            reused_from=result.reused_from,
        )

    def check(self, job: Job) -> None:
        """The request checks that need no input and no model (``checks.check_request``)."""
        profile = job.profile
        try:
            options = checks.PipelineOptions.parse(profile.options, dtype=profile.dtype)
        except ValueError as error:
            raise errors.ModelLoadFailed(f"profile {profile.name}: {error}") from None
        checks.check_request(
            job.params,
            [category for _, category in job.clothing],
            options=options,
            has_image_encoder={"image_encoder", "clothing_adapter"} <= set(profile.models),
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
        detector = profile.options.get("face_detector", "insightface")
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
                path, providers=providers, multiple_faces=policy, detector=detector
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
            if name not in (FACE_COMPONENT, _checker_name(profile))
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

    def _screen(
        self, profile: profiles.ModelProfile, items: list[tuple[str, Any]], watch: Stopwatch
    ) -> None:
        """The safety check of ``(label, image)`` items (``moderation``): the checker's load
        (once per profile: a warm job has no load stage) counts as ``load``, the check as
        ``safety``."""
        loaded = self._slot(profile).checker
        if loaded is not None:
            checker = loaded
        else:
            with watch.stage("load"):
                checker = self._checker(profile)
        with watch.stage("safety"):
            checker.screen(items)

    def _checker(self, profile: profiles.ModelProfile) -> Any:
        from compose_inference import moderation

        slot = self._slot(profile)
        if slot.checker is not None:
            return slot.checker
        name = _checker_name(profile)
        source = profile.models[name]  # the profile's validator made sure it is there
        path = self.store.resolve_source(name, source)
        device = self.device_for(profile)
        try:
            slot.checker = moderation.SafetyChecker.load(
                path,
                adjustment=(profile.safety or profiles.SafetyCheck()).adjustment,
                dtype=profile.dtype if device.startswith("cuda") else "float32",
                device=device,
                variant=source.variant,
            )
        except Exception as error:
            if errors.is_out_of_memory(error):
                raise errors.OutOfGpuMemory(f"out of GPU memory while loading: {error}") from error
            raise errors.ModelLoadFailed(
                f"profile.models.{name}: {type(error).__name__}: {error}"
            ) from error
        return slot.checker

    def _generate(
        self, profile: profiles.ModelProfile, pipe: Any, analyzer: Any, request: Any, stop: Stop
    ) -> _Generated:
        from compose_inference import quality

        minimum = profile.min_identity_similarity
        best: _Generated | None = None
        tries = profile.identity_retries + 1
        refine_seconds: float | None = None
        for attempt in range(tries):
            seed = (request.seed + attempt * 7919) % 2**32
            stop()
            result = pipe(request.with_seed(seed), interrupt=stop)
            if "refine" in result.timings:
                refine_seconds = (refine_seconds or 0.0) + result.timings["refine"]
            similarity = quality.identity_similarity(analyzer, request.face, result.image)
            before = None
            if result.unrefined is not None:
                before = quality.identity_similarity(analyzer, request.face, result.unrefined)
            log.info(
                "identity similarity (seed %d): %s (before refinement: %s)",
                seed,
                similarity,
                before,
            )
            generated = _Generated(result.image, seed, similarity, before, attempt + 1, None)
            if minimum <= 0 or (similarity is not None and similarity >= minimum):
                return dataclasses.replace(generated, refine_seconds=refine_seconds)
            if best is None or (similarity or -1.0) > (best.similarity or -1.0):
                best = generated
        best_text = (
            "no face in the output"
            if best is None or best.similarity is None
            else f"{best.similarity:.3f}"
        )
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
        stored = self.uploader.upload(
            data,
            bucket=job.target.bucket,
            key=job.target.key,
            fmt=job.output_format,
            metadata=_metadata(job, seed=seed, similarity=similarity),
        )
        return stored.uri


def _metadata(job: Job, *, seed: int, similarity: float | None) -> dict[str, str]:
    """The result object's S3 metadata: the job, its profile, the seed and similarity kept."""
    metadata = dict(job.metadata)
    metadata.update({"seed": str(seed), "profile": job.profile.name})
    if similarity is not None:
        metadata["identity-similarity"] = f"{similarity:.4f}"
    return metadata


def _checker_name(profile: profiles.ModelProfile) -> str:
    """The models entry of the safety checker (never a generation component, even when the
    check is off)."""
    return (profile.safety or profiles.SafetyCheck()).component


def _go_on() -> None:
    """The ``stop`` of a run that nothing stops."""


def termination_message(
    *,
    outcome: Outcome | None,
    error: errors.ComposeError | None,
    watch: Stopwatch,
    pinned: str = "",
) -> contract.TerminationMessage:
    """The JSON the pod leaves in /dev/termination-log for the operator; ``pinned`` says what the
    profile's pins changed (``parameters.Pinned.describe``)."""
    if outcome is not None:
        code = contract.ExitCode.OK
        return contract.TerminationMessage(
            exit_code=int(code),
            reason=str(code.reason),
            message=_done(outcome) + (f"; {pinned}" if pinned else ""),
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


def _done(outcome: Outcome) -> str:
    size = f"{outcome.width}x{outcome.height} {outcome.format}"
    source = outcome.reused_from
    if source is None:
        return f"composed {size}"
    return f"reused the {size} result of {source.namespace}/{source.name} (uid {source.uid})"
