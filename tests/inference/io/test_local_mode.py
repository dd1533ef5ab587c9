"""The `compose` command in local mode: sample inputs, the smoke profile end to end with its
noise notice, and bad input refused with its exit code before any model is built."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from compose_api import contract
from compose_inference import __main__ as entrypoint
from tests.inference.io.conftest import HttpServer


def test_samples_are_written(tmp_path: Path) -> None:
    written = entrypoint.write_samples(tmp_path / "samples")
    assert [path.name for path in written] == [
        "person.png",
        "shirt.png",
        "trousers.png",
        "place.png",
    ]
    with Image.open(written[0]) as person:
        assert person.size == (512, 512)


@pytest.mark.slow
def test_smoke_profile_runs_the_readme_command(tmp_path: Path) -> None:
    samples = tmp_path / "samples"
    env = dict(os.environ, COMPOSE_MODEL_CACHE=str(tmp_path / "cache"))
    command = [sys.executable, "-m", "compose_inference"]
    subprocess.run([*command, "samples", "--dir", str(samples)], env=env, check=True)
    out = tmp_path / "result.webp"
    completed = subprocess.run(
        [
            *command,
            "--person", str(samples / "person.png"),
            "--clothing", f"{samples / 'shirt.png'}#upper",
            "--clothing", f"{samples / 'trousers.png'}#lower",
            "--place", str(samples / "place.png"),
            "--out", str(out),
            "--seed", "5",
            "--steps", "30",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "the output is NOISE" in completed.stderr
    summary = json.loads(completed.stdout)
    assert summary["profile"] == "smoke"
    assert summary["seed"] == 5
    assert summary["format"] == "webp"
    # The one rule: the profile's pins win over the flags too, and it is said.
    assert "NOTE: profile smoke pins steps=2 (asked 30)" in completed.stderr
    assert summary["steps"] == 2
    assert summary["pinnedByProfile"] == {"steps": 2, "width": 64, "height": 64}
    # The smoke profile's safety check ran (its tiny checker flags nothing).
    assert summary["timings"]["safety"] >= 0
    with Image.open(out) as image:
        assert image.format == "WEBP"
        assert image.size == (64, 64)  # the smoke profile pins 64x64


def run_local(args: list[str], tmp_path: Path, **env: str) -> int:
    environ = dict(os.environ, COMPOSE_MODEL_CACHE=str(tmp_path / "cache"), **env)
    return entrypoint.local(args, environ=environ)


def test_redirect_to_metadata_refused_before_any_model(
    tmp_path: Path, http_server: HttpServer, capsys: pytest.CaptureFixture[str]
) -> None:
    samples = entrypoint.write_samples(tmp_path / "samples")
    person = http_server.redirect("/me.png", "http://169.254.169.254/latest/meta-data/")
    out = tmp_path / "out.png"
    code = run_local(
        ["--person", person, "--clothing", str(samples[1]), "--place", str(samples[3]),
         "--out", str(out)],
        tmp_path,
        COMPOSE_NETGUARD_ALLOW_CIDRS="127.0.0.1/32",
        COMPOSE_NETGUARD_ALLOW_HTTP="1",
    )  # fmt: skip
    assert code == contract.ExitCode.INPUT_REJECTED
    error = capsys.readouterr().err
    assert "169.254.169.254: cloud metadata address" in error
    assert "redirected from" in error
    assert not out.exists()
    assert not (tmp_path / "cache" / "builtin" / "smoke" / "models").exists()


def test_unknown_profile_exit_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = run_local(
        ["--person", "p.png", "--clothing", "c.png", "--place", "x.png", "--out",
         str(tmp_path / "o.png"), "--profile", "nope"],
        tmp_path,
    )  # fmt: skip
    assert code == contract.ExitCode.UNKNOWN_PROFILE
    assert "profile 'nope' is not known to this image (known: instantid-sdxl" in (
        capsys.readouterr().err
    )


def test_unknown_output_extension(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = run_local(
        ["--person", "p.png", "--clothing", "c.png", "--place", "x.png", "--out",
         str(tmp_path / "o.gif")],
        tmp_path,
    )  # fmt: skip
    assert code == contract.ExitCode.INPUT_REJECTED
    assert "unknown extension" in capsys.readouterr().err


def test_packaged_profiles_say_non_commercial() -> None:
    from compose_inference import catalogue

    packaged = catalogue.packaged()
    assert "instantid-sdxl" in packaged
    for profile in packaged.values():
        assert profile.licence.commercial_use is False
        assert "non-commercial" in profile.licence.name
        assert profile.models["identitynet"].uri == "hf://InstantX/InstantID"


@pytest.mark.slow
def test_smoke_profile_finds_no_face_in_a_coffee_cup(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from skimage import data

    samples = entrypoint.write_samples(tmp_path / "samples")
    cup = tmp_path / "coffee.png"
    Image.fromarray(data.coffee()).save(cup)
    code = run_local(
        ["--person", str(cup), "--clothing", str(samples[1]), "--place", str(samples[3]),
         "--out", str(tmp_path / "o.png")],
        tmp_path,
    )  # fmt: skip
    assert code == contract.ExitCode.NO_FACE
    assert "spec.inputs.person.uri: no face found" in capsys.readouterr().err


def test_a_decompression_bomb_is_refused_without_importing_torch(tmp_path: Path) -> None:
    """Cheap refusals stay cheap: the request checks and the image validation come before
    torch, diffusers, numpy, OpenCV and insightface are imported (their import alone takes
    seconds; benchmarks/inference_bench.py times the refusal)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    bomb = tmp_path / "bomb.png"
    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    bomb.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )  # fmt: skip
    samples = entrypoint.write_samples(tmp_path / "samples")
    script = (
        "import sys; from compose_inference import __main__ as m; code = m.main(sys.argv[1:]);"
        " heavy = ('torch', 'diffusers', 'transformers', 'numpy', 'cv2', 'insightface', 'onnx');"
        " print(sorted(name for name in heavy if name in sys.modules)); sys.exit(code)"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script, "--person", str(bomb), "--clothing", str(samples[1]),
         "--place", str(samples[3]), "--out", str(tmp_path / "o.png")],
        env=dict(os.environ, COMPOSE_MODEL_CACHE=str(tmp_path / "cache")),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip
    assert completed.returncode == contract.ExitCode.INPUT_REJECTED, completed.stderr
    assert "spec.inputs.person.uri" in completed.stderr
    assert "900000000 pixels" in completed.stderr
    assert completed.stdout.strip().splitlines()[-1] == "[]"
