"""The upload cap, enforced on the raw ASGI stream: a declared Content-Length over the cap is refused
before a byte is read, and a chunked body is cut off as soon as it passes the cap."""
from __future__ import annotations

from .errors import ApiError, error_response


class BodyLimit:
    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(int(declared))(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:  # the endpoint's exception handler turns this into the 413
                    raise self._error(seen)
            return message

        return await self.app(scope, counted, send)

    def _error(self, size: int) -> ApiError:
        mb = self.max_bytes / 2**20
        return ApiError(413, "body", f"the upload is over this server's limit of {mb:g} MB (at least {size} bytes)",
                        f"send smaller files (downscale or compress the picture); the limit is --max-upload-mb {mb:g}")

    def _refuse(self, size: int):
        e = self._error(size)
        return error_response(e.status, e.field, e.message, e.fix, {"Connection": "close"})
