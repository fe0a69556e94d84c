"""The engine's typed errors: every refusal carries a stable machine-readable code and a human message."""

from __future__ import annotations

__all__ = [
    "CompressionError",
    "ExportMismatch",
    "InvalidConfig",
    "InvalidDataset",
    "InvalidModel",
    "JobStopped",
    "ModelTooCostly",
    "ResourcesExceeded",
    "UnsupportedModelFormat",
    "UnsupportedOp",
    "UserError",
]


class CompressionError(Exception):
    """Base of every error the engine raises on purpose; `code` is stable, `message` is for people."""

    code = "compression_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def as_dict(self) -> dict[str, str]:
        """Returns the error in the API's `{"code", "message"}` shape."""
        return {"code": self.code, "message": self.message}


class UserError(CompressionError):
    """An error caused by the user's input: retrying cannot help, so the job fails at once."""

    code = "user_error"


class InvalidConfig(UserError):
    """The job's configuration is inconsistent (unknown option, wrong target for the method, …)."""

    code = "invalid_config"


class InvalidModel(UserError):
    """The model file is malformed, truncated, or does not fit the named architecture."""

    code = "invalid_model"


class ModelTooCostly(UserError):
    """The model's estimated memory or compute (from its graph, before running it) is over the limits."""

    code = "model_too_costly"


class ResourcesExceeded(UserError):
    """The job crossed its memory ceiling or CPU-time budget while running: the input costs too much."""

    code = "resources_exceeded"


class UnsupportedModelFormat(UserError):
    """The model file is of a format that can carry code (pickle, TorchScript, .pt2) or is unknown."""

    code = "unsupported_model_format"


class UnsupportedOp(UserError):
    """The ONNX graph uses an operator the engine cannot train or prune."""

    code = "unsupported_op"


class InvalidDataset(UserError):
    """The dataset file is malformed, unsafe, or inconsistent with the model."""

    code = "invalid_dataset"


class ExportMismatch(UserError):
    """The exported ONNX model does not reproduce the PyTorch model within tolerance."""

    code = "export_mismatch"


class JobStopped(Exception):
    """Raised from a progress callback to stop the engine at a step boundary (cancel, lost lease, SIGTERM)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
