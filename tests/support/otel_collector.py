"""A real OpenTelemetry Collector for the tracing tests: OTLP/HTTP in on 127.0.0.1, a file out.

The binary is built from source by ``scripts/build_otelcol.sh`` (the core distribution's OTLP
receiver and file exporter, ``tools/otelcol``) into a cache outside the checkout; :func:`binary`
runs that script, which returns at once when it is there. Nothing falls back to an in-process
exporter: a missing or broken binary fails the tests that need it, with the script's error.

:func:`start` runs one collector in a temporary directory; :meth:`Collector.spans` reads what its
file exporter wrote (one JSON line of OTLP ``resourceSpans`` per batch) as flat :class:`Span`
records, with the resource's ``service.name`` on each.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from typing import Any

REPO = pathlib.Path(__file__).resolve().parents[2]
SERVER_KIND = 2  # OTLP's SPAN_KIND_SERVER


class CollectorError(RuntimeError):
    """The collector did not build or start; the message ends with its output."""


def binary() -> pathlib.Path:
    """The built collector (built now if the cache lacks it)."""
    override = os.environ.get("COMPOSE_OTELCOL_BIN")
    if override:
        return pathlib.Path(override)
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "build_otelcol.sh")],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise CollectorError(
            "scripts/build_otelcol.sh failed; the tracing tests cannot run:\n" + done.stderr[-4000:]
        )
    return pathlib.Path(done.stdout.strip().splitlines()[-1])


@dataclasses.dataclass(frozen=True)
class Span:
    service: str
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    kind: int
    attributes: dict[str, Any]
    error: bool


def _value(raw: dict[str, Any]) -> Any:
    if "arrayValue" in raw:
        return [_value(item) for item in raw["arrayValue"].get("values", [])]
    for key in ("stringValue", "boolValue", "doubleValue"):
        if key in raw:
            return raw[key]
    if "intValue" in raw:
        return int(raw["intValue"])
    return None


def _attributes(items: list[dict[str, Any]] | None) -> dict[str, Any]:
    return {item["key"]: _value(item.get("value") or {}) for item in items or []}


@dataclasses.dataclass
class Collector:
    endpoint: str  # the OTLP/HTTP base URL, as OTEL_EXPORTER_OTLP_ENDPOINT takes it
    output: pathlib.Path
    log: pathlib.Path
    process: subprocess.Popen[bytes]

    def spans(self) -> list[Span]:
        """Every span received so far (a line the collector is still writing is left for later)."""
        if not self.output.exists():
            return []
        found = []
        text = self.output.read_text()
        complete = text[: text.rfind("\n") + 1]
        for line in complete.splitlines():
            if not line.strip():
                continue
            for resource_spans in json.loads(line).get("resourceSpans", []):
                resource = _attributes((resource_spans.get("resource") or {}).get("attributes"))
                for scope in resource_spans.get("scopeSpans", []):
                    for raw in scope.get("spans", []):
                        found.append(
                            Span(
                                service=str(resource.get("service.name")),
                                trace_id=raw["traceId"],
                                span_id=raw["spanId"],
                                parent_id=raw.get("parentSpanId", ""),
                                name=raw["name"],
                                kind=int(raw.get("kind", 0)),
                                attributes=_attributes(raw.get("attributes")),
                                error=(raw.get("status") or {}).get("code") == 2,
                            )
                        )
        return found

    def env(self) -> dict[str, str]:
        """What a process needs to export its spans here promptly."""
        return {"OTEL_EXPORTER_OTLP_ENDPOINT": self.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "200"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def start() -> Iterator[Collector]:
    """One collector until the block ends: the OTLP receiver (HTTP) on a free loopback port, the
    file exporter writing each batch as it comes, no telemetry of its own."""
    path = binary()
    with tempfile.TemporaryDirectory(prefix="otelcol-") as folder:
        root = pathlib.Path(folder)
        port = _free_port()
        output = root / "spans.jsonl"
        config = {
            "receivers": {"otlp": {"protocols": {"http": {"endpoint": f"127.0.0.1:{port}"}}}},
            "exporters": {"file": {"path": str(output), "flush_interval": "100ms"}},
            "service": {
                "telemetry": {"metrics": {"level": "none"}},
                "pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["file"]}},
            },
        }
        config_path = root / "config.yaml"
        config_path.write_text(json.dumps(config))  # YAML is a superset of JSON
        log = root / "collector.log"
        with log.open("wb") as handle:
            process = subprocess.Popen(
                [str(path), "--config", str(config_path)], stdout=handle, stderr=handle
            )
        try:
            deadline = time.monotonic() + 30
            while True:
                if process.poll() is not None:
                    raise CollectorError(f"the collector exited:\n{log.read_text()[-4000:]}")
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection(("127.0.0.1", port), timeout=0.5),
                ):
                    break
                if time.monotonic() > deadline:
                    raise CollectorError(f"no OTLP receiver after 30 s:\n{log.read_text()[-4000:]}")
                time.sleep(0.05)
            yield Collector(f"http://127.0.0.1:{port}", output, log, process)
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
