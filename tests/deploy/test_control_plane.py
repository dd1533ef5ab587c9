"""The test control plane itself: what the other tests rely on it for is really there.

RBAC is enforced (a service account without grants is refused), requests are attributed to
their user in the audit log, the scheduler keeps pods without the GPU toleration off the GPU
nodes, and a pod of :data:`~tests.support.control_plane.MISSING_IMAGE` stays in back-off.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from tests.support import control_plane as cp

pytestmark = pytest.mark.timeout(120)


def _pod(name: str, image: str = "busybox:1", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "main", "image": image}], **spec},
    }


def _wait_pod(cluster: cp.ControlPlane, namespace: str, name: str, check: Any) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        pod: dict[str, Any] = cluster.request("GET", f"/api/v1/namespaces/{namespace}/pods/{name}")
        if check(pod):
            return pod
        time.sleep(0.2)
    pytest.fail(f"pod {name}: condition not reached; last status {pod.get('status')}")


def test_rbac_refuses_a_service_account_without_grants(
    control_plane: cp.ControlPlane, namespace: str
) -> None:
    control_plane.request(
        "POST",
        f"/api/v1/namespaces/{namespace}/serviceaccounts",
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "nobody"}},
    )
    token = control_plane.service_account_token(namespace, "nobody")
    request = urllib.request.Request(
        f"{control_plane.url}/api/v1/namespaces/{namespace}/pods",
        headers={"Authorization": f"Bearer {token}"},
    )
    context = control_plane.ssl_context(client_cert=False)
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, context=context, timeout=10)
    assert refused.value.code == 403
    user = f"system:serviceaccount:{namespace}:nobody"
    events = control_plane.audit_events(user=user)
    assert [
        (e["verb"], e["objectRef"]["resource"], e["responseStatus"]["code"]) for e in events
    ] == [("list", "pods", 403)]


def test_scheduler_keeps_untolerated_pods_off_gpu_nodes(
    control_plane: cp.ControlPlane, namespace: str
) -> None:
    control_plane.request("POST", f"/api/v1/namespaces/{namespace}/pods", _pod("cpu"))
    pod = _wait_pod(
        control_plane, namespace, "cpu", lambda p: p["status"].get("phase") == "Running"
    )
    assert pod["spec"]["nodeName"] == "system-0"
    gpu = _pod(
        "gpu",
        tolerations=[{"key": cp.GPU, "operator": "Exists", "effect": "NoSchedule"}],
        nodeSelector={cp.CAPACITY_TYPE_LABEL: "on-demand", "nvidia.com/gpu.present": "true"},
    )
    gpu["spec"]["containers"][0]["resources"] = {"limits": {cp.GPU: "1"}}
    control_plane.request("POST", f"/api/v1/namespaces/{namespace}/pods", gpu)
    pod = _wait_pod(
        control_plane, namespace, "gpu", lambda p: p["status"].get("phase") == "Running"
    )
    assert pod["spec"]["nodeName"] == "gpu-ondemand-0"


def test_missing_image_stays_in_image_pull_back_off(
    control_plane: cp.ControlPlane, namespace: str
) -> None:
    control_plane.request(
        "POST", f"/api/v1/namespaces/{namespace}/pods", _pod("pull", image=cp.MISSING_IMAGE)
    )

    def waiting(pod: dict[str, Any]) -> bool:
        statuses = pod["status"].get("containerStatuses") or []
        return bool(statuses) and "waiting" in statuses[0]["state"]

    pod = _wait_pod(control_plane, namespace, "pull", waiting)
    assert pod["status"]["phase"] == "Pending"
    assert pod["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "ImagePullBackOff"
