"""A media source that resolves its references at fetch time (Telegram's getFile): the
resolved URL may carry a credential, so it must stay on the source's host and never be
what an error shows."""

from __future__ import annotations

from gateway.media import MediaSource, ResolveFailed
from gateway.store.sqlite import SQLiteStore
from tests.adapters.test_media_fetcher import FILE, Host, fetch, hosts, store

__all__ = ["hosts", "store"]  # the fixtures, shared with the fetcher's own tests


def resolving(api: Host, target: str | ResolveFailed) -> MediaSource:
    async def resolve(reference: str) -> str:
        assert reference.startswith(api.url + "/omnirelay-file?file_id=")
        if isinstance(target, ResolveFailed):
            raise target
        return target
    return MediaSource.of([api.url], resolve=resolve)


async def test_the_resolved_url_is_fetched_and_the_reference_never_requested(
        store: SQLiteStore, hosts: tuple[Host, Host, Host]) -> None:
    api, _cdn, _other = hosts
    source = resolving(api, f"{api.url}/file/bot123:SECRET/photos/f.jpg")
    entry = await fetch(store, source, f"{api.url}/omnirelay-file?file_id=F1")
    assert entry["size"] == len(FILE)
    assert [path for path, _ in api.seen] == ["/file/bot123:SECRET/photos/f.jpg"]


async def test_a_resolved_url_on_another_host_is_refused_unrequested(
        store: SQLiteStore, hosts: tuple[Host, Host, Host]) -> None:
    api, _cdn, other = hosts
    source = resolving(api, f"{other.url}/file/bot123:SECRET/x.jpg")
    entry = await fetch(store, source, f"{api.url}/omnirelay-file?file_id=F2")
    assert entry["error"]["code"] == "media_host_refused"  # type: ignore[index]
    assert other.seen == [] and api.seen == []
    assert "SECRET" not in str(entry)


async def test_a_reference_the_provider_refuses_fails_with_its_reason(
        store: SQLiteStore, hosts: tuple[Host, Host, Host]) -> None:
    api, _cdn, _other = hosts
    source = resolving(api, ResolveFailed("getFile refused: file is too big", retry=False))
    entry = await fetch(store, source, f"{api.url}/omnirelay-file?file_id=F3")
    assert entry["error"] == {"code": "media_refused",  # type: ignore[comparison-overlap]
                              "message": "getFile refused: file is too big"}
    assert api.seen == []
