"""The operator's part of a job's trace (``compose_api.tracing``): what the reconciler calls.

- :func:`reconcile`: one span for each reconcile whose plan acts (a reconcile that only looks
  records nothing), a child of the job's trace context (its annotation's traceparent, else the
  trace named after its uid). Its attributes say what the plan decided.
- :func:`action`: one child span per action executed: ``write status``, ``assign worker`` (a status
  write that hands the attempt to a worker), ``create Job``, ``delete Job``, ``suspend Job``,
  ``resume Job``.
- :func:`stamped`: the action with the context handed on, called inside the action's span: a
  Job's inference container gets ``TRACEPARENT`` (the ``create Job`` span is the parent of the
  pod's run), a new worker assignment gets ``status.assignment.traceparent`` (the ``assign
  worker`` span is the parent of the worker's run).

With tracing off (:func:`compose_api.tracing.enabled`) each of them is a constant-time no-op:
no context is parsed and no span is started.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping
from typing import Any

from compose_api import models, tracing
from compose_operator import names, plan

_NOTHING = contextlib.nullcontext()


def reconcile(
    body: Mapping[str, Any], decided: plan.Plan, previous: models.CompositionJobStatus
) -> contextlib.AbstractContextManager[Any]:
    """The span of a reconcile that executes ``decided`` (nothing when it has no action);
    ``previous``: the status the plan started from."""
    if not decided.actions or not tracing.enabled():
        return _NOTHING
    meta = body.get("metadata") or {}
    uid = str(meta.get("uid") or "")
    attributes: dict[str, Any] = {
        "k8s.namespace.name": str(meta.get("namespace") or ""),
        "compose.job": str(meta.get("name") or ""),
        "compose.job.uid": uid,
        "compose.actions": [_describe(item, previous) for item in decided.actions],
    }
    # SERVER: the first span of the operator in the job's trace (AWS X-Ray makes it a segment
    # of the compose-operator service; the action spans are its subsegments).
    return tracing.span(
        "reconcile",
        parent=tracing.job_context(meta.get("annotations"), uid),
        attributes=attributes,
        entry=True,
    )


def action(
    item: plan.Action, previous: models.CompositionJobStatus
) -> contextlib.AbstractContextManager[Any]:
    """The span of one action of a reconcile (nothing with tracing off); ``previous``: the
    status the plan started from."""
    if not tracing.enabled():
        return _NOTHING
    if isinstance(item, plan.WriteStatus):
        found = item.outcome.status
        attributes: dict[str, Any] = {"compose.phase": str(found.phase or "")}
        if found.assignment is not None and _new_assignment(item, previous):
            attributes.update(
                {
                    "compose.pool": found.assignment.pool,
                    "compose.worker": found.assignment.worker,
                    "compose.attempt": found.assignment.attempt,
                }
            )
            return tracing.span("assign worker", attributes=attributes)
        return tracing.span("write status", attributes=attributes)
    if isinstance(item, plan.CreateJob):
        meta = item.manifest.get("metadata") or {}
        return tracing.span("create Job", attributes={"k8s.job.name": str(meta.get("name"))})
    if isinstance(item, plan.DeleteJob):
        return tracing.span("delete Job", attributes={"k8s.job.name": item.name})
    name = "suspend Job" if item.suspended else "resume Job"
    return tracing.span(name, attributes={"k8s.job.name": item.name})


def stamped(item: plan.Action, previous: models.CompositionJobStatus) -> plan.Action:
    """``item`` carrying the current span's traceparent where a process it starts reads it: a new
    Job's inference container (``TRACEPARENT``), a new worker assignment
    (``status.assignment.traceparent``). Anything else, or no current span (tracing off):
    ``item`` itself."""
    if not isinstance(item, plan.CreateJob | plan.WriteStatus):
        return item
    found = tracing.traceparent()
    if found is None:
        return item
    if isinstance(item, plan.CreateJob):
        return plan.CreateJob(_with_env(item.manifest, found))
    assignment = item.outcome.status.assignment
    if assignment is not None and _new_assignment(item, previous):
        new_status = item.outcome.status.model_copy(
            update={"assignment": assignment.model_copy(update={"traceparent": found})}
        )
        return dataclasses.replace(
            item, outcome=dataclasses.replace(item.outcome, status=new_status)
        )
    return item


def _new_assignment(item: plan.WriteStatus, previous: models.CompositionJobStatus) -> bool:
    """A write that hands an attempt to a worker: an assignment that ``previous`` lacks."""
    new, old = item.outcome.status.assignment, previous.assignment
    if new is None:
        return False
    return old is None or (old.worker_instance, old.attempt, old.assigned_at) != (
        new.worker_instance,
        new.attempt,
        new.assigned_at,
    )


def _with_env(manifest: dict[str, Any], traceparent: str) -> dict[str, Any]:
    """A copy of the Job manifest with ``TRACEPARENT`` in its inference container."""
    template = manifest["spec"]["template"]
    containers = []
    for container in template["spec"]["containers"]:
        if container.get("name") == names.CONTAINER_NAME:
            env = [e for e in container.get("env", []) if e.get("name") != tracing.TRACEPARENT_ENV]
            env.append({"name": tracing.TRACEPARENT_ENV, "value": traceparent})
            container = {**container, "env": env}
        containers.append(container)
    pod_spec = {**template["spec"], "containers": containers}
    spec = {**manifest["spec"], "template": {**template, "spec": pod_spec}}
    return {**manifest, "spec": spec}


def _describe(item: plan.Action, previous: models.CompositionJobStatus) -> str:
    if isinstance(item, plan.WriteStatus):
        found = item.outcome.status
        if found.assignment is not None and _new_assignment(item, previous):
            return f"assign {found.assignment.worker}"
        return f"status {found.phase or ''}".rstrip()
    if isinstance(item, plan.CreateJob):
        return f"create {(item.manifest.get('metadata') or {}).get('name')}"
    if isinstance(item, plan.DeleteJob):
        return f"delete {item.name}"
    return f"{'suspend' if item.suspended else 'resume'} {item.name}"
