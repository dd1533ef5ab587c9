"""Label and field selectors on list (watch is covered in test_watch.py)."""

from __future__ import annotations

import pytest

from compose_api.kube import KubeError
from tests.emulator.helpers import cj
from tests.support import kube_selectors
from tests.support.cluster_client import ClusterClient
from tests.support.resources import COMPOSITION_JOBS, PODS


@pytest.fixture
async def labelled(kube: ClusterClient) -> ClusterClient:
    await kube.create(COMPOSITION_JOBS, cj("red", labels={"color": "red", "owner": "k1"}))
    await kube.create(COMPOSITION_JOBS, cj("blue", labels={"color": "blue", "owner": "k2"}))
    await kube.create(COMPOSITION_JOBS, cj("plain"))
    await kube.create(COMPOSITION_JOBS, cj("other-ns", labels={"color": "red"}), namespace="ns2")
    return kube


@pytest.mark.parametrize(
    ("selector", "names"),
    [
        ("color=red", ["red"]),
        ("color==red", ["red"]),
        ("color!=red", ["blue", "plain"]),
        ("color in (red, blue)", ["blue", "red"]),
        ("color notin (red)", ["blue", "plain"]),
        ("color", ["blue", "red"]),
        ("!color", ["plain"]),
        ("color,owner=k2", ["blue"]),
        ("color in (red,blue),owner notin (k1)", ["blue"]),
        ("", ["blue", "plain", "red"]),
    ],
)
async def test_label_selectors_on_list(
    labelled: ClusterClient, selector: str, names: list[str]
) -> None:
    items = await labelled.list(COMPOSITION_JOBS, label_selector=selector or None)
    assert sorted(item["metadata"]["name"] for item in items) == names


async def test_list_across_namespaces(labelled: ClusterClient) -> None:
    items = await labelled.list(COMPOSITION_JOBS, all_namespaces=True, label_selector="color=red")
    assert sorted(i["metadata"]["namespace"] for i in items) == ["default", "ns2"]


async def test_list_response_is_a_typed_list_with_a_resource_version(
    labelled: ClusterClient,
) -> None:
    body = await labelled.request("GET", "/apis/compose.nextunicorn.dev/v1alpha1/compositionjobs")
    assert body["kind"] == "CompositionJobList"
    assert body["apiVersion"] == "compose.nextunicorn.dev/v1alpha1"
    newest = max(int(i["metadata"]["resourceVersion"]) for i in body["items"])
    assert int(body["metadata"]["resourceVersion"]) >= newest


async def test_field_selectors_on_list(kube: ClusterClient) -> None:
    await kube.create(PODS, {"metadata": {"name": "p1"}, "spec": {"nodeName": "n1"}})
    await kube.create(PODS, {"metadata": {"name": "p2"}, "spec": {"nodeName": "n2"}})
    by_node = await kube.list(PODS, field_selector="spec.nodeName=n2")
    assert [p["metadata"]["name"] for p in by_node] == ["p2"]
    by_name = await kube.list(PODS, field_selector="metadata.name!=p2,status.phase=Pending")
    assert [p["metadata"]["name"] for p in by_name] == ["p1"]


async def test_a_bad_selector_is_a_400_naming_the_parameter(kube: ClusterClient) -> None:
    with pytest.raises(KubeError) as caught:
        await kube.list(COMPOSITION_JOBS, label_selector="color in red")
    assert caught.value.status == 400
    assert "labelSelector" in caught.value.message


def test_notin_and_not_equals_match_objects_without_the_label() -> None:
    labels: dict[str, str] = {}
    (not_equals,) = kube_selectors.parse_label_selector("a!=1")
    (not_in,) = kube_selectors.parse_label_selector("a notin (1,2)")
    (equals,) = kube_selectors.parse_label_selector("a=1")
    assert not_equals.matches(labels) and not_in.matches(labels)
    assert not equals.matches(labels)


@pytest.mark.parametrize("bad", ["a in (b", "=x", "a b", "a in (b c)"])
def test_unparsable_label_selectors_are_refused(bad: str) -> None:
    with pytest.raises(kube_selectors.SelectorError, match="labelSelector"):
        kube_selectors.parse_label_selector(bad)
