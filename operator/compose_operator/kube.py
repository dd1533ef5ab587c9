"""The only module that talks to the Kubernetes API (kopf watches the resources itself).

A small aiohttp client built from the same ``kopf.ConnectionInfo`` the login handler gives kopf
(a service-account token in the cluster, a kubeconfig on a workstation, or a plain URL with
``COMPOSE_KUBE_URL`` in tests and benchmarks). :mod:`compose_operator.reconciler` uses it to
create, suspend and delete child Jobs, patch the CompositionJob's ``/status`` and read node
labels. Every verb it uses is listed in :mod:`compose_operator.permissions`.
"""

from __future__ import annotations

import base64
import datetime
import secrets
import ssl
import tempfile
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp
import kopf

from compose_api import models, pools

MERGE_PATCH = "application/merge-patch+json"
CJ_PATH = f"/apis/{models.GROUP}/{models.VERSION}/namespaces/{{namespace}}/{models.PLURAL}"
JOB_PATH = "/apis/batch/v1/namespaces/{namespace}/jobs"
POD_PATH = "/api/v1/namespaces/{namespace}/pods"
NODE_PATH = "/api/v1/nodes"
POOL_PATH = f"/apis/{models.GROUP}/{models.VERSION}/namespaces/{{namespace}}/{pools.PLURAL}"
DEPLOYMENT_PATH = "/apis/apps/v1/namespaces/{namespace}/deployments"
LEASE_PATH = "/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
EVENT_PATH = "/api/v1/namespaces/{namespace}/events"
EVENT_COMPONENT = "compose-operator"
EVENT_MESSAGE_LIMIT = 1024  # what kopf keeps of an Event message, and plenty for a person

LoginFn = Callable[[], Awaitable[kopf.ConnectionInfo]]


class ApiError(Exception):
    """A Kubernetes API error response: HTTP status, the Status reason and its message."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class ForeignObjectError(ApiError):
    """A Job with the wanted name exists but belongs to another owner."""


def _ssl_context(info: kopf.ConnectionInfo) -> ssl.SSLContext | bool:
    if info.server.startswith("http://"):
        return False
    if info.insecure:
        return False
    context = ssl.create_default_context(
        cafile=str(info.ca_path) if info.ca_path else None,
        cadata=(
            base64.b64decode(info.ca_data).decode()
            if isinstance(info.ca_data, (str, bytes)) and not _looks_like_pem(info.ca_data)
            else (info.ca_data.decode() if isinstance(info.ca_data, bytes) else info.ca_data)
        ),
    )
    cert, key = info.certificate_path, info.private_key_path
    if info.certificate_data or info.private_key_data:
        cert = _to_file(info.certificate_data)
        key = _to_file(info.private_key_data)
    if cert:
        context.load_cert_chain(str(cert), str(key) if key else None)
    return context


def _looks_like_pem(data: str | bytes) -> bool:
    return (data.encode() if isinstance(data, str) else data).lstrip().startswith(b"-----")


def _to_file(data: str | bytes | None) -> str | None:
    if not data:
        return None
    raw = data.encode() if isinstance(data, str) else data
    if not _looks_like_pem(raw):
        raw = base64.b64decode(raw)
    with tempfile.NamedTemporaryFile(delete=False, suffix=".pem") as handle:
        handle.write(raw)
        return handle.name


class KubeClient:
    """Typed calls for the few API operations the operator makes."""

    def __init__(self, login: LoginFn, *, timeout: float = 30.0) -> None:
        self._login = login
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._info: kopf.ConnectionInfo | None = None
        self._node_labels: dict[str, dict[str, str]] = {}

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _connect(self) -> tuple[aiohttp.ClientSession, kopf.ConnectionInfo]:
        if self._session is None or self._info is None:
            self._info = await self._login()
            self._session = aiohttp.ClientSession(
                base_url=None,
                timeout=self._timeout,
                connector=aiohttp.TCPConnector(ssl=_ssl_context(self._info), limit=32),
                headers={"User-Agent": "compose-operator"},
            )
        return self._session, self._info

    async def _request(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
        retried: bool = False,
    ) -> dict[str, Any]:
        session, info = await self._connect()
        headers = {"Content-Type": content_type, "Accept": "application/json"}
        if info.token:
            headers["Authorization"] = f"{info.scheme or 'Bearer'} {info.token}"
        url = info.server.rstrip("/") + path
        if params:
            url += "?" + urllib.parse.urlencode(params)
        async with session.request(method, url, json=body, headers=headers) as response:
            if response.status == 401 and not retried:
                await self.close()
                return await self._request(
                    method, path, body=body, params=params, content_type=content_type, retried=True
                )
            data: Any = (
                await response.json(content_type=None) if response.content_length != 0 else {}
            )
            if response.status >= 400:
                data = data if isinstance(data, dict) else {}
                raise ApiError(
                    response.status, str(data.get("reason") or ""), str(data.get("message") or "")
                )
            return data if isinstance(data, dict) else {}

    # -- Jobs -------------------------------------------------------------------------------

    async def create_job(self, job: Mapping[str, Any]) -> dict[str, Any]:
        """Create the Job; on 409 adopt the existing one when its controller is the same CR."""
        meta = job["metadata"]
        namespace = meta["namespace"]
        try:
            return await self._request("POST", JOB_PATH.format(namespace=namespace), body=job)
        except ApiError as error:
            if error.status != 409:
                raise
        existing = await self.get_job(namespace, meta["name"])
        if existing is None:  # deleted in between: the next reconcile creates it again
            raise ApiError(409, "Conflict", f"job {meta['name']} vanished while adopting it")
        owner_uids = {ref["uid"] for ref in meta.get("ownerReferences", [])}
        theirs = {r.get("uid") for r in existing.get("metadata", {}).get("ownerReferences") or []}
        if not owner_uids & theirs:
            raise ForeignObjectError(
                409, "AlreadyExists", f"job {meta['name']} exists and is owned by someone else"
            )
        return existing

    async def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self._request("GET", f"{JOB_PATH.format(namespace=namespace)}/{name}")
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    async def list_jobs(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        data = await self._request(
            "GET", JOB_PATH.format(namespace=namespace), params={"labelSelector": selector}
        )
        return list(data.get("items") or [])

    async def patch_job(self, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        await self._request(
            "PATCH",
            f"{JOB_PATH.format(namespace=namespace)}/{name}",
            body=patch,
            content_type=MERGE_PATCH,
        )

    async def delete_job(self, namespace: str, name: str) -> None:
        """Delete the Job and (Background propagation) its pods; a missing Job is fine."""
        try:
            await self._request(
                "DELETE",
                f"{JOB_PATH.format(namespace=namespace)}/{name}",
                body={
                    "kind": "DeleteOptions",
                    "apiVersion": "v1",
                    "propagationPolicy": "Background",
                },
            )
        except ApiError as error:
            if error.status != 404:
                raise

    # -- CompositionJobs --------------------------------------------------------------------

    async def get_composition_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self._request("GET", f"{CJ_PATH.format(namespace=namespace)}/{name}")
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    async def delete_composition_job(self, namespace: str, name: str, uid: str) -> None:
        """Delete one CompositionJob (retention), only if it is still the one with ``uid``;
        already gone (404) or replaced by a new job of that name (409) counts as done."""
        try:
            await self._request(
                "DELETE",
                f"{CJ_PATH.format(namespace=namespace)}/{name}",
                body={
                    "kind": "DeleteOptions",
                    "apiVersion": "v1",
                    "propagationPolicy": "Background",
                    "preconditions": {"uid": uid},
                },
            )
        except ApiError as error:
            if error.status not in (404, 409):
                raise

    async def patch_status(
        self,
        namespace: str,
        name: str,
        patch: Mapping[str, Any],
        *,
        resource_version: str | None = None,
    ) -> dict[str, Any]:
        """Merge-patch the ``/status`` subresource (the spec is never written); with
        ``resource_version``, only if the object is still at it (409 otherwise)."""
        body: dict[str, Any] = {"status": patch}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        return await self._request(
            "PATCH",
            f"{CJ_PATH.format(namespace=namespace)}/{name}/status",
            body=body,
            content_type=MERGE_PATCH,
        )

    # -- pools ------------------------------------------------------------------------------

    async def patch_pool_status(self, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        await self._request(
            "PATCH",
            f"{POOL_PATH.format(namespace=namespace)}/{name}/status",
            body={"status": patch},
            content_type=MERGE_PATCH,
        )

    async def create_deployment(
        self, deployment: Mapping[str, Any], *, owner_uid: str
    ) -> dict[str, Any]:
        """Create a pool's Deployment; on 409 adopt the existing one when the pool owns it."""
        meta = deployment["metadata"]
        path = DEPLOYMENT_PATH.format(namespace=meta["namespace"])
        try:
            return await self._request("POST", path, body=deployment)
        except ApiError as error:
            if error.status != 409:
                raise
        existing = await self._request("GET", f"{path}/{meta['name']}")
        owners = {
            r.get("uid") for r in (existing.get("metadata") or {}).get("ownerReferences") or []
        }
        if owner_uid not in owners:
            raise ForeignObjectError(
                409, "AlreadyExists", f"deployment {meta['name']} exists and is not the pool's"
            )
        return existing

    async def patch_deployment(
        self, *, namespace: str, name: str, patch: Mapping[str, Any]
    ) -> dict[str, Any]:
        return await self._request(
            "PATCH",
            f"{DEPLOYMENT_PATH.format(namespace=namespace)}/{name}",
            body=patch,
            content_type=MERGE_PATCH,
        )

    async def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self._request("GET", f"{LEASE_PATH.format(namespace=namespace)}/{name}")
        except ApiError as error:
            if error.status == 404:
                return None
            raise

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
        await self._request("POST", EVENT_PATH.format(namespace=namespace), body=event)

    # -- kopf peering -----------------------------------------------------------------------

    async def ensure_peering(self, name: str, namespace: str | None) -> bool:
        """Create kopf's (Cluster)KopfPeering object unless it exists; True when created.

        The operator owns its peering object rather than the install: a custom resource in the
        same ``kubectl apply`` as its CRD cannot be mapped before the CRD is established.
        """
        if namespace is None:
            path = "/apis/kopf.dev/v1/clusterkopfpeerings"
            body: dict[str, Any] = {"kind": "ClusterKopfPeering", "metadata": {"name": name}}
        else:
            path = f"/apis/kopf.dev/v1/namespaces/{namespace}/kopfpeerings"
            body = {"kind": "KopfPeering", "metadata": {"name": name, "namespace": namespace}}
        body["apiVersion"] = "kopf.dev/v1"
        try:
            await self._request("POST", path, body=body)
        except ApiError as error:
            if error.status == 409:
                return False
            raise
        return True

    async def peering_status(self, name: str, namespace: str | None) -> dict[str, Any]:
        """The ``status`` of kopf's (Cluster)KopfPeering object (empty when it is missing)."""
        if namespace is None:
            path = f"/apis/kopf.dev/v1/clusterkopfpeerings/{name}"
        else:
            path = f"/apis/kopf.dev/v1/namespaces/{namespace}/kopfpeerings/{name}"
        try:
            found = await self._request("GET", path)
        except ApiError as error:
            if error.status == 404:
                return {}
            raise
        peers = found.get("status")
        return dict(peers) if isinstance(peers, dict) else {}

    # -- Pods and nodes ---------------------------------------------------------------------

    async def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        data = await self._request(
            "GET", POD_PATH.format(namespace=namespace), params={"labelSelector": selector}
        )
        return list(data.get("items") or [])

    async def node_labels(self, name: str) -> dict[str, str]:
        """A node's labels (instance type, capacity type), cached; empty when not readable."""
        if name not in self._node_labels:
            try:
                node = await self._request("GET", f"{NODE_PATH}/{name}")
            except ApiError:
                return {}
            self._node_labels[name] = dict(node.get("metadata", {}).get("labels") or {})
        return self._node_labels[name]
