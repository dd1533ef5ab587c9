"""``compose worker``: one warm worker of a CompositionPool, serving the jobs assigned to it.

The operator reconciles a ``CompositionPool`` into a Deployment of pods running ``compose
worker`` and hands each of them jobs through ``status.assignment`` of the CompositionJob; the
protocol is written down once, in ``compose_api.pools``, and this module is the worker's side
of it. ``__main__`` only wires it (settings from the environment, the ``runner.Worker``).

1. **Settings** (:meth:`Settings.from_env`): the ``compose_api.pools`` variables, the Kubernetes
   connection (``compose_api.kube.Connection.from_env``); a bad one exits 2 naming the variable.
2. **Start**: the probes answer at once (``probes``: ``/healthz`` while loading, ``/readyz`` 503).
   The profile is loaded once and one warm-up generation runs on the built-in samples (no
   network), in a thread; a model that cannot load exits with its ``contract.ExitCode``
   (MODEL_LOAD_FAILED, OUT_OF_GPU_MEMORY...) and no Lease is ever made. Then the worker creates
   its Lease (``pools.lease_body``; a Lease of that name left by an earlier container of the pod
   is taken over with the new holder identity) and is ready.
3. **Lease**: renewed every ``leaseSeconds / 3`` in the event loop (``pools.state_patch``, which
   also carries the state), never blocked by a generation (that runs in a thread). Fencing: a
   worker that has not renewed for ``leaseSeconds`` accepts nothing until it has renewed again.
4. **Assignments**: a list + watch of the CompositionJobs assigned to its pod
   (``pools.assigned_selector``), resumed from the last resourceVersion, listed again on 410, with
   backoff on errors. An assignment to its own instance that it has not accepted is accepted
   while the worker is idle (``pools.accept_patch``; 422: the assignment moved, dropped), run
   through ``runner.Worker.run`` with no model load, and reported (``pools.report_patch``) with
   the same content a Job pod leaves in its termination message (``runner.termination_message``).
   Bad input is reported with its exit code and the worker takes the next job.
5. **Taken back**: when the watch no longer selects the job (the operator removed or moved the
   assignment, or the job was deleted), the run stops at its next stage boundary or denoising
   step and uploads nothing; nothing is reported. Past ``spec.execution.activeDeadlineSeconds``
   counted from the accept, the run stops the same way and is reported as failed with
   ``contract.ExitCode.DEADLINE_EXCEEDED`` (reason ``DeadlineExceeded``, retried by the operator
   as a Job pod stopped at its deadline is).
6. **Tracing** (``compose_api.tracing``): each assignment is a ``run`` span (with ``accept``,
   the stages and ``report`` inside), a child of the operator's ``assign worker`` span named by
   ``status.assignment.traceparent``; the warm-up is a trace of its own.
7. **Drain** (SIGTERM or SIGINT): the Lease is marked draining, nothing new is accepted, the job
   in hand is finished and reported, the Lease is deleted, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import logging
import os
import secrets
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any

import pydantic

from compose_api import contract, kube, models, parameters, pools, profiles, tracing
from compose_inference import catalogue, errors, fetching, runner, samples

log = logging.getLogger("compose_inference.worker")

Obj = dict[str, Any]
Clock = Callable[[], float]
Now = Callable[[], datetime.datetime]

# Reports carry at most this many characters of message (models.WorkerReport.message).
MESSAGE_LIMIT = 4096
# Backoff of the watch, the Lease's creation and the reports: from the first to the cap.
BACKOFF_FIRST = 0.5
BACKOFF_CAP = 10.0
WATCH_TIMEOUT_SECONDS = 240

_LEASE_SECONDS = pydantic.TypeAdapter(
    Annotated[int, *pools.CompositionPoolSpec.model_fields["lease_seconds"].metadata]
)
_PORT = pydantic.TypeAdapter(Annotated[int, pydantic.Field(ge=1, le=65535)])
RESULTS_BUCKET_ENV = "COMPOSE_OUTPUT_BUCKET"


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


# -- settings ------------------------------------------------------------------------------------


class SettingsError(ValueError):
    """A bad setting; the message names the environment variable."""


@dataclasses.dataclass(frozen=True)
class Settings:
    pod: str
    namespace: str
    pool: str
    profile: profiles.ModelProfile
    connection: kube.Connection
    node: str | None = None
    pod_uid: str | None = None
    lease_seconds: int = 15
    port: int = pools.PROBE_PORT
    default_bucket: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ

        def required(name: str) -> str:
            value = env.get(name, "").strip()
            if not value:
                raise SettingsError(f"{name}: required, and empty")
            return value

        def optional(name: str) -> str | None:
            return env.get(name, "").strip() or None

        def number(name: str, adapter: pydantic.TypeAdapter[int], default: int) -> int:
            raw = env.get(name, "").strip()
            if not raw:
                return default
            try:
                return adapter.validate_strings(raw)
            except pydantic.ValidationError as error:
                reason = error.errors()[0]["msg"]
                raise SettingsError(f"{name}: {raw!r}: {reason}") from None

        text = required(pools.PROFILE_ENV)
        try:
            profile = profiles.ModelProfile.model_validate_json(text)
        except pydantic.ValidationError as error:
            detail = models.describe_validation_error(error, root=pools.PROFILE_ENV)
            raise SettingsError(f"{pools.PROFILE_ENV}: not a model profile: {detail}") from None
        try:
            connection = kube.Connection.from_env(env)
        except kube.KubeError as error:
            raise SettingsError(
                "COMPOSE_KUBE_URL, KUBECONFIG or the pod's service account: "
                f"no Kubernetes connection: {error.message}"
            ) from None
        default_lease = pools.CompositionPoolSpec.model_fields["lease_seconds"].default
        return cls(
            pod=required(pools.POD_ENV),
            namespace=required(pools.NAMESPACE_ENV),
            pool=required(pools.POOL_ENV),
            profile=profile,
            connection=connection,
            node=optional(pools.NODE_ENV),
            pod_uid=optional(pools.POD_UID_ENV),
            lease_seconds=number(pools.LEASE_SECONDS_ENV, _LEASE_SECONDS, default_lease),
            port=number(pools.PORT_ENV, _PORT, pools.PROBE_PORT),
            default_bucket=optional(RESULTS_BUCKET_ENV),
        )


# -- warm-up -------------------------------------------------------------------------------------


def resolve_profile(profile: profiles.ModelProfile, worker: runner.Worker) -> profiles.ModelProfile:
    """A profile given by name only (no models) is looked up in the image's catalogue, as in
    pod mode; UNKNOWN_PROFILE when it is not there."""
    if profile.models:
        return profile
    return catalogue.lookup(profile.name, store=worker.store)


def warm_up(worker: runner.Worker, profile: profiles.ModelProfile, folder: Path) -> runner.Outcome:
    """Load the profile, then generate once from the built-in samples into ``folder`` (local
    files only: the warm-up needs no network)."""
    with tracing.span("load"):
        worker.load(profile)
    person, shirt, trousers, place = samples.write_samples(folder / "samples")
    params = runner.pin_profile(models.Params(seed=0), profile).params
    job = runner.Job(
        label="warm-up",
        profile=profile,
        person=str(person),
        clothing=[
            (str(shirt), models.ClothingCategory.UPPER),
            (str(trousers), models.ClothingCategory.LOWER),
        ],
        place=str(place),
        params=params,
        output_format="png",
        target=runner.LocalTarget(folder / "warm-up.png"),
    )
    local = fetching.Fetcher(fetching.FetchSettings(allow_local_paths=True))
    return worker.run(job, fetcher=local)


# -- one run ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
    """The job in hand: its assignment, its deadline, and whether it was taken back."""

    name: str
    uid: str
    assignment: models.WorkerAssignment
    accepted_at: datetime.datetime
    deadline: float  # on the worker's monotonic clock
    deadline_seconds: int
    clock: Clock
    taken_back: threading.Event = dataclasses.field(default_factory=threading.Event)

    def still_assigned(self, obj: Mapping[str, Any]) -> bool:
        """Whether ``obj`` (the job as the watch shows it now) still hands this attempt to this
        instance, and is not being deleted."""
        meta = obj.get("metadata") or {}
        if meta.get("uid") != self.uid or meta.get("deletionTimestamp"):
            return False
        found = _assignment(obj)
        return found is not None and (found.worker_instance, found.attempt) == (
            self.assignment.worker_instance,
            self.assignment.attempt,
        )

    def check(self) -> None:
        """The runner's ``stop``: called between stages and denoising steps, in its thread."""
        if self.taken_back.is_set():
            raise errors.Stopped(f"{self.name}: taken back")
        if self.clock() >= self.deadline:
            raise errors.DeadlineExceeded(
                f"spec.execution.activeDeadlineSeconds: the attempt ran past"
                f" {self.deadline_seconds} s since the worker accepted it"
            )


def _assignment(obj: Mapping[str, Any]) -> models.WorkerAssignment | None:
    raw = (obj.get("status") or {}).get("assignment")
    if not raw:
        return None
    try:
        return models.WorkerAssignment.model_validate(raw)
    except pydantic.ValidationError:
        return None


def _accepted_by(obj: Mapping[str, Any], instance: str, attempt: int) -> bool:
    report = (obj.get("status") or {}).get("workerReport") or {}
    return report.get("workerInstance") == instance and report.get("attempt") == attempt


def _fit(message: str) -> str:
    if len(message) <= MESSAGE_LIMIT:
        return message
    return message[: MESSAGE_LIMIT - 1] + "…"


# -- the worker ------------------------------------------------------------------------------------


class PoolWorker:
    """The worker's event loop: probes, Lease, watch, and one job at a time in a thread."""

    def __init__(
        self,
        settings: Settings,
        worker: runner.Worker,
        client: kube.Client,
        *,
        instance: str | None = None,
        clock: Clock = time.monotonic,
        now: Now = utcnow,
        watch_seconds: int = WATCH_TIMEOUT_SECONDS,
    ) -> None:
        self.settings = settings
        self._watch_seconds = watch_seconds  # the server ends each watch after this long
        self.worker = worker
        self.client = client
        self.instance = instance or secrets.token_hex(5)
        self.identity = pools.holder_identity(settings.pod, self.instance)
        self.profile = settings.profile
        self._clock = clock
        self._now = now
        self.warm = False
        self.draining = False
        self.renewed_at: float | None = None  # monotonic time a successful renewal was sent
        self.assigned: dict[str, Obj] = {}  # the watch's view: name -> CompositionJob
        self.current: Run | None = None
        # (uid, attempt) this instance accepted or was refused: never accepted again, even while
        # the watch has not shown the accept yet.
        self._settled: set[tuple[str, int]] = set()
        self._retry_at = 0.0
        self._lease_uid: str | None = None
        self._wake = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()
        ns = settings.namespace
        self._jobs = kube.path(models.API_VERSION, models.PLURAL, namespace=ns)
        self._leases = kube.path("coordination.k8s.io/v1", "leases", namespace=ns)
        self._lease = kube.path("coordination.k8s.io/v1", "leases", namespace=ns,
                                name=settings.pod)  # fmt: skip

    # -- state ------------------------------------------------------------------------------------

    def fresh(self) -> bool:
        """The Lease was renewed less than leaseSeconds ago (fencing: else no new work)."""
        return (
            self.renewed_at is not None
            and self._clock() - self.renewed_at < self.settings.lease_seconds
        )

    def readiness(self) -> str | None:
        if self.draining:
            return "draining"
        if not self.warm:
            return "loading the models and warming up"
        if not self.fresh():
            return f"Lease not renewed for {self.settings.lease_seconds} s"
        return None

    def drain(self) -> None:
        """SIGTERM/SIGINT: take nothing new, finish the job in hand, then leave."""
        if self.draining:
            return
        log.info("draining: finishing %s", self.current.name if self.current else "no job")
        self.draining = True
        self._wake.set()
        if self._lease_uid is not None:
            self._spawn(self._mark_draining())

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- the whole life ---------------------------------------------------------------------------

    async def serve(self) -> int:
        """Load, warm up, take the Lease, serve until drained; the process exit code."""
        from compose_inference import probes

        probe = probes.Probes(self.readiness, port=self.settings.port)
        await probe.start()
        loop = asyncio.get_running_loop()
        for number in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(number, self.drain)
        try:
            code = await self._start()
            if code is not None:
                return code
            renewing = asyncio.ensure_future(self._renew_forever())
            watching = asyncio.ensure_future(self._watch_forever())
            try:
                await self._dispatch()
            finally:
                for task in (renewing, watching):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            await self._delete_lease()
            log.info("drained: Lease deleted, exiting")
            return 0
        finally:
            for number in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(number)
            for task in list(self._background):
                task.cancel()
            await probe.stop()

    async def _start(self) -> int | None:
        """Load and warm up, then create the Lease; an exit code when the worker must stop."""
        started = self._clock()
        try:
            with tempfile.TemporaryDirectory(prefix="compose-warm-up-") as folder:
                self.profile = await asyncio.to_thread(
                    resolve_profile, self.settings.profile, self.worker
                )
                with tracing.span("warm-up", attributes=self._attributes(), entry=True):
                    outcome = await asyncio.to_thread(
                        warm_up, self.worker, self.profile, Path(folder)
                    )
        except Exception as error:
            failure = errors.classify(error)
            log.error(
                "profile %s: load or warm-up failed (exit %d, %s): %s",
                self.settings.profile.name,
                int(failure.exit_code),
                failure.exit_code.name,
                failure.message,
            )
            return int(failure.exit_code)
        log.info(
            "profile %s loaded and warmed up in %.1f s (warm-up stages: %s)",
            self.profile.name,
            self._clock() - started,
            ", ".join(f"{key} {value:.2f}" for key, value in outcome.timings.items()),
        )
        if self.draining:
            return 0
        try:
            await self._create_lease()
        except kube.KubeError as error:
            log.error("the Lease %s could not be created: %s", self.settings.pod, error)
            return int(contract.ExitCode.INTERNAL)
        if self._lease_uid is None:  # drained while trying
            return 0
        self.warm = True
        log.info("ready: Lease %s held by %s", self.settings.pod, self.identity)
        return None

    # -- the Lease --------------------------------------------------------------------------------

    def _lease_body(self) -> Obj:
        return pools.lease_body(
            pool=self.settings.pool,
            namespace=self.settings.namespace,
            pod=self.settings.pod,
            pod_uid=self.settings.pod_uid,
            instance=self.instance,
            lease_seconds=self.settings.lease_seconds,
            now=self._now(),
            state=pools.STATE_DRAINING if self.draining else pools.STATE_READY,
        )

    async def _create_lease(self) -> None:
        """Create the Lease, or take over the one an earlier container of this pod left (a
        merge patch: the worker's permissions hold no update). Transient errors are retried
        until it exists or the worker drains; 401/403/422 raise."""
        delay = BACKOFF_FIRST
        while not self.draining:
            sent = self._clock()
            body = self._lease_body()
            try:
                try:
                    found = await self.client.create(self._leases, body)
                except kube.Conflict:
                    meta = body["metadata"]
                    takeover: Obj = {
                        "metadata": {
                            key: meta[key]
                            for key in ("labels", "annotations", "ownerReferences")
                            if key in meta
                        },
                        "spec": body["spec"],
                    }
                    found = await self.client.patch(self._lease, takeover)
                    log.info("took over the Lease %s from an earlier container", self.settings.pod)
            except (kube.Unauthorized, kube.Forbidden, kube.Invalid):
                raise
            except kube.KubeError as error:  # gone between create and patch, or transient
                log.warning("creating the Lease: %s; again in %.1f s", error, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_CAP)
                continue
            self._lease_uid = str((found.get("metadata") or {}).get("uid") or "") or None
            self.renewed_at = sent
            return

    async def _renew_forever(self) -> None:
        period = self.settings.lease_seconds / 3
        while True:
            next_at = (self.renewed_at or self._clock()) + period
            await asyncio.sleep(max(0.0, next_at - self._clock()))
            await self._renew(timeout=period)

    async def _renew(self, *, timeout: float) -> None:  # noqa: ASYNC109 (one renewal's bound)
        sent = self._clock()
        state = pools.STATE_DRAINING if self.draining else pools.STATE_READY
        try:
            await asyncio.wait_for(
                self.client.patch(self._lease, pools.state_patch(state, self._now())),
                timeout=max(timeout, 0.5),
            )
        except kube.NotFound:
            log.warning("the Lease %s is gone: creating it again", self.settings.pod)
            try:
                await self._create_lease()
            except kube.KubeError as error:
                log.error("the Lease %s could not be created again: %s", self.settings.pod, error)
            self._wake.set()
            return
        except (kube.KubeError, TimeoutError) as error:
            log.warning("renewing the Lease %s failed: %s", self.settings.pod, error or "timeout")
            return
        was_fresh = self.fresh()
        self.renewed_at = sent
        if not was_fresh:
            log.info("Lease %s renewed: taking work again", self.settings.pod)
            self._wake.set()

    async def _mark_draining(self) -> None:
        for _ in range(3):
            try:
                await self.client.patch(
                    self._lease, pools.state_patch(pools.STATE_DRAINING, self._now())
                )
                log.info("Lease %s marked %s", self.settings.pod, pools.STATE_DRAINING)
                return
            except kube.KubeError as error:
                log.warning("marking the Lease draining failed: %s", error)
                await asyncio.sleep(BACKOFF_FIRST)

    async def _delete_lease(self) -> None:
        for attempt in range(5):
            try:
                await self.client.delete(self._lease, uid=self._lease_uid)
                return
            except kube.KubeError as error:
                log.warning("deleting the Lease %s failed: %s", self.settings.pod, error)
                await asyncio.sleep(BACKOFF_FIRST * 2**attempt)

    # -- the watch --------------------------------------------------------------------------------

    async def _watch_forever(self) -> None:
        selector = pools.assigned_selector(self.settings.pod)
        version: str | None = None
        delay = BACKOFF_FIRST
        while True:
            try:
                if version is None:
                    items, version = await self.client.list(self._jobs, field_selector=selector)
                    self._replace(items)
                async for kind, obj in self.client.watch(
                    self._jobs,
                    resource_version=version,
                    field_selector=selector,
                    timeout_seconds=self._watch_seconds,
                ):
                    version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                    if kind == "DELETED":
                        self._forget(obj)
                    elif kind in ("ADDED", "MODIFIED"):
                        self._observe(obj)
                    delay = BACKOFF_FIRST
            except kube.Gone:
                log.info("watch expired (410): listing again")
                version = None
            except (kube.KubeError, ValueError) as error:
                log.warning("watching assignments: %s; again in %.1f s", error, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_CAP)

    def _name(self, obj: Mapping[str, Any]) -> str:
        return str((obj.get("metadata") or {}).get("name") or "")

    def _replace(self, items: list[Obj]) -> None:
        self.assigned = {self._name(obj): obj for obj in items}
        uids = {str((obj.get("metadata") or {}).get("uid") or "") for obj in items}
        self._settled = {key for key in self._settled if key[0] in uids}
        current = self.current
        if current is not None:
            found = self.assigned.get(current.name)
            if found is None or not current.still_assigned(found):
                self._take_back(current)
        self._wake.set()

    def _observe(self, obj: Obj) -> None:
        self.assigned[self._name(obj)] = obj
        current = self.current
        mine = current is not None and current.name == self._name(obj)
        if current is not None and mine and not current.still_assigned(obj):
            self._take_back(current)
        self._wake.set()

    def _forget(self, obj: Obj) -> None:
        """The watch no longer selects ``obj``: a later assignment of it is a new hand-off."""
        name = self._name(obj)
        self.assigned.pop(name, None)
        uid = str((obj.get("metadata") or {}).get("uid") or "")
        self._settled = {key for key in self._settled if key[0] != uid}
        current = self.current
        if current is not None and current.name == name:
            self._take_back(current)
        self._wake.set()

    def _take_back(self, run: Run) -> None:
        if not run.taken_back.is_set():
            log.info("%s: taken back; stopping at the next stage boundary", run.name)
            run.taken_back.set()

    # -- dispatching ------------------------------------------------------------------------------

    def candidate(self) -> tuple[Obj, models.WorkerAssignment] | None:
        """The next assignment to accept: to this instance, not accepted yet, not refused."""
        found = []
        for obj in self.assigned.values():
            assignment = _assignment(obj)
            if assignment is None or assignment.worker_instance != self.identity:
                continue
            if (obj.get("metadata") or {}).get("deletionTimestamp"):
                continue  # being deleted: not worth starting
            if _accepted_by(obj, self.identity, assignment.attempt):
                continue
            uid = str((obj.get("metadata") or {}).get("uid") or "")
            if (uid, assignment.attempt) in self._settled:
                continue
            found.append((assignment.assigned_at, self._name(obj), obj, assignment))
        if not found:
            return None
        _, _, obj, assignment = min(found, key=lambda item: (item[0], item[1]))
        return obj, assignment

    async def _dispatch(self) -> None:
        """One job at a time until drained."""
        while not self.draining:
            chosen = self.candidate() if self.fresh() else None
            wait: float | None = None
            if chosen is not None and self._clock() < self._retry_at:
                wait, chosen = self._retry_at - self._clock(), None
            if chosen is not None:
                with self._run_span(*chosen):
                    await self._serve(*chosen)
                continue
            self._wake.clear()
            if wait is None and not self.fresh():
                wait = self.settings.lease_seconds / 3
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=wait)

    async def _serve(self, obj: Obj, assignment: models.WorkerAssignment) -> None:
        name = self._name(obj)
        uid = str((obj.get("metadata") or {}).get("uid") or "")
        accepted_at = self._now()
        report = models.WorkerReport(
            attempt=assignment.attempt,
            worker=self.settings.pod,
            worker_instance=self.identity,
            node_name=self.settings.node,
            accepted_at=accepted_at,
        )
        try:
            with tracing.span("accept"):
                await self.client.patch(
                    kube.path(models.API_VERSION, models.PLURAL, namespace=self.settings.namespace,
                              name=name, subresource="status"),
                    pools.accept_patch(assignment, report),
                    content_type=kube.JSON_PATCH,
                )  # fmt: skip
        except (kube.Invalid, kube.NotFound) as error:
            log.info("%s attempt %d: not accepted, the assignment moved (%s)",
                     name, assignment.attempt, error.reason)  # fmt: skip
            self._settled.add((uid, assignment.attempt))
            return
        except kube.KubeError as error:
            log.warning("%s: accepting failed: %s; again in %.1f s", name, error, BACKOFF_FIRST)
            self._retry_at = self._clock() + BACKOFF_FIRST
            return
        self._settled.add((uid, assignment.attempt))
        seconds = _deadline_seconds(obj)
        run = Run(
            name=name,
            uid=uid,
            assignment=assignment,
            accepted_at=accepted_at,
            deadline=self._clock() + seconds,
            deadline_seconds=seconds,
            clock=self._clock,
        )
        self.current = run
        log.info("%s attempt %d: accepted (seed %d)", name, assignment.attempt, assignment.seed)
        try:
            # The watch may have moved on while the accept was in flight.
            latest = self.assigned.get(name)
            if latest is None or not run.still_assigned(latest):
                self._take_back(run)
            final = await self._run(run, obj)
            if final is not None:
                with tracing.span("report"):
                    await self._report(run, final)
        finally:
            self.current = None
            self._wake.set()

    def _attributes(self) -> dict[str, Any]:
        return {
            "k8s.namespace.name": self.settings.namespace,
            "k8s.pod.name": self.settings.pod,
            "compose.pool": self.settings.pool,
            "compose.profile": self.profile.name,
        }

    def _run_span(
        self, obj: Obj, assignment: models.WorkerAssignment
    ) -> contextlib.AbstractContextManager[Any]:
        """The worker's span of one assignment (accept, run, report): a child of the operator's
        ``assign worker`` span (``status.assignment.traceparent``), else of the job's context."""
        meta = obj.get("metadata") or {}
        parent = tracing.context_of(assignment.traceparent) or tracing.job_context(
            meta.get("annotations"), str(meta.get("uid") or "")
        )
        attributes = {
            **self._attributes(),
            "compose.job": self._name(obj),
            "compose.job.uid": str(meta.get("uid") or ""),
            "compose.attempt": assignment.attempt,
        }
        return tracing.span("run", parent=parent, attributes=attributes, entry=True)

    async def _run(self, run: Run, obj: Obj) -> models.WorkerReport | None:
        """Run the job in a thread; its final report, or None when it was taken back."""
        watch = runner.Stopwatch()
        outcome: runner.Outcome | None = None
        failure: errors.ComposeError | None = None
        job: runner.Job | None = None
        try:
            job = self._job(obj)
            outcome = await asyncio.to_thread(self.worker.run, job, watch=watch, stop=run.check)
        except errors.Stopped:
            log.info("%s: stopped, nothing uploaded, nothing reported", run.name)
            return None
        except errors.ComposeError as error:
            failure = error
        except Exception as error:
            log.exception("%s: unexpected failure", run.name)
            failure = errors.classify(error)
        pinned = ""
        if job is not None:
            pinned = parameters.Pinned(job.params, job.pinned).describe(job.profile.name)
        message = runner.termination_message(
            outcome=outcome, error=failure, watch=watch, pinned=pinned
        )
        if failure is not None:
            tracing.fail(tracing.current(), message.reason, failure.message)
            log.info("%s: failed (exit %d, %s): %s",
                     run.name, message.exit_code, message.reason, failure.message)  # fmt: skip
        else:
            log.info("%s: done: %s", run.name, message.to_json())
        return models.WorkerReport(
            attempt=run.assignment.attempt,
            worker=self.settings.pod,
            worker_instance=self.identity,
            node_name=self.settings.node,
            accepted_at=run.accepted_at,
            finished_at=self._now(),
            exit_code=message.exit_code,
            reason=message.reason,
            message=_fit(message.message),
            result=message.result,
            timings=message.timings,
        )

    def _job(self, obj: Obj) -> runner.Job:
        """The job document of the assigned attempt (``contract.assigned_document``), as a
        runner job; bad specs raise their ComposeError (reported like a Job pod's)."""
        try:
            cj = models.CompositionJob.model_validate(obj)
        except pydantic.ValidationError as error:
            detail = models.describe_validation_error(error, root="job")
            raise errors.InputRejected(f"invalid CompositionJob: {detail}") from None
        if cj.spec.profile != self.profile.name:
            raise errors.UnknownProfile(
                f"spec.profile: {cj.spec.profile!r}, but this worker (pool"
                f" {self.settings.pool}) serves profile {self.profile.name!r}"
            )
        document = contract.assigned_document(cj, self.profile)
        return runner.Job.from_document(document, default_bucket=self.settings.default_bucket)

    async def _report(self, run: Run, report: models.WorkerReport) -> None:
        """Write the final report; transient errors are retried until it lands, is refused (the
        assignment moved: 422) or the job is taken back."""
        path = kube.path(models.API_VERSION, models.PLURAL, namespace=self.settings.namespace,
                         name=run.name, subresource="status")  # fmt: skip
        delay = BACKOFF_FIRST
        while True:
            try:
                await self.client.patch(
                    path,
                    pools.report_patch(run.assignment, report),
                    content_type=kube.JSON_PATCH,
                )
                log.info("%s attempt %d: reported (exit %s)",
                         run.name, report.attempt, report.exit_code)  # fmt: skip
                return
            except (kube.Invalid, kube.NotFound) as error:
                log.info("%s: report refused, the assignment moved (%s)", run.name, error.reason)
                return
            except kube.KubeError as error:
                if run.taken_back.is_set():
                    return
                log.warning("%s: reporting failed: %s; again in %.1f s", run.name, error, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_CAP)


def _deadline_seconds(obj: Mapping[str, Any]) -> int:
    execution = (obj.get("spec") or {}).get("execution") or {}
    value = execution.get("activeDeadlineSeconds")
    if isinstance(value, int) and value > 0:
        return value
    default: int = models.Execution.model_fields["active_deadline_seconds"].default
    return default


# -- entry point ---------------------------------------------------------------------------------


async def serve(settings: Settings, worker: runner.Worker) -> int:
    async with kube.Client(settings.connection, user_agent="compose-worker") as client:
        return await PoolWorker(settings, worker, client).serve()


def main(settings: Settings, worker: runner.Worker) -> int:
    """Run the worker until it is drained; the process exit code."""
    log.info(
        "compose worker %s (pool %s, namespace %s, profile %s, lease %d s, probes on :%d)",
        settings.pod,
        settings.pool,
        settings.namespace,
        settings.profile.name,
        settings.lease_seconds,
        settings.port,
    )
    return asyncio.run(serve(settings, worker))
