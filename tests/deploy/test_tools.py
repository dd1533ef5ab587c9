"""scripts/fetch_tools.sh: real helm and kubectl in .tools/bin, idempotently."""

from __future__ import annotations

import os
import pathlib
import subprocess

from tests.deploy import helpers


def test_fetch_tools_is_idempotent_and_gives_working_binaries(tools: helpers.Tools) -> None:
    script = helpers.ROOT / "scripts" / "fetch_tools.sh"
    again = subprocess.run(
        ["bash", str(script)], capture_output=True, text=True, check=True, timeout=300
    )
    assert again.stdout.split() == [tools.helm, tools.kubectl]
    for path in (tools.helm, tools.kubectl):
        assert pathlib.Path(path).parent == helpers.ROOT / ".tools" / "bin"
        assert os.access(path, os.X_OK)
    helm = subprocess.run(
        [tools.helm, "version", "--short"], capture_output=True, text=True, check=True
    )
    assert helm.stdout.startswith(("v3.", "v4."))
    kubectl = subprocess.run(
        [tools.kubectl, "version", "--client"], capture_output=True, text=True, check=True
    )
    assert "Client Version: v1." in kubectl.stdout
