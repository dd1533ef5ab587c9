"""The ``compose`` command: the inference image's entrypoint, in a pod or on a workstation.

- Pod mode (``COMPOSE_JOB_DOCUMENT`` set, or ``compose run-job [--job-file F]``): parse the job
  document the operator gave the pod, run it, upload the result, write the termination message to
  ``/dev/termination-log`` (``COMPOSE_TERMINATION_LOG`` overrides the path) and exit with the
  code from ``compose_api.contract.ExitCode``.
- Local mode: ``compose --person p.jpg --clothing shirt.jpg --place beach.jpg --out result.png``
  with local files (or s3:// / https:// URIs) in and a local file out.
- ``compose samples --dir samples/``: writes sample inputs (photos shipped with scikit-image) so
  the first command of the README runs without network.
- ``compose worker``: a warm worker of a CompositionPool (``pool_worker``), settings from the
  environment (``compose_api.pools``); a bad setting exits 2 naming the variable.

Tracing (``compose_api.tracing``): on when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set (the operator
hands its own export settings to the pods and workers it creates). A pod's run is a span whose
parent is ``TRACEPARENT`` (the operator's span that created the Job); the stages are its children.

Wiring only: settings come from the environment and the command line, the work is in ``runner``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import secrets
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pydantic

from compose_api import contract, models, parameters, profiles, tracing
from compose_inference import (
    catalogue,
    errors,
    fetching,
    images,
    modelstore,
    pool_worker,
    reuse,
    runner,
    upload,
)
from compose_inference.samples import write_samples

log = logging.getLogger("compose_inference")

# OpenTelemetry's service.name (unless OTEL_SERVICE_NAME says otherwise, as the operator does).
SERVICE_NAME = "compose-inference"
WORKER_SERVICE = "compose-worker"
TERMINATION_LOG_ENV = "COMPOSE_TERMINATION_LOG"
RESULTS_BUCKET_ENV = "COMPOSE_OUTPUT_BUCKET"
MAX_PIXELS_ENV = "COMPOSE_MAX_INPUT_PIXELS"
SMOKE_NOTICE = (
    "NOTE: the 'smoke' profile runs tiny random weights: the output is NOISE. It only checks that"
    " the install works end to end. Use --profile instantid-sdxl (GPU) for real images."
)
_FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}


def main(argv: Sequence[str] | None = None) -> int:
    """Console script ``compose``; returns the exit code (see inference_image/README.md)."""
    args = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=os.environ.get("COMPOSE_LOG_LEVEL", "INFO").upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        tracing.configure(WORKER_SERVICE if args[:1] == ["worker"] else SERVICE_NAME)
    except tracing.SettingsError as error:
        if args[:1] == ["worker"]:
            print(f"compose worker: error: {error}", file=sys.stderr)
            return 2
        log.warning("tracing off: %s", error)  # a job never fails for its tracing
    if args and args[0] == "run-job":
        return run_job(args[1:])
    if args and args[0] == "samples":
        return samples(args[1:])
    if args and args[0] == "worker":
        return worker(args[1:])
    if not args and os.environ.get(contract.JOB_DOCUMENT_ENV):
        return run_job([])
    return local(args)


# -- shared wiring ------------------------------------------------------------------------------


def _limits(environ: Mapping[str, str]) -> images.ImageLimits:
    fetch = fetching.FetchSettings.from_env(environ)
    raw = environ.get(MAX_PIXELS_ENV, "").strip()
    try:
        pixels = int(raw) if raw else images.DEFAULT_MAX_PIXELS
    except ValueError:
        raise ValueError(f"{MAX_PIXELS_ENV}: {raw!r} is not an integer") from None
    return images.ImageLimits(max_bytes=fetch.max_bytes, max_pixels=pixels)


def _worker(
    environ: Mapping[str, str], *, local_mode: bool, device: str | None = None
) -> runner.Worker:
    return runner.Worker(
        fetcher=fetching.Fetcher(
            fetching.FetchSettings.from_env(environ, allow_local_paths=local_mode)
        ),
        store=modelstore.ModelStore(modelstore.StoreSettings.from_env(environ)),
        uploader=upload.Uploader(),
        results=reuse.Index(),
        limits=_limits(environ),
        device=device,
    )


# -- pod mode -----------------------------------------------------------------------------------


def run_job(argv: Sequence[str], *, environ: Mapping[str, str] | None = None) -> int:
    """Run the job document; always leave a termination message; return its exit code."""
    env = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(prog="compose run-job", description=run_job.__doc__)
    parser.add_argument("--job-file", type=Path, help="job document JSON (default: env)")
    options = parser.parse_args(argv)
    watch = runner.Stopwatch()
    outcome: runner.Outcome | None = None
    failure: errors.ComposeError | None = None
    job: runner.Job | None = None
    pinned: parameters.Pinned | None = None
    try:
        document = _read_document(options.job_file, env)
        log.info(
            "job %s/%s uid=%s attempt=%d profile=%s seed=%d",
            document.job.namespace,
            document.job.name,
            document.job.uid,
            document.job.attempt,
            document.profile.name,
            document.seed,
        )
        worker = _worker(env, local_mode=False)
        if not document.profile.models:
            profile = catalogue.lookup(document.profile.name, store=worker.store)
            document = document.model_copy(update={"profile": profile})
        job = runner.Job.from_document(document, default_bucket=env.get(RESULTS_BUCKET_ENV))
        pinned = parameters.Pinned(job.params, job.pinned)
        with _run_span(document, env):
            outcome = worker.run(job, watch=watch)
    except errors.ComposeError as error:
        failure = error
    except Exception as error:  # the process must still report why it stopped
        log.exception("unexpected failure")
        failure = errors.classify(error)
    message = runner.termination_message(
        outcome=outcome,
        error=failure,
        watch=watch,
        pinned=pinned.describe(job.profile.name) if job is not None and pinned else "",
    )
    _write_termination_log(message, env)
    if failure is not None:
        log.error("failed (exit %d, %s): %s", message.exit_code, message.reason, failure.message)
    else:
        log.info("done: %s", message.to_json())
    print(message.to_json())
    return message.exit_code


def _run_span(
    document: contract.JobDocument, env: Mapping[str, str]
) -> contextlib.AbstractContextManager[Any]:
    """The pod's span of the run: a child of the operator's ``create Job`` span, which the Job
    hands over in ``TRACEPARENT``; the stages' spans are its children."""
    identity = document.job
    return tracing.span(
        "run",
        parent=tracing.context_of(env.get(tracing.TRACEPARENT_ENV)),
        attributes={
            "k8s.namespace.name": identity.namespace,
            "compose.job": identity.name,
            "compose.job.uid": identity.uid,
            "compose.attempt": identity.attempt,
            "compose.profile": document.profile.name,
        },
        entry=True,
    )


def _read_document(path: Path | None, env: Mapping[str, str]) -> contract.JobDocument:
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as error:
            raise errors.InputRejected(f"--job-file {path}: {error.strerror or error}") from None
    else:
        text = env.get(contract.JOB_DOCUMENT_ENV, "")
        if not text.strip():
            raise errors.InputRejected(f"{contract.JOB_DOCUMENT_ENV}: empty (no job document)")
    try:
        return contract.JobDocument.model_validate_json(text)
    except pydantic.ValidationError as error:
        detail = models.describe_validation_error(error, root="jobDocument")
        raise errors.InputRejected(f"invalid job document: {detail}") from None


def _write_termination_log(message: contract.TerminationMessage, env: Mapping[str, str]) -> None:
    path = Path(env.get(TERMINATION_LOG_ENV) or contract.TERMINATION_LOG_PATH)
    try:
        path.write_text(message.to_json(), encoding="utf-8")
    except OSError as error:
        log.warning("could not write the termination message to %s: %s", path, error)


# -- pool worker --------------------------------------------------------------------------------


def worker(argv: Sequence[str], *, environ: Mapping[str, str] | None = None) -> int:
    """Serve the jobs a CompositionPool's operator assigns to this pod, until SIGTERM."""
    env = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(
        prog="compose worker",
        description=worker.__doc__,
        epilog="Settings come from the environment: see inference_image/README.md.",
    )
    parser.parse_args(argv)
    try:
        settings = pool_worker.Settings.from_env(env)
        inner = _worker(env, local_mode=False)
    except ValueError as error:  # pool_worker.SettingsError included
        print(f"compose worker: error: {error}", file=sys.stderr)
        return 2
    return pool_worker.main(settings, inner)


# -- local mode ---------------------------------------------------------------------------------


def _local_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="compose",
        description="Compose a photo of a person wearing the given clothes in the given place.",
        epilog="Other commands: 'compose samples --dir DIR' writes sample inputs; "
        "'compose run-job [--job-file F]' runs a job document (pod mode); "
        "'compose worker' serves a CompositionPool's jobs. "
        "Exit codes: see inference_image/README.md.",
    )
    parser.add_argument("--person", required=True, help="person photo (one face must show)")
    parser.add_argument(
        "--clothing",
        action="append",
        required=True,
        metavar="PATH[#CATEGORY]",
        help="garment photo; repeat for several; optional #upper, #lower, #dress, #outerwear, "
        "#shoes or #accessory",
    )
    parser.add_argument("--place", required=True, help="photo of the place (background)")
    parser.add_argument("--out", required=True, type=Path, help="result file (.png/.jpg/.webp)")
    parser.add_argument("--format", choices=["png", "jpeg", "webp"], help="default: from --out")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--profile", default=catalogue.SMOKE, help="profile name (default: smoke)")
    group.add_argument("--profile-file", type=Path, help="YAML file with one or more profiles")
    parser.add_argument("--profile-name", help="which profile of --profile-file (default: first)")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    # One flag per field of the API's Params, generated: names, types, defaults and bounds are
    # the API's. Unset flags take the API's default; a profile's pins win over both.
    flags = parser.add_argument_group(
        "generation parameters (spec.params; a profile may pin steps, guidance and size)"
    )
    for field in parameters.fields():
        if field.name == "seed":
            default = "random (printed)"
        elif field.default is None:
            default = "none"
        else:
            default = repr(field.default) if field.kind is str else str(field.default)
        bounds = ""
        if field.minimum is not None or field.maximum is not None:
            bounds = f" [{_number(field.minimum)}..{_number(field.maximum)}]"
        if field.multiple_of:
            bounds += f" (multiple of {field.multiple_of})"
        flags.add_argument(
            field.flag,
            dest=field.name,
            type=field.kind,
            default=None,
            metavar=field.kind.__name__.upper(),
            help=f"{field.description}{bounds} Default: {default}.",
        )
    return parser


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def _params(options: argparse.Namespace, *, seed: int) -> models.Params:
    """The API's Params from the flags given (the rest: the API's defaults); errors name the
    flag."""
    given = {
        field.name: getattr(options, field.name)
        for field in parameters.fields()
        if getattr(options, field.name) is not None
    }
    given["seed"] = seed
    try:
        return parameters.build(given, root="")
    except ValueError as error:
        flags = {field.name: field.flag for field in parameters.fields()}
        message = str(error)
        for name, flag in flags.items():
            message = message.replace(f".{name}:", f"{flag}:")
        raise errors.InputRejected(message) from None


def _clothing_item(text: str) -> tuple[str, models.ClothingCategory | None]:
    path, sep, category = text.rpartition("#")
    if sep and category in {str(item) for item in models.ClothingCategory}:
        return path, models.ClothingCategory(category)
    return text, None


def _output_format(out: Path, explicit: str | None) -> str:
    if explicit:
        return explicit
    fmt = _FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise errors.InputRejected(
            f"--out {out}: unknown extension (use .png, .jpg, .webp or --format)"
        )
    return fmt


def local(argv: Sequence[str], *, environ: Mapping[str, str] | None = None) -> int:
    """Local mode: files in, a file out; prints a JSON summary; returns the exit code."""
    env = os.environ if environ is None else environ
    options = _local_parser().parse_args(argv)
    try:
        worker = _worker(env, local_mode=True, device=options.device)
        profile = _local_profile(options, worker.store)
        if profile.name == catalogue.SMOKE:
            print(SMOKE_NOTICE, file=sys.stderr)
        if not profile.licence.commercial_use:
            print(
                f"LICENCE: profile {profile.name!r}: {profile.licence.name} (not for commercial"
                " use).",
                file=sys.stderr,
            )
        seed = options.seed if options.seed is not None else secrets.randbelow(2**32)
        # One rule in both modes: the profile's pins win over the flags, and say so.
        pinned = runner.pin_profile(_params(options, seed=seed), profile)
        if pinned.changed:
            print(f"NOTE: {pinned.describe(profile.name)}", file=sys.stderr)
        job = runner.Job(
            label="local",
            profile=profile,
            person=options.person,
            clothing=[_clothing_item(item) for item in options.clothing],
            place=options.place,
            params=pinned.params,
            pinned=pinned.changed,
            output_format=_output_format(options.out, options.format),
            target=runner.LocalTarget(path=options.out),
        )
        with tracing.span("run", attributes={"compose.profile": profile.name}, entry=True):
            outcome = worker.run(job)
    except errors.ComposeError as error:
        print(f"compose: error: {error.message}", file=sys.stderr)
        print(f"exit code {int(error.exit_code)} ({error.exit_code.name})", file=sys.stderr)
        return int(error.exit_code)
    except ValueError as error:  # bad settings in the environment
        print(f"compose: error: {error}", file=sys.stderr)
        return int(contract.ExitCode.INPUT_REJECTED)
    summary = {
        "out": outcome.uri,
        "profile": profile.name,
        "width": outcome.width,
        "height": outcome.height,
        "format": outcome.format,
        "seed": outcome.seed,
        "steps": outcome.steps,
        "guidance": outcome.guidance,
        "pinnedByProfile": {name: used for name, (_, used) in job.pinned.items()},
        "sha256": outcome.sha256,
        "identitySimilarity": outcome.identity_similarity,
        "identitySimilarityBeforeRefinement": outcome.identity_similarity_before_refinement,
        "timings": {key: round(value, 3) for key, value in outcome.timings.items()},
    }
    print(json.dumps(summary, indent=2))
    if profile.name == catalogue.SMOKE:
        print(SMOKE_NOTICE, file=sys.stderr)
    return int(contract.ExitCode.OK)


def _local_profile(
    options: argparse.Namespace, store: modelstore.ModelStore
) -> profiles.ModelProfile:
    if options.profile_file is not None:
        extra = catalogue.from_file(options.profile_file)
        name = options.profile_name or next(iter(extra), "")
        if name not in extra:
            raise errors.UnknownProfile(
                f"--profile-name {name!r}: not in {options.profile_file} ({', '.join(extra)})"
            )
        return extra[name]
    return catalogue.lookup(options.profile, store=store)


# -- samples ------------------------------------------------------------------------------------


def samples(argv: Sequence[str]) -> int:
    """Write sample inputs (photos shipped with scikit-image, no network) into a folder."""
    parser = argparse.ArgumentParser(prog="compose samples", description=samples.__doc__)
    parser.add_argument("--dir", type=Path, default=Path("samples"))
    options = parser.parse_args(argv)
    written = write_samples(options.dir)
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
