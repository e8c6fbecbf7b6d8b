"""User-facing errors: one line naming the file, line and field, and exit code 2."""

from __future__ import annotations

from pathlib import Path


class UserError(Exception):
    """An error caused by the user's input (a file, a flag, a config value).

    The CLI prints ``str(error)`` on one line and exits with code 2; no traceback.
    """

    exit_code = 2

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.path = str(path) if path is not None else None
        self.line = line
        self.field = field
        self.message = message
        where = ""
        if self.path is not None:
            where = self.path + (f":{line}" if line is not None else "") + ": "
        elif line is not None:
            where = f"line {line}: "
        what = f"field '{field}': " if field else ""
        super().__init__(f"{where}{what}{message}")
