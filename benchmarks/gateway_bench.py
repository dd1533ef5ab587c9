"""Gateway benchmark: what the HTTP gateway adds on top of talking to the Kubernetes API directly,
and the gateway's memory under concurrent maximum-size uploads.

    python -m benchmarks.gateway_bench --requests 300 --concurrency 8 --uploads 16

Two phases in one run, each against a fresh API emulator in its own process
(``python -m tests.support.kube_emulator``), with the same number of CompositionJobs and the same
client concurrency:

1. baseline: the script creates the CompositionJobs itself (the very bodies the gateway would
   build) and reads each one back, straight from the API;
2. gateway: ``compose-gateway`` runs as a subprocess (uvicorn, one worker) and the script sends
   the original ``POST /generate`` JSON, then ``GET /jobs/{id}``, with an API key.

It prints latency p50/p99 and throughput of both, their ratios, and for the gateway process
alone: CPU milliseconds per request (user + system, psutil), peak RSS, and Kubernetes API
requests per POST (from the emulator's request log). The emulator is single-threaded Python and
slows as it fills, so absolute figures are for comparing the two phases of one run only.

3. uploads (``--uploads N``, 0 skips it): a fresh gateway with an inputs bucket on a moto S3
   server receives N concurrent multipart uploads of ``--upload-mib`` each (default: the largest
   body the gateway accepts, in 10 MiB files, the largest file it accepts), from four keys at
   their default concurrent-upload limit. It prints the gateway's peak RSS (VmHWM) idle, after
   one upload alone (the same-run baselines), and after the N concurrent ones, with the ratios;
   the target is a peak under 300 MB for 16 concurrent maximum-size uploads.

4. result reuse (``--reuse N``, 0 skips it, the default): N pairs of the same ``POST
   /generate?wait=120`` (same photos, parameters and seed) to a real gateway on the real test
   control plane, with the operator and a warm pool of real workers: the repeat's
   request→answer p50/p99 against the first request's, and how many repeats were reused. It runs
   ``benchmarks.pool_bench --modes gateway-reuse`` (which starts all of that) after the other
   phases; the target is a repeated request answered in under 1 s on a warm pool.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import os
import pathlib
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import psutil

from compose_gateway import auth, naming, translate
from compose_gateway import settings as settings_module
from tests.support import kube_emulator, s3

NAMESPACE = "bench"
KEY = auth.new_key("bench")
REQUEST = {
    "personImage": "https://example.com/person.jpg",
    "clothingImages": ["https://example.com/shirt.jpg", "https://example.com/pants.jpg"],
    "placeImage": "https://example.com/beach.jpg",
}
JOBS_PATH = f"/apis/compose.nextunicorn.dev/v1alpha1/namespaces/{NAMESPACE}/compositionjobs"


@dataclasses.dataclass
class Phase:
    name: str
    create_ms: list[float]
    get_ms: list[float]
    wall_s: float

    def row(self) -> dict[str, float]:
        return {
            "create_p50_ms": _pct(self.create_ms, 50),
            "create_p99_ms": _pct(self.create_ms, 99),
            "get_p50_ms": _pct(self.get_ms, 50),
            "get_p99_ms": _pct(self.get_ms, 99),
            "requests_per_s": (len(self.create_ms) + len(self.get_ms)) / self.wall_s,
        }


def _pct(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def emulator_process() -> Iterator[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.support.kube_emulator", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        if not line.startswith("KUBE_EMULATOR_URL="):
            raise RuntimeError(f"the emulator did not start: {line!r}")
        yield line.split("=", 1)[1]
    finally:
        process.terminate()
        process.wait(timeout=30)


@contextlib.contextmanager
def gateway_process(
    kube_url: str,
    workdir: pathlib.Path,
    extra_env: dict[str, str] | None = None,
    keys_text: str | None = None,
) -> Iterator[tuple[str, psutil.Process]]:
    keys = workdir / "api-keys.yaml"
    keys.write_text(keys_text or f"bench: {auth.hash_key(KEY)}\n")
    port = _free_port()
    env = {
        **os.environ,
        "COMPOSE_KUBE_URL": kube_url,
        "COMPOSE_GATEWAY_NAMESPACE": NAMESPACE,
        "COMPOSE_GATEWAY_HOST": "127.0.0.1",
        "COMPOSE_GATEWAY_PORT": str(port),
        "COMPOSE_GATEWAY_API_KEYS_FILE": str(keys),
        "COMPOSE_GATEWAY_RATE_LIMIT_PER_MINUTE": "0",
        # No operator runs the jobs, so none ever finishes: the outstanding quota is off. The
        # retained quota stays on (one count of the key's jobs per minute).
        "COMPOSE_GATEWAY_MAX_OUTSTANDING_JOBS_PER_KEY": "0",
        "COMPOSE_GATEWAY_LOG_LEVEL": "warning",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        **(extra_env or {}),
    }
    process = subprocess.Popen([sys.executable, "-m", "compose_gateway"], env=env)
    try:
        yield f"http://127.0.0.1:{port}", psutil.Process(process.pid)
    finally:
        process.terminate()
        process.wait(timeout=30)


async def _wait_ready(session: aiohttp.ClientSession, url: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(aiohttp.ClientError):
            async with session.get(f"{url}/readyz") as response:
                if response.status == 200:
                    return
        await asyncio.sleep(0.1)
    raise RuntimeError("the gateway did not become ready within 60 s")


async def _timed(
    count: int, concurrency: int, call: Callable[[int], Awaitable[None]]
) -> list[float]:
    durations: list[float] = []
    limit = asyncio.Semaphore(concurrency)

    async def one(index: int) -> None:
        async with limit:
            started = time.perf_counter()
            await call(index)
            durations.append((time.perf_counter() - started) * 1000)

    await asyncio.gather(*(one(i) for i in range(count)))
    return durations


def _job_body(index: int) -> dict[str, Any]:
    request = translate.parse_request(REQUEST)
    return translate.build_job(
        request,
        name=naming.random_job_name(),
        owner="bench",
        target=translate.JobTarget(namespace=NAMESPACE),
        request_hash=translate.request_sha256(request),
    )


async def baseline(count: int, concurrency: int) -> Phase:
    with emulator_process() as kube_url:
        async with aiohttp.ClientSession() as session:
            names: list[str] = [""] * count
            bodies = [_job_body(i) for i in range(count)]
            started = time.perf_counter()

            async def create(i: int) -> None:
                async with session.post(kube_url + JOBS_PATH, json=bodies[i]) as response:
                    if response.status != 201:
                        raise RuntimeError(f"create: HTTP {response.status}")
                    names[i] = (await response.json())["metadata"]["name"]

            async def get(i: int) -> None:
                async with session.get(f"{kube_url}{JOBS_PATH}/{names[i]}") as response:
                    if response.status != 200:
                        raise RuntimeError(f"get: HTTP {response.status}")
                    await response.read()

            create_ms = await _timed(count, concurrency, create)
            get_ms = await _timed(count, concurrency, get)
            return Phase("direct API", create_ms, get_ms, time.perf_counter() - started)


async def through_gateway(count: int, concurrency: int) -> tuple[Phase, dict[str, float]]:
    with (
        tempfile.TemporaryDirectory() as workdir,
        emulator_process() as kube_url,
        gateway_process(kube_url, pathlib.Path(workdir)) as (url, process),
    ):
        headers = {"Authorization": f"Bearer {KEY}"}
        async with aiohttp.ClientSession(headers=headers) as session:
            await _wait_ready(session, url)
            log_start = len(kube_emulator.fetch_request_log(kube_url))
            cpu_before = process.cpu_times()
            names: list[str] = [""] * count
            started = time.perf_counter()

            async def create(i: int) -> None:
                async with session.post(f"{url}/generate", json=REQUEST) as response:
                    if response.status != 202:
                        raise RuntimeError(f"POST /generate: HTTP {response.status}")
                    names[i] = (await response.json())["jobId"]

            async def get(i: int) -> None:
                async with session.get(f"{url}/jobs/{names[i]}") as response:
                    if response.status != 200:
                        raise RuntimeError(f"GET /jobs/{{id}}: HTTP {response.status}")
                    await response.read()

            create_ms = await _timed(count, concurrency, create)
            get_ms = await _timed(count, concurrency, get)
            wall = time.perf_counter() - started
            cpu_after = process.cpu_times()
            rss_peak = _peak_rss_mib(process)
            api_requests = len(kube_emulator.fetch_request_log(kube_url, since=log_start))
        cpu_ms = (
            (cpu_after.user - cpu_before.user) + (cpu_after.system - cpu_before.system)
        ) * 1000
        extra = {
            "gateway_cpu_ms_per_request": cpu_ms / (2 * count),
            "gateway_peak_rss_mib": rss_peak,
            "api_requests_per_http_request": api_requests / (2 * count),
        }
        return Phase("gateway", create_ms, get_ms, wall), extra


def _peak_rss_mib(process: psutil.Process) -> float:
    try:
        for line in pathlib.Path(f"/proc/{process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float(process.memory_info().rss) / 2**20


UPLOAD_KEYS = [auth.new_key(f"bench{i}") for i in range(4)]


def _upload_body(size: int) -> tuple[bytes, str]:
    """A multipart body of about ``size`` bytes: person, place and clothing files of equal size,
    at most the gateway's largest file, each a PNG signature and random bytes."""
    defaults = settings_module.Settings.model_fields
    file_limit = int(defaults["max_upload_bytes"].default)
    rng = random.Random(0)
    budget = size - 64 * 1024  # room for the part headers
    files = max(3, math.ceil(budget / file_limit))
    if files > 10 or budget < 3 * 1024:
        raise SystemExit("--upload-mib: outside what one request may carry")
    sizes = [budget // files] * files
    boundary = "benchboundary" + rng.randbytes(8).hex()
    fields = ["personImage", "placeImage"] + ["clothingImages"] * (len(sizes) - 2)
    pieces: list[bytes] = []
    for index, (field, length) in enumerate(zip(fields, sizes, strict=True)):
        data = b"\x89PNG\r\n\x1a\n" + rng.randbytes(length - 8)
        pieces.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
            f'filename="f{index}.png"\r\nContent-Type: image/png\r\n\r\n'.encode()
            + data
            + b"\r\n"
        )
    pieces.append(f"--{boundary}--\r\n".encode())
    return b"".join(pieces), f"multipart/form-data; boundary={boundary}"


async def upload_phase(count: int, size: int) -> dict[str, Any]:
    body, content_type = _upload_body(size)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
    server = s3.start()
    s3_server = next(server)
    try:
        bucket = s3_server.new_bucket("bench-inputs")
        client = s3_server.client()
        keys_text = "".join(
            f"bench{i}: {auth.hash_key(key)}\n" for i, key in enumerate(UPLOAD_KEYS)
        )
        env = {
            **s3_server.env(),
            "AWS_ACCESS_KEY_ID": s3.ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": s3.SECRET_KEY,
            "COMPOSE_GATEWAY_INPUTS_BUCKET": bucket,
        }
        with (
            tempfile.TemporaryDirectory() as workdir,
            emulator_process() as kube_url,
            gateway_process(kube_url, pathlib.Path(workdir), env, keys_text) as (url, process),
        ):
            async with aiohttp.ClientSession() as session:
                await _wait_ready(session, url)
                idle = _peak_rss_mib(process)
                statuses: list[int] = []

                async def one(index: int) -> None:
                    headers = {
                        "Authorization": f"Bearer {UPLOAD_KEYS[index % len(UPLOAD_KEYS)]}",
                        "Content-Type": content_type,
                    }
                    async with session.post(
                        f"{url}/generate", data=body, headers=headers
                    ) as response:
                        statuses.append(response.status)
                        answer = await response.json()
                    if response.status != 202:
                        print(f"upload {index}: HTTP {response.status}: {answer}", file=sys.stderr)
                        return
                    # Keep the S3 server's disk small: drop what this upload stored.
                    owner = f"bench{index % len(UPLOAD_KEYS)}"
                    prefix = f"uploads/{owner}/{answer['jobId']}/"
                    listed = await asyncio.to_thread(
                        client.list_objects_v2, Bucket=bucket, Prefix=prefix
                    )
                    for item in listed.get("Contents", []):
                        await asyncio.to_thread(
                            client.delete_object, Bucket=bucket, Key=item["Key"]
                        )

                started = time.perf_counter()
                await one(0)
                single_s = time.perf_counter() - started
                single = _peak_rss_mib(process)
                started = time.perf_counter()
                await asyncio.gather(*(one(i) for i in range(count)))
                concurrent_s = time.perf_counter() - started
                peak = _peak_rss_mib(process)
    finally:
        with contextlib.suppress(StopIteration):
            next(server)
    return {
        "uploads": count,
        "upload_mib": len(body) / 2**20,
        "statuses": {str(code): statuses.count(code) for code in sorted(set(statuses))},
        "idle_rss_mib": idle,
        "one_upload_peak_rss_mib": single,
        "concurrent_peak_rss_mib": peak,
        "concurrent_over_idle_ratio": peak / idle,
        "concurrent_over_one_upload_ratio": peak / single,
        "mib_received_concurrently_per_mib_of_rss_growth": (
            count * len(body) / 2**20 / max(peak - idle, 1.0)
        ),
        "one_upload_s": single_s,
        "concurrent_s": concurrent_s,
    }


async def run(count: int, concurrency: int, uploads: int, upload_mib: float) -> dict[str, Any]:
    direct = await baseline(count, concurrency)
    gateway, extra = await through_gateway(count, concurrency)
    base, gw = direct.row(), gateway.row()
    ratios = {f"{key}_ratio": gw[key] / base[key] if base[key] else 0.0 for key in base}
    return {
        "requests": count,
        "concurrency": concurrency,
        "direct": base,
        "gateway": gw,
        "ratios": ratios,
        **extra,
        "upload": await upload_phase(uploads, int(upload_mib * 2**20)) if uploads else None,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=300, help="jobs created in each phase")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--uploads", type=int, default=16, help="concurrent uploads; 0: none")
    largest = settings_module.Settings.model_fields["max_request_bytes"].default / 2**20
    parser.add_argument(
        "--upload-mib", type=float, default=largest, help="size of each upload body"
    )
    parser.add_argument(
        "--reuse", type=int, default=0, help="pairs of the same request on a warm pool; 0: none"
    )
    parser.add_argument("--json", type=pathlib.Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.concurrency < 1 or args.uploads < 0 or args.reuse < 0:
        parser.error(
            "--requests and --concurrency must be at least 1, --uploads and --reuse at least 0"
        )
    figures = asyncio.run(run(args.requests, args.concurrency, args.uploads, args.upload_mib))

    print(f"gateway benchmark: {args.requests} jobs, concurrency {args.concurrency}")
    print(f"{'':24}{'direct API':>12}{'gateway':>12}{'ratio':>8}")
    for key in figures["direct"]:
        print(
            f"{key:24}{figures['direct'][key]:12.2f}{figures['gateway'][key]:12.2f}"
            f"{figures['ratios'][key + '_ratio']:8.2f}"
        )
    print(f"gateway CPU per HTTP request:      {figures['gateway_cpu_ms_per_request']:.2f} ms")
    print(f"gateway peak RSS:                  {figures['gateway_peak_rss_mib']:.1f} MiB")
    print(f"API requests per HTTP request:     {figures['api_requests_per_http_request']:.2f}")
    print("(one emulator process per phase; figures compare the phases of this run only)")
    upload = figures["upload"]
    if upload:
        print(
            f"uploads: {upload['uploads']} concurrent of {upload['upload_mib']:.1f} MiB "
            f"(statuses {upload['statuses']})"
        )
        print(f"gateway peak RSS idle:             {upload['idle_rss_mib']:.1f} MiB")
        print(f"  after one upload alone:          {upload['one_upload_peak_rss_mib']:.1f} MiB")
        print(
            f"  after {upload['uploads']} concurrent uploads:     "
            f"{upload['concurrent_peak_rss_mib']:.1f} MiB "
            f"({upload['concurrent_over_idle_ratio']:.2f}x idle, "
            f"{upload['concurrent_over_one_upload_ratio']:.2f}x one upload)"
        )
        print(
            f"  MiB received at once per MiB of RSS growth: "
            f"{upload['mib_received_concurrently_per_mib_of_rss_growth']:.1f}"
        )
    if args.reuse:
        from benchmarks import pool_bench

        modes, reused = asyncio.run(
            pool_bench.run(argparse.Namespace(modes=["gateway-reuse"], jobs=args.reuse, workers=1))
        )
        print(pool_bench.report(modes, reused).rsplit("\n", 1)[-1])
        figures["reuse"] = pool_bench.as_json(modes, reused)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
