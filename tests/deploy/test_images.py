"""The operator's Dockerfile and the image build script (neither is built here: no Docker engine).
Checks what can be checked without building: a slim base, only the operator extra, a non-root
numeric user the chart's runAsNonRoot can verify, and a build script that parses."""

from __future__ import annotations

import re
import subprocess

import yaml

from tests.deploy import helpers

DOCKERFILE = helpers.ROOT / "operator" / "Dockerfile"


def _final_stage(text: str) -> list[str]:
    lines = [
        line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")
    ]
    starts = [index for index, line in enumerate(lines) if line.startswith("FROM ")]
    return lines[starts[-1] :]


def test_operator_image_is_slim_non_root_and_operator_only() -> None:
    text = DOCKERFILE.read_text()
    final = _final_stage(text)
    assert final[0] == "FROM python:3.11-slim"
    users = [line.split()[1] for line in final if line.startswith("USER ")]
    assert users, "the final stage sets no USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit() and int(gid) != 0
    installs = re.findall(r"pip install [^\n]*", text)
    assert len(installs) == 1 and '".[operator]"' in installs[0]
    assert "PYTHONDONTWRITEBYTECODE=1" in text
    assert final[-1] == 'CMD ["compose-operator"]'
    # The chart runs the same user, so runAsNonRoot holds with either image or chart alone.
    values = yaml.safe_load((helpers.CHART / "values.yaml").read_text())
    assert values["podSecurityContext"]["runAsUser"] == int(uid)


def test_build_script_parses_and_documents_the_ecr_login() -> None:
    script = helpers.ROOT / "scripts" / "build_images.sh"
    done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    text = script.read_text()
    assert "aws ecr get-login-password" in text and "docker login --username AWS" in text
    assert "operator/Dockerfile" in text and "inference_image/Dockerfile" in text
    readme = (helpers.CHART / "README.md").read_text()
    assert "aws ecr get-login-password" in readme
