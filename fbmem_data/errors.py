"""The one error family of fbmem. Every error a user can see derives from FbmemError."""

from __future__ import annotations


class FbmemError(Exception):
    """Base error: `message` says what is wrong, `hint` (optional) what to do about it."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message


class WorkspaceError(FbmemError):
    """The workspace is missing, not initialised, or damaged."""


class SchemaError(FbmemError):
    """Rows do not match the table's schema in schemas/."""


class InputError(FbmemError):
    """A user-supplied file or argument is malformed (bad CSV/JSONL, duplicate ids, unknown format)."""


class QueryError(FbmemError):
    """A SQL query failed; wraps DuckDB's error with the query context."""


class ModelNotFoundError(FbmemError):
    """Weights or a model directory are missing; the hint says how to get them."""


class PluginError(FbmemError):
    """An unknown plug-in name, or a plug-in that cannot run in this environment."""


class DeviceError(InputError, PluginError):
    """A device name that is malformed or not available here (an input error of the plug-in that got it)."""
