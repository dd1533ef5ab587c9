"""Which answers to a Job create are refusals the operator shows in status: those that say no
Job was made and asking again at once will not make one."""

from __future__ import annotations

import pytest

from compose_api import kube
from compose_operator import kubeapi, reconciler


@pytest.mark.parametrize(
    ("error", "refused"),
    [
        (kube.Forbidden(403, "Forbidden", "exceeded quota"), True),
        (kube.Invalid(422, "Invalid", "spec.template: invalid"), True),
        (kube.KubeError(400, "BadRequest", "admission webhook denied the request"), True),
        (kube.Unauthorized(401, "Unauthorized", ""), True),
        (kube.NotFound(404, "NotFound", 'namespaces "gone" not found'), True),
        (kubeapi.ForeignObjectError(409, "AlreadyExists", "owned by someone else"), True),
        (kube.Conflict(409, "Conflict", "job vanished while adopting it"), False),
        (kube.TooManyRequests(429, "TooManyRequests", "throttled"), False),
        (kube.Unreachable(0, "Unreachable", "connection reset"), False),
        (kube.KubeError(500, "InternalError", "etcd timeout"), False),
    ],
)
def test_refusals(error: kube.KubeError, refused: bool) -> None:
    assert reconciler._refused(error) is refused
