"""Failures of the inference image, each carrying the exit code the operator understands.

Every stage (fetching, image validation, face analysis, model loading, generation, upload) raises
one of these; ``runner`` turns it into the termination message and ``__main__`` into the process
exit code (``compose_api.contract.ExitCode``). Anything else that escapes is ``INTERNAL``.
"""

from __future__ import annotations

from compose_api import contract


class ComposeError(Exception):
    """A failure with an exit code; the message is shown to the user, so it names the input."""

    exit_code: contract.ExitCode = contract.ExitCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InputRejected(ComposeError):
    """An input is not acceptable: not an image, truncated, too large, wrong format, or a URL
    pointing at a forbidden address."""

    exit_code = contract.ExitCode.INPUT_REJECTED


class NoFaceFound(ComposeError):
    """The person photo shows no face (or several, when the profile forbids that)."""

    exit_code = contract.ExitCode.NO_FACE


class InputUnavailable(ComposeError):
    """An input could not be read: missing object, access denied, unreachable after retries."""

    exit_code = contract.ExitCode.INPUT_UNAVAILABLE


class UnknownProfile(ComposeError):
    """The job names a model profile this image does not know."""

    exit_code = contract.ExitCode.UNKNOWN_PROFILE


class ModelLoadFailed(ComposeError):
    """Weights missing (offline without a cache), corrupt, failing their checksum, or unloadable."""

    exit_code = contract.ExitCode.MODEL_LOAD_FAILED


class UploadFailed(ComposeError):
    """The result could not be stored."""

    exit_code = contract.ExitCode.UPLOAD_FAILED


class OutOfGpuMemory(ComposeError):
    """CUDA ran out of memory; another node may have a free GPU, so the operator retries."""

    exit_code = contract.ExitCode.OUT_OF_GPU_MEMORY


class IdentityCheckFailed(ComposeError):
    """The profile's minimum identity similarity was not reached within its retries."""

    exit_code = contract.ExitCode.IDENTITY_CHECK_FAILED


class ContentRejected(ComposeError):
    """The profile's safety check flagged an input photo or the generated image; the message
    names what was flagged and the checker's concepts, never image data."""

    exit_code = contract.ExitCode.CONTENT_REJECTED


class DeadlineExceeded(ComposeError):
    """A pool worker's run went past the job's ``activeDeadlineSeconds`` and was stopped."""

    exit_code = contract.ExitCode.DEADLINE_EXCEEDED


class Stopped(ComposeError):
    """A pool worker's run was stopped because its job was taken back; nothing is uploaded and
    nothing reported (the assignment is no longer the worker's)."""


def is_out_of_memory(error: BaseException) -> bool:
    """True for CUDA out-of-memory errors (torch.cuda.OutOfMemoryError and its older forms)."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is part of the inference extra
        return False
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "CUDA out of memory" in str(error)


def classify(error: BaseException) -> ComposeError:
    """The ComposeError for any exception (unknown ones become INTERNAL with their type named)."""
    if isinstance(error, ComposeError):
        return error
    if is_out_of_memory(error):
        return OutOfGpuMemory(f"out of GPU memory: {_first_line(error)}")
    return ComposeError(f"internal error: {type(error).__name__}: {_first_line(error)}")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else ""
