"""The operator's Kubernetes API calls, typed: its lists and watches, writes and reads.

A thin layer over the project's one client (:class:`compose_api.kube.Client`): each method names
a path and a verb, and says which answers are expected (404 as "missing", 409 as "already
there"). :mod:`compose_operator.watching` lists and watches with it; :mod:`compose_operator.
reconciler` uses it to create, suspend and delete child Jobs, patch the CompositionJob's
``/status``, post Events and read node labels; retention deletes
finished CompositionJobs; ``__main__`` creates the peering object. Every verb is listed in
:mod:`compose_operator.permissions`.

The client logs in with the same ``kopf.ConnectionInfo`` the login handler gives kopf (a
service-account token in the cluster, a kubeconfig on a workstation, or a plain URL with
``COMPOSE_KUBE_URL`` in tests and benchmarks), converted once by :func:`connection_from`; it
logs in again when the API server answers 401 (kopf's credentials can rotate). Errors are
:mod:`compose_api.kube`'s (:class:`ApiError` is its :class:`~compose_api.kube.KubeError`).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime
import pathlib
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import kopf

from compose_api import kube, models, pools

USER_AGENT = "compose-operator"
EVENT_COMPONENT = "compose-operator"
EVENT_MESSAGE_LIMIT = 1024  # what kopf keeps of an Event message, and plenty for a person

LoginFn = Callable[[], Awaitable[kopf.ConnectionInfo]]
Obj = dict[str, Any]

ApiError = kube.KubeError
Gone = kube.Gone

WATCH_SECONDS = 300  # the server ends each watch request after this long; it is resumed


@dataclasses.dataclass(frozen=True)
class Watched:
    """A kind of object the operator lists and watches with this client
    (:mod:`compose_operator.watching`): where it lives and which of them (server-side
    selectors)."""

    api_version: str
    plural: str
    label_selector: str | None = None
    field_selector: str | None = None
    namespaced: bool = True

    def path(self, namespace: str | None) -> str:
        return kube.path(self.api_version, self.plural, namespace=namespace)


class ForeignObjectError(kube.Conflict):
    """A Job with the wanted name exists but belongs to another owner."""


def connection_from(info: kopf.ConnectionInfo) -> kube.Connection:
    """kopf's login result as the project's client connection: server, bearer token, CA and
    client certificate (files, or data as PEM or base64 of PEM), insecure."""
    return kube.Connection(
        server=info.server,
        token=info.token,
        ca_file=_path(info.ca_path),
        ca_data=_pem(info.ca_data),
        cert_file=_path(info.certificate_path),
        key_file=_path(info.private_key_path),
        cert_data=_pem(info.certificate_data),
        key_data=_pem(info.private_key_data),
        insecure=bool(info.insecure),
        namespace=info.default_namespace,
    )


def _path(value: Any) -> pathlib.Path | None:
    if not value:
        return None
    return pathlib.Path(value.decode() if isinstance(value, bytes) else str(value))


def _pem(data: str | bytes | None) -> str | None:
    """PEM text as it is, base64 of PEM (a kubeconfig's ``*-data``) decoded."""
    if not data:
        return None
    raw = data.encode() if isinstance(data, str) else data
    if not raw.lstrip().startswith(b"-----"):
        raw = base64.b64decode(raw)
    return raw.decode()


def _jobs(namespace: str, name: str | None = None) -> str:
    return kube.path("batch/v1", "jobs", namespace=namespace, name=name)


def _deployments(namespace: str, name: str | None = None) -> str:
    return kube.path("apps/v1", "deployments", namespace=namespace, name=name)


def _composition_jobs(namespace: str, name: str, subresource: str | None = None) -> str:
    return kube.path(
        models.API_VERSION, models.PLURAL, namespace=namespace, name=name, subresource=subresource
    )


def _peerings(namespace: str | None, name: str | None = None) -> str:
    plural = "clusterkopfpeerings" if namespace is None else "kopfpeerings"
    return kube.path("kopf.dev/v1", plural, namespace=namespace, name=name)


class KubeClient:
    """Typed calls for the few API operations the operator makes."""

    def __init__(self, login: LoginFn, *, timeout: float = 30.0) -> None:
        async def connect() -> kube.Connection:
            return connection_from(await login())

        self._api = kube.Client(login=connect, timeout_seconds=timeout, user_agent=USER_AGENT)
        self._node_labels: dict[str, dict[str, str]] = {}

    async def close(self) -> None:
        await self._api.close()

    # -- watching ---------------------------------------------------------------------------

    async def list_page(
        self, kind: Watched, namespace: str | None, continue_: str | None = None
    ) -> tuple[list[Obj], str | None, str]:
        """One page of ``kind`` (None: every namespace): items, the next page's token, the
        list's resourceVersion."""
        return await self._api.list_page(
            kind.path(namespace),
            label_selector=kind.label_selector,
            field_selector=kind.field_selector,
            limit=kube.LIST_CHUNK,
            continue_=continue_,
        )

    def watch(
        self, kind: Watched, namespace: str | None, resource_version: str
    ) -> AsyncIterator[tuple[str, Obj]]:
        """``(type, object)`` from ``resource_version`` on, bookmarks included, until the server
        ends the request; 410 raises :class:`Gone` (list again)."""
        return self._api.watch(
            kind.path(namespace),
            resource_version=resource_version,
            label_selector=kind.label_selector,
            field_selector=kind.field_selector,
            timeout_seconds=WATCH_SECONDS,
        )

    # -- Jobs -------------------------------------------------------------------------------

    async def create_job(self, job: Mapping[str, Any]) -> Obj:
        """Create the Job; on 409 adopt the existing one when its controller is the same CR."""
        meta = job["metadata"]
        namespace = meta["namespace"]
        try:
            return await self._api.create(_jobs(namespace), job)
        except kube.Conflict:
            pass
        existing = await self.get_job(namespace, meta["name"])
        if existing is None:  # deleted in between: the next reconcile creates it again
            raise kube.Conflict(409, "Conflict", f"job {meta['name']} vanished while adopting it")
        owner_uids = {ref["uid"] for ref in meta.get("ownerReferences", [])}
        theirs = {r.get("uid") for r in existing.get("metadata", {}).get("ownerReferences") or []}
        if not owner_uids & theirs:
            raise ForeignObjectError(
                409, "AlreadyExists", f"job {meta['name']} exists and is owned by someone else"
            )
        return existing

    async def get_job(self, namespace: str, name: str) -> Obj | None:
        return await self._api.get_or_none(_jobs(namespace, name))

    async def list_jobs(self, namespace: str, selector: str) -> list[Obj]:
        items, _ = await self._api.list(_jobs(namespace), label_selector=selector)
        return items

    async def patch_job(self, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        await self._api.patch(_jobs(namespace, name), patch)

    async def delete_job(self, namespace: str, name: str) -> None:
        """Delete the Job and (Background propagation) its pods; a missing Job is fine."""
        await self._api.delete(_jobs(namespace, name))

    # -- CompositionJobs --------------------------------------------------------------------

    async def get_composition_job(self, namespace: str, name: str) -> Obj | None:
        return await self._api.get_or_none(_composition_jobs(namespace, name))

    async def delete_composition_job(self, namespace: str, name: str, uid: str) -> None:
        """Delete one CompositionJob (retention), only if it is still the one with ``uid``;
        already gone (404) or replaced by a new job of that name (409) counts as done."""
        with contextlib.suppress(kube.Conflict):
            await self._api.delete(_composition_jobs(namespace, name), uid=uid)

    async def patch_status(
        self,
        namespace: str,
        name: str,
        patch: Mapping[str, Any],
        *,
        resource_version: str | None = None,
    ) -> Obj:
        """Merge-patch the ``/status`` subresource (the spec is never written); with
        ``resource_version``, only if the object is still at it (409 otherwise)."""
        body: dict[str, Any] = {"status": patch}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        return await self._api.patch(_composition_jobs(namespace, name, "status"), body)

    # -- pools ------------------------------------------------------------------------------

    async def patch_pool_status(self, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        path = kube.path(models.API_VERSION, pools.PLURAL, namespace=namespace, name=name,
                         subresource="status")  # fmt: skip
        await self._api.patch(path, {"status": patch})

    async def create_deployment(self, deployment: Mapping[str, Any]) -> Obj | None:
        """Create a pool's Deployment; None when it exists already (the watch had not shown it
        yet: the pool is reconciled again when it does)."""
        meta = deployment["metadata"]
        try:
            return await self._api.create(_deployments(meta["namespace"]), deployment)
        except kube.Conflict:
            return None

    async def patch_deployment(self, *, namespace: str, name: str, patch: Mapping[str, Any]) -> Obj:
        return await self._api.patch(_deployments(namespace, name), patch)

    async def get_lease(self, namespace: str, name: str) -> Obj | None:
        return await self._api.get_or_none(
            kube.path("coordination.k8s.io/v1", "leases", namespace=namespace, name=name)
        )

    # -- Events -----------------------------------------------------------------------------

    async def post_event(
        self,
        involved: Mapping[str, Any],
        *,
        type: str,
        reason: str,
        message: str,
        now: datetime.datetime,
    ) -> None:
        """Post a core/v1 Event about ``involved`` (a CompositionJob body), from any task.

        kopf's ``kopf.event`` works only inside a kopf handler's context; the sweep and the
        timers are not, so the operator posts its own Events here."""
        meta = involved.get("metadata") or {}
        namespace = str(meta.get("namespace") or "default")
        stamp = now.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{meta.get('name')}.{secrets.token_hex(8)}",
                "namespace": namespace,
            },
            "involvedObject": {
                "apiVersion": models.API_VERSION,
                "kind": models.KIND,
                "name": meta.get("name"),
                "namespace": namespace,
                "uid": meta.get("uid"),
            },
            "type": type,
            "reason": reason,
            "message": message[:EVENT_MESSAGE_LIMIT],
            "source": {"component": EVENT_COMPONENT},
            "reportingComponent": EVENT_COMPONENT,
            "reportingInstance": EVENT_COMPONENT,
            # A legacy (count/firstTimestamp) Event, as kopf posts them: no eventTime, so the
            # API server does not ask for the events.k8s.io fields.
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        await self._api.create(kube.path("v1", "events", namespace=namespace), event)

    # -- kopf peering -----------------------------------------------------------------------

    async def ensure_peering(self, name: str, namespace: str | None) -> bool:
        """Create kopf's (Cluster)KopfPeering object unless it exists; True when created.

        The operator owns its peering object rather than the install: a custom resource in the
        same ``kubectl apply`` as its CRD cannot be mapped before the CRD is established.
        """
        kind = "ClusterKopfPeering" if namespace is None else "KopfPeering"
        metadata = {"name": name} if namespace is None else {"name": name, "namespace": namespace}
        body = {"apiVersion": "kopf.dev/v1", "kind": kind, "metadata": metadata}
        try:
            await self._api.create(_peerings(namespace), body)
        except kube.Conflict:
            return False
        return True

    # -- Pods and nodes ---------------------------------------------------------------------

    async def list_pods(self, namespace: str, selector: str) -> list[Obj]:
        items, _ = await self._api.list(
            kube.path("v1", "pods", namespace=namespace), label_selector=selector
        )
        return items

    async def node_labels(self, name: str) -> dict[str, str]:
        """A node's labels (instance type, capacity type), cached; empty when not readable."""
        if name not in self._node_labels:
            try:
                node = await self._api.get(kube.path("v1", "nodes", name=name))
            except kube.KubeError:
                return {}
            self._node_labels[name] = dict(node.get("metadata", {}).get("labels") or {})
        return self._node_labels[name]
