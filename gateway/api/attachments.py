"""Attachment downloads, named and typed so a browser cannot be tricked (RFC 6266)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from gateway.api.auth import require
from gateway.api.view import gw
from gateway.errors import NotFound
from normalizer.attachments import content_disposition, sanitize_content_type


async def get_attachment(request: web.Request) -> web.StreamResponse:
    """``GET /v1/attachments/{id}``: the stored bytes."""
    require(request, "read")
    attachment, path = await gw(request).store.get_attachment(request.match_info["id"])
    if not await asyncio.to_thread(path.exists):
        raise NotFound("the attachment's bytes were purged by the retention setting")
    # Checked again: rows stored before the metadata checks may hold anything (RFC 6266).
    return web.FileResponse(path, headers={
        "Content-Type": sanitize_content_type(attachment.content_type),
        "Content-Disposition": content_disposition(attachment.filename),
        "X-Content-Type-Options": "nosniff"})
