"""The Argo CD health check (Lua) maps CompositionJob conditions to health: run in a real Lua
runtime (lupa) against statuses built from the API models, as the operator writes them."""

from __future__ import annotations

import datetime
from typing import Any

import lupa
import yaml

from compose_api import models
from tests.deploy import helpers

ARGOCD = helpers.EXAMPLES / "argocd"
KEY = "resource.customizations.health.compose.nextunicorn.dev_CompositionJob"
NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def _lua_value(runtime: Any, value: Any) -> Any:
    if isinstance(value, dict):
        return runtime.table_from({k: _lua_value(runtime, v) for k, v in value.items()})
    if isinstance(value, list):
        return runtime.table_from([_lua_value(runtime, v) for v in value])
    return value


def health(obj: dict[str, Any]) -> dict[str, str]:
    runtime = lupa.LuaRuntime(unpack_returned_tuples=True)
    runtime.globals().obj = _lua_value(runtime, obj)
    result = runtime.execute((ARGOCD / "health.lua").read_text())
    return {"status": result["status"], "message": result["message"]}


def job(
    *conditions: tuple[str, str, str, str],
    generation: int = 1,
    observed: int = 1,
    result: bool = False,
) -> dict[str, Any]:
    status = models.CompositionJobStatus(
        observed_generation=observed,
        conditions=[
            models.Condition(type=t, status=s, reason=r, message=m, last_transition_time=NOW)
            for t, s, r, m in conditions
        ],
        result=models.Result(
            s3_uri="s3://b/k.png",
            url="https://b.example.com/k.png",
            sha256="0" * 64,
            width=1024,
            height=1024,
            seed=1,
        )
        if result
        else None,
    )
    return {
        "apiVersion": models.API_VERSION,
        "kind": models.KIND,
        "metadata": {"name": "j", "generation": generation},
        "status": status.to_api(),
    }


ACCEPTED = ("Accepted", "True", "Valid", "")


def test_the_configmap_carries_the_same_script() -> None:
    config_map = yaml.safe_load((ARGOCD / "argocd-cm.yaml").read_text())
    assert config_map["data"][KEY].strip() == (ARGOCD / "health.lua").read_text().strip()
    assert helpers.kubernetes_errors(config_map) == []


def test_no_status_yet_is_progressing() -> None:
    obj = {"apiVersion": models.API_VERSION, "kind": models.KIND, "metadata": {"name": "j"}}
    assert health(obj)["status"] == "Progressing"


def test_queued_and_running_are_progressing_with_the_latest_reason() -> None:
    queued = job(ACCEPTED, ("Queued", "True", "WaitingForCapacity", "2 ahead"))
    assert health(queued) == {"status": "Progressing", "message": "WaitingForCapacity: 2 ahead"}
    running = job(
        ACCEPTED,
        ("Queued", "False", "Admitted", ""),
        ("Started", "True", "Running", "on g5.xlarge"),
    )
    assert health(running) == {"status": "Progressing", "message": "Running: on g5.xlarge"}


def test_succeeded_is_healthy_with_the_result() -> None:
    done = job(
        ACCEPTED,
        ("Started", "False", "Completed", ""),
        ("Succeeded", "True", "Completed", "composed"),
        result=True,
    )
    assert health(done) == {
        "status": "Healthy",
        "message": "Completed: composed (https://b.example.com/k.png)",
    }


def test_failed_is_degraded_with_the_reason() -> None:
    failed = job(ACCEPTED, ("Failed", "True", "NoFaceFound", "no face in the person photo"))
    assert health(failed) == {
        "status": "Degraded",
        "message": "NoFaceFound: no face in the person photo",
    }
    # A condition that is False says nothing: Failed=False is not Degraded.
    assert health(job(ACCEPTED, ("Failed", "False", "Valid", "")))["status"] == "Progressing"


def test_suspended_is_suspended() -> None:
    suspended = job(ACCEPTED, ("Suspended", "True", "SuspendedByUser", ""))
    assert health(suspended) == {"status": "Suspended", "message": "SuspendedByUser"}


def test_a_status_older_than_the_spec_is_progressing() -> None:
    stale = job(ACCEPTED, ("Succeeded", "True", "Completed", ""), generation=3, observed=2)
    assert health(stale) == {
        "status": "Progressing",
        "message": "Waiting for the operator to observe generation 3",
    }
