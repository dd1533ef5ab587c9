"""Failures map to the operator's exit codes."""

from __future__ import annotations

import pytest
import torch

from compose_api import contract
from compose_inference import errors, runner


def test_cuda_out_of_memory_maps_to_its_exit_code() -> None:
    mapped = errors.classify(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried 2 GiB"))
    assert isinstance(mapped, errors.OutOfGpuMemory)
    assert mapped.exit_code == contract.ExitCode.OUT_OF_GPU_MEMORY
    assert mapped.exit_code.retryable


def test_unexpected_errors_are_internal_and_named() -> None:
    mapped = errors.classify(KeyError("unet"))
    assert mapped.exit_code == contract.ExitCode.INTERNAL
    assert mapped.message == "internal error: KeyError: 'unet'"


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.InputRejected("x"), contract.ExitCode.INPUT_REJECTED),
        (errors.NoFaceFound("x"), contract.ExitCode.NO_FACE),
        (errors.InputUnavailable("x"), contract.ExitCode.INPUT_UNAVAILABLE),
        (errors.UnknownProfile("x"), contract.ExitCode.UNKNOWN_PROFILE),
        (errors.ModelLoadFailed("x"), contract.ExitCode.MODEL_LOAD_FAILED),
        (errors.UploadFailed("x"), contract.ExitCode.UPLOAD_FAILED),
        (errors.IdentityCheckFailed("x"), contract.ExitCode.IDENTITY_CHECK_FAILED),
        (errors.ContentRejected("x"), contract.ExitCode.CONTENT_REJECTED),
    ],
)
def test_each_failure_carries_its_code(error: errors.ComposeError, code: int) -> None:
    assert errors.classify(error) is error
    assert error.exit_code == code


def test_failure_termination_message_has_no_result() -> None:
    watch = runner.Stopwatch(clock=iter([0.0, 0.0, 2.5, 3.0]).__next__)
    with watch.stage("fetch"):
        pass
    message = runner.termination_message(
        outcome=None, error=errors.NoFaceFound("personImage: no face"), watch=watch
    )
    assert message.exit_code == 11
    assert message.reason == "NoFaceFound"
    assert message.result is None
    assert message.timings is not None
    assert (message.timings.fetch, message.timings.total) == (2.5, 3.0)


def test_a_content_rejection_reports_the_safety_check_as_its_own_stage() -> None:
    # started, load (0-1), safety (1-1.25), total at 2
    watch = runner.Stopwatch(clock=iter([0.0, 0.0, 1.0, 1.0, 1.25, 2.0]).__next__)
    with watch.stage("load"):
        pass
    with watch.stage("safety"):
        pass
    message = runner.termination_message(
        outcome=None,
        error=errors.ContentRejected("the generated image: flagged by the safety check"),
        watch=watch,
    )
    assert (message.exit_code, message.reason) == (24, "ContentRejected")
    assert message.timings is not None
    assert (message.timings.model_load, message.timings.safety_check) == (1.0, 0.25)
    assert '"safetyCheck":0.25' in message.to_json()
