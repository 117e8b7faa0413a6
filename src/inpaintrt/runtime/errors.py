"""InvalidArgument: a ValueError that carries the name of the argument it is about.

Callers that must name the field (the server's 422, the CLI's flag) read `.field` instead of parsing
the message; everyone else sees a plain ValueError whose text names the argument and the fix.
"""
from __future__ import annotations


class InvalidArgument(ValueError):
    def __init__(self, field: str, message: str, fix: str | None = None):
        super().__init__(message)
        self.field, self.fix = field, fix
