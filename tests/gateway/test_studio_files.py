"""The studio's files as the gateway serves them (types, policy headers, caching), what the page
offers (from the API's models, nothing left out), and that the page needs nothing the policy
forbids (no inline code, no other site, no HTML built from strings)."""

from __future__ import annotations

import importlib.resources
import pathlib
import re

from compose_api import models, parameters
from compose_gateway import storage, studio
from tests.gateway.conftest import Gateway, MakeGateway
from tests.support import s3

WEB = importlib.resources.files("compose_gateway") / "web"
GATEWAY = pathlib.Path(studio.__file__).parent


def _read(name: str) -> str:
    return (WEB / name).read_text(encoding="utf-8")


async def test_the_page_and_its_files_are_served_with_a_strict_policy(
    gateway: Gateway, s3_env: s3.S3Server
) -> None:
    page = await gateway.client.get("/studio")

    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.text == _read("index.html")
    assert page.headers["content-security-policy"] == (
        "default-src 'none'; script-src 'self'; style-src 'self'; "
        f"img-src 'self' blob: {s3_env.endpoint_url}; connect-src 'self'; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'; require-trusted-types-for 'script'; "
        "trusted-types 'none'"
    )
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "no-referrer"
    assert page.headers["x-frame-options"] == "DENY"
    for name, media_type in (
        ("studio.js", "text/javascript; charset=utf-8"),
        ("studio.css", "text/css; charset=utf-8"),
        ("icon.svg", "image/svg+xml"),
        ("config.json", "application/json"),
    ):
        served = await gateway.client.get(f"/studio/{name}")
        assert (served.status_code, served.headers["content-type"]) == (200, media_type), name
        assert served.headers["content-security-policy"] == page.headers["content-security-policy"]
    assert (await gateway.client.get("/studio/secrets.txt")).status_code == 404
    assert (await gateway.client.get("/studio/index.html")).status_code == 404
    assert (await gateway.client.get("/studio/")).headers.get("location", "").endswith("/studio")


async def test_an_unchanged_file_is_not_sent_again(gateway: Gateway) -> None:
    first = await gateway.client.get("/studio/studio.js")

    again = await gateway.client.get(
        "/studio/studio.js", headers={"If-None-Match": first.headers["etag"]}
    )

    assert first.headers["cache-control"] == "no-cache"
    assert (again.status_code, again.content) == (304, b"")


async def test_the_page_can_be_turned_off(make_gateway: MakeGateway) -> None:
    gateway = await make_gateway(studio_enabled=False)

    assert (await gateway.client.get("/studio")).status_code == 404
    assert (await gateway.client.get("/studio/studio.js")).status_code == 404


async def test_the_page_lets_images_in_from_where_results_are(make_gateway: MakeGateway) -> None:
    gateway = await make_gateway(cdn_base_url="https://images.example.com/results")

    policy = (await gateway.client.get("/studio")).headers["content-security-policy"]

    assert "img-src 'self' blob: https://images.example.com;" in policy


def test_result_sources_follow_the_s3_client() -> None:
    def sources(**kwargs: str) -> list[str]:
        store = storage.Storage(
            inputs_bucket=None, inputs_prefix="", presign_expires_seconds=60, **kwargs
        )
        return store.result_sources()

    assert sources(region="eu-west-1") == ["https://*.amazonaws.com"]
    assert sources(endpoint_url="http://minio.local:9000/") == ["http://minio.local:9000"]
    assert sources(cdn_base_url="https://cdn.example.com/x") == ["https://cdn.example.com"]


async def test_the_config_offers_the_apis_own_choices(make_gateway: MakeGateway) -> None:
    gateway = await make_gateway(max_upload_bytes=123456)

    config = (await gateway.client.get("/studio/config.json")).json()

    assert [c["value"] for c in config["categories"]] == [c.value for c in models.ClothingCategory]
    assert config["maxClothing"] == models.MAX_CLOTHING_ITEMS
    assert config["maxUploadBytes"] == 123456
    fields = {field.alias: field for field in parameters.fields()}
    for name, offered in config["params"].items():
        field = fields[name]
        assert (offered["default"], offered.get("minimum"), offered.get("maximum")) == (
            field.default,
            field.minimum,
            field.maximum,
        ), name
        assert offered["help"], name
    assert config["params"]["width"]["multipleOf"] == 64
    assert config["params"]["seed"]["default"] is None
    assert set(config["reasons"]) == {reason.value for reason in models.Reason}


def test_every_reason_category_and_timing_has_words() -> None:
    assert set(studio.REASONS) == set(models.Reason)
    assert set(studio.CATEGORY_LABELS) == set(models.ClothingCategory)
    timings = {field.alias or name for name, field in models.Timings.model_fields.items()}
    assert set(studio.TIMING_LABELS) == timings
    assert all(sentence.endswith((".", ":")) for sentence in studio.REASONS.values())


def test_every_error_reason_the_gateway_answers_has_words() -> None:
    source = "\n".join(path.read_text() for path in GATEWAY.glob("*.py"))
    answered = set(re.findall(r'(?:ApiError|error_response)\(\s*\d+,\s*"(\w+)"', source))
    answered |= set(re.findall(r'reason="([A-Z]\w+)"', source))
    assert answered >= {"Unauthorized", "QuotaExceeded", "PayloadTooLarge", "ResultMissing"}
    # /readyz is for the kubelet, not for the page.
    assert answered - set(studio.REQUEST_ERRORS) == {"NotReady"}


def test_every_parameter_offered_has_a_labelled_control() -> None:
    page = _read("index.html")
    for name in studio.COMMON_PARAMS:
        assert f'id="param-{name}"' in page, name
        assert f'<label for="param-{name}">' in page, name
        assert f'id="help-{name}"' in page, name


def test_the_page_needs_nothing_the_policy_forbids() -> None:
    page, script, style = _read("index.html"), _read("studio.js"), _read("studio.css")

    # Scripts only from files, no inline handlers or styles, nothing from another site.
    assert re.findall(r"<script(?![^>]*\bsrc=)", page) == []
    assert re.findall(r"\son[a-z]+=", page) == []
    assert "style=" not in page and "<style" not in page
    assert re.findall(r"(?:src|href)=\"(?:https?:)?//", page) == []
    assert "url(" not in style and "@import" not in style
    # No HTML from strings (Trusted Types allows none), no code from strings.
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script, sink
    assert re.findall(r"new Function|setTimeout\(\s*[\"'`]", script) == []
    # Every request the script makes is relative (this gateway, under its root path).
    for url in re.findall(r"(?:fetch|api)\(\s*[`\"']([^`\"']*)", script):
        assert not url.startswith(("/", "http")), url
