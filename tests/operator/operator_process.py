"""The real operator process (the ``compose-operator`` console script) for the operator's tests.

:class:`OperatorProcess` starts it with an environment of ``COMPOSE_*`` settings
(:func:`operator_env`), kills it as a crash would (SIGKILL) and starts it again; its log is kept
so a failing test can print it.
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
from collections.abc import Mapping


class OperatorProcess:
    """Start, kill (SIGKILL, as a crash) and restart ``compose-operator``.

    ``user`` is the name the API server knows it by (its service account), to find its requests
    in the audit log."""

    def __init__(
        self, env: Mapping[str, str], log_path: pathlib.Path, *, user: str | None = None
    ) -> None:
        self.env = dict(env)
        self.log_path = log_path
        self.user = user
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "compose_operator"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

    def kill(self) -> None:
        """Kill at once, with no chance to clean up: a crash or an OOM kill."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def operator_env(profiles_path: pathlib.Path, **extra: str) -> dict[str, str]:
    """The operator's environment: this process's without ``COMPOSE_*``, the test settings
    (standalone, no metrics or health ports, a sweep every half second), then ``extra``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("COMPOSE_")}
    env.update(
        COMPOSE_PROFILES_PATH=str(profiles_path),
        COMPOSE_OUTPUT_BUCKET="results-bucket",
        COMPOSE_STANDALONE="true",
        COMPOSE_METRICS_PORT="0",
        COMPOSE_HEALTH_PORT="0",
        COMPOSE_RECONCILE_INTERVAL_SECONDS="0.5",
        COMPOSE_JOB_TTL_SECONDS="600",
    )
    env.update(extra)
    return env
