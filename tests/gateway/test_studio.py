"""The studio page in a real browser: Debian's Chromium driven by Playwright, against the gateway
served over HTTP (real control plane, moto S3 server), with the operator played by status writes.

A user enters a key, picks (and drops) the three kinds of photos, submits, follows the job to its
image, downloads it, finds it in the history, and reads a failure in plain words. The page's
Content-Security-Policy is the one the gateway serves: a script, style or image it refused would
show as a console error, and there must be none.

``COMPOSE_STUDIO_SCREENSHOT=gateway/docs/studio.png pytest tests/gateway/test_studio.py`` writes
the README's screenshot (else it goes to the test's temporary folder).
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import pathlib
import shutil
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
from PIL import Image, ImageDraw, ImageFilter
from playwright import async_api
from skimage import data as skimage_data

from compose_api import models
from compose_gateway import studio
from tests.gateway import operator_play, serving
from tests.gateway.conftest import ALICE_KEY, NAMESPACE, Gateway, MakeGateway, original_request
from tests.support import cluster_client, s3
from tests.support.resources import COMPOSITION_JOBS

CHROMIUM = os.environ.get("COMPOSE_CHROMIUM") or shutil.which("chromium")
SCREENSHOT_BYTES = 300 * 1024
TIMEOUT_MS = 20_000


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def _tinted(gray: Any, colour: tuple[int, int, int]) -> Image.Image:
    level = np.asarray(gray, dtype=np.float32)[..., None] / 255.0
    return Image.fromarray((level * np.array(colour, dtype=np.float32)).astype(np.uint8))


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Sample photos shipped with scikit-image (no network), and a made-up result; each also
    as ``<name>.jpg`` in the folder named by ``folder``, for the file choosers."""
    data: Any = skimage_data
    person = Image.fromarray(data.astronaut())
    place = Image.fromarray(data.rocket()).resize((512, 384))
    result = place.resize((683, 512)).crop((85, 0, 597, 512))
    mask = Image.new("L", (300, 380), 0)
    ImageDraw.Draw(mask).ellipse((0, 0, 300, 380), fill=255)
    result.paste(person.crop((110, 20, 410, 400)), (106, 132), mask.filter(ImageFilter.BLUR))
    buffer = io.BytesIO()
    result.save(buffer, format="PNG")
    found = {
        "person": _jpeg(person),
        "shirt": _jpeg(_tinted(data.brick(), (200, 40, 40))),
        "trousers": _jpeg(_tinted(data.grass(), (40, 60, 160))),
        "place": _jpeg(place),
        "result": buffer.getvalue(),
    }
    folder = tmp_path_factory.mktemp("photos")
    for name, content in found.items():
        (folder / f"{name}.jpg").write_bytes(content)
    return {**found, "folder": str(folder).encode()}


class Studio:
    """The page in a browser, the served gateway, and what the browser logged."""

    def __init__(self, page: async_api.Page, base: str, gateway: Gateway) -> None:
        self.page = page
        self.base = base
        self.gateway = gateway
        self.console: list[str] = []
        page.on(
            "console",
            lambda m: self.console.append(f"{m.type}: {m.text} ({m.location.get('url', '')})"),
        )
        page.on("pageerror", lambda e: self.console.append(f"pageerror: {e}"))

    async def open(self) -> async_api.Response:
        response = await self.page.goto(f"{self.base}/studio")
        assert response is not None
        await self.page.wait_for_selector("body[data-ready=true]", state="attached")
        return response

    async def use_key(self, key: str) -> None:
        await self.page.get_by_role("textbox", name="API key").fill(key)
        await self.page.get_by_role("button", name="Use this key").click()

    async def announced(self, text: str) -> None:
        await async_api.expect(self.page.locator("#announce")).to_have_text(text)

    async def job_id(self, other_than: str = "") -> str:
        label = self.page.locator("#job-id")
        await async_api.expect(label).not_to_have_text(other_than or "")
        return await label.inner_text()

    def errors(self) -> list[str]:
        return [line for line in self.console if line.startswith(("error", "pageerror"))]


@pytest_asyncio.fixture
async def browser() -> AsyncIterator[async_api.Browser]:
    async with async_api.async_playwright() as playwright:
        if CHROMIUM is None:  # a missing browser fails the test: it is never skipped
            pytest.fail("Debian's chromium is missing: scripts/setup.sh installs it")
        launched = await playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            yield launched
        finally:
            await launched.close()


@pytest_asyncio.fixture
async def page_on_gateway(
    make_gateway: MakeGateway, browser: async_api.Browser
) -> AsyncIterator[Studio]:
    gateway = await make_gateway(job_poll_seconds=0.05)
    async with serving.serve(gateway.app) as base:
        context = await browser.new_context(viewport={"width": 1280, "height": 900})
        context.set_default_timeout(TIMEOUT_MS)
        async_api.expect.set_options(timeout=TIMEOUT_MS)
        try:
            yield Studio(await context.new_page(), base, gateway)
        finally:
            await context.close()


async def _drop(page: async_api.Page, target: str, name: str, content: bytes) -> None:
    """Drop a file onto ``target`` as a user dragging it from their desktop would."""
    transfer = await page.evaluate_handle(
        """([name, data]) => {
            const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, { type: "image/jpeg" }));
            return transfer;
        }""",
        [name, base64.b64encode(content).decode()],
    )
    await page.dispatch_event(target, "dragover", {"dataTransfer": transfer})
    await page.dispatch_event(target, "drop", {"dataTransfer": transfer})


async def _choose_photos(page: async_api.Page, photos: dict[str, bytes]) -> None:
    folder = pathlib.Path(photos["folder"].decode())
    await page.get_by_label("Choose a photo of the person, or drop it here").set_input_files(
        folder / "person.jpg"
    )
    await page.get_by_label("Garment 1 photo").set_input_files(folder / "shirt.jpg")
    await page.get_by_label("Garment 1 is worn as").select_option("upper")
    await page.get_by_role("button", name="Add a garment").click()
    await async_api.expect(page.get_by_label("Garment 2 photo")).to_be_focused()
    await page.get_by_label("Garment 2 photo").set_input_files(folder / "trousers.jpg")
    await page.get_by_label("Garment 2 is worn as").select_option("lower")
    await _drop(page, "fieldset[data-drop=place]", "rocket.jpg", photos["place"])
    await async_api.expect(page.locator("#place-preview")).to_be_visible()


async def _image_loaded(locator: async_api.Locator) -> bool:
    loaded: bool = await locator.evaluate("(img) => img.complete && img.naturalWidth > 0")
    return loaded


def _save_screenshot(png: bytes, path: pathlib.Path) -> int:
    """Write the screenshot, reduced to 256 colours when it is larger than the README allows."""
    image = Image.open(io.BytesIO(png))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    if buffer.tell() > SCREENSHOT_BYTES:
        buffer = io.BytesIO()
        image.convert("RGB").quantize(256, dither=Image.Dither.NONE).save(
            buffer, format="PNG", optimize=True
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return buffer.tell()


async def test_a_user_composes_follows_downloads_and_finds_the_job(
    page_on_gateway: Studio,
    cluster: cluster_client.ClusterClient,
    s3_env: s3.S3Server,
    buckets: dict[str, str],
    photos: dict[str, bytes],
    tmp_path: pathlib.Path,
) -> None:
    studio_page, page = page_on_gateway, page_on_gateway.page
    response = await studio_page.open()
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "connect-src 'self'" in policy
    assert s3_env.endpoint_url in policy  # result images come from the S3 server

    await studio_page.use_key(ALICE_KEY)
    await async_api.expect(page.locator("#key-status")).to_have_text("Key accepted.")
    await async_api.expect(page.locator("#history-status")).to_have_text("No jobs yet.")
    await _choose_photos(page, photos)
    await page.get_by_text("Parameters").click()
    await page.get_by_label("Prompt").fill("on the launch pad at dawn")
    await page.get_by_label("Seed").fill("42")
    await page.get_by_label("Steps").fill("8")
    await page.get_by_role("button", name="Compose", exact=True).click()

    # The job, as the page submitted it: three uploads, the categories, the parameters.
    job_id = await studio_page.job_id()
    await studio_page.announced("Submitted: waiting to be accepted.")
    job = await cluster.get(COMPOSITION_JOBS, job_id, namespace=NAMESPACE)
    inputs, params = job["spec"]["inputs"], job["spec"]["params"]
    assert [c.get("category") for c in inputs["clothing"]] == ["upper", "lower"]
    assert (params["seed"], params["steps"], params["prompt"]) == (
        42,
        8,
        "on the launch pad at dawn",
    )
    key = inputs["person"]["uri"].split("/", 3)[3]
    stored = s3_env.client().get_object(Bucket=buckets["inputs"], Key=key)["Body"].read()
    assert stored == photos["person"]

    # Followed through its stages (Server-Sent Events), to the image beside the inputs.
    await operator_play.run(cluster, job_id, NAMESPACE)
    await studio_page.announced("Running: Composing the image.")
    await async_api.expect(page.locator(".stage.current")).to_have_text("Running (in progress)")
    s3_env.client().put_object(
        Bucket=buckets["results"], Key="r/out.png", Body=photos["result"], ContentType="image/png"
    )
    uri = f"s3://{buckets['results']}/r/out.png"
    await operator_play.succeed(cluster, job_id, NAMESPACE, s3_uri=uri, data=photos["result"])
    await studio_page.announced("Done: the image is ready.")
    result = page.get_by_role("img", name=f"The composed image of job {job_id}")
    await async_api.expect(result).to_be_visible()
    assert await _image_loaded(result)
    for name in ("Person", "Garment 1: Top (upper body)", "Garment 2: Bottom (lower body)"):
        assert await _image_loaded(page.get_by_role("img", name=name, exact=True))
    await async_api.expect(page.locator("#timings")).to_contain_text("Composing11.5")

    async with page.expect_download() as downloading:
        await page.get_by_role("link", name="Download the image").click()
    download = await downloading.value
    assert download.suggested_filename == f"{job_id}.png"
    saved = await asyncio.to_thread(pathlib.Path(await download.path()).read_bytes)
    assert saved == photos["result"]

    # The history shows it, with its image as the thumbnail.
    thumbnail = page.get_by_role("button", name=f"Done job {job_id}", exact=False)
    await async_api.expect(thumbnail).to_be_visible()
    await async_api.expect(page.locator("#history img")).to_have_count(1)
    assert await _image_loaded(page.locator("#history img"))

    target = os.environ.get("COMPOSE_STUDIO_SCREENSHOT")
    path = pathlib.Path(target) if target else tmp_path / "studio.png"
    await page.mouse.move(0, 0)
    png = await page.screenshot(full_page=True)
    size = await asyncio.to_thread(_save_screenshot, png, path)
    assert 0 < size <= SCREENSHOT_BYTES

    # A second job fails: its reason in plain words.
    await page.get_by_role("button", name="Compose", exact=True).click()
    failing = await studio_page.job_id(other_than=job_id)
    await operator_play.fail(
        cluster, failing, NAMESPACE, reason="NoFaceFound", message="no face in the person image"
    )
    sentence = studio.REASONS[models.Reason.NO_FACE_FOUND]
    await studio_page.announced(f"Failed: {sentence}")
    await async_api.expect(page.locator(".stage.failed")).to_have_text("Failed")
    await async_api.expect(page.locator("#failure-detail")).to_have_text(
        "Details: no face in the person image (NoFaceFound)"
    )
    await async_api.expect(page.get_by_role("button", name=f"Failed job {failing}")).to_be_visible()

    # Back to the first job from the history.
    await thumbnail.click()
    await studio_page.announced("Done: the image is ready.")
    await async_api.expect(page.locator("#failure-detail")).to_be_hidden()
    assert studio_page.errors() == []


async def test_the_page_says_what_is_wrong_and_works_from_the_keyboard(
    page_on_gateway: Studio,
) -> None:
    studio_page, page = page_on_gateway, page_on_gateway.page
    await studio_page.open()

    # Every control has a label (its own, or an aria-label).
    unlabelled = await page.evaluate(
        """() => [...document.querySelectorAll("input, select, textarea, button")]
            .filter((c) => !(c.labels && c.labels.length) && !c.getAttribute("aria-label")
                           && !(c.tagName === "BUTTON" && c.textContent.trim()))
            .map((c) => c.outerHTML)"""
    )
    assert unlabelled == []

    # Keyboard: the skip link, then the key field; focus is visible.
    await page.keyboard.press("Tab")
    await async_api.expect(page.get_by_role("link", name="Skip to the form")).to_be_focused()
    await page.keyboard.press("Tab")
    key_field = page.get_by_role("textbox", name="API key")
    await async_api.expect(key_field).to_be_focused()
    outline = await key_field.evaluate("(e) => getComputedStyle(e).outlineStyle")
    assert outline == "solid"
    await page.keyboard.type("cgw_alice-not-the-right-key-at-all")
    await page.keyboard.press("Enter")
    await async_api.expect(page.locator("#key-status")).to_have_text(
        studio.REQUEST_ERRORS["Unauthorized"]
    )
    await async_api.expect(key_field).to_be_focused()

    await studio_page.use_key(ALICE_KEY)
    await async_api.expect(page.locator("#key-status")).to_have_text("Key accepted.")
    await page.get_by_role("button", name="Compose", exact=True).click()
    errors = page.get_by_role("alert")
    await async_api.expect(errors).to_contain_text("Person photo: choose a photo")
    await async_api.expect(errors).to_contain_text("Garment 1: choose at least one photo")
    await async_api.expect(errors).to_contain_text("Place photo: choose a photo")
    person = page.get_by_label("Choose a photo of the person, or drop it here")
    await async_api.expect(person).to_be_focused()
    await async_api.expect(person).to_have_attribute("aria-invalid", "true")
    # Only the refused key's 401 reached the console.
    assert [e for e in studio_page.errors() if "401" not in e] == []


async def test_without_the_event_stream_the_page_reads_the_job(
    page_on_gateway: Studio, cluster: cluster_client.ClusterClient
) -> None:
    studio_page, page = page_on_gateway, page_on_gateway.page
    # A network where the stream never gets through (a proxy refusing it).
    await page.route("**/events", lambda route: route.abort())
    job_id = (await studio_page.gateway.post(original_request())).json()["jobId"]
    await studio_page.open()
    await studio_page.use_key(ALICE_KEY)

    await page.get_by_role("button", name=f"Submitted job {job_id}", exact=False).click()
    await async_api.expect(page.locator("#job-id")).to_have_text(job_id)
    await operator_play.fail(
        cluster, job_id, NAMESPACE, reason="StartDeadlineExceeded", message="no GPU in 900 s"
    )

    sentence = studio.REASONS[models.Reason.START_DEADLINE_EXCEEDED]
    await studio_page.announced(f"Failed: {sentence}")
    # Refused streams are console errors of the browser; nothing else may be.
    assert [e for e in studio_page.errors() if "/events" not in e] == []
