"""Errors a user can fix: printed by the CLI as one clear line, never as a traceback."""

from __future__ import annotations


class UserError(Exception):
    """Bad input, a missing file, a wrong column, an unreachable server: say what and where."""


class DataError(UserError):
    """A data file or row that cannot be read; the message names the file/row and the fix."""
