"""Every page of a keyset-paginated read, as the tests walk them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def all_pages(fetch: Callable[..., Any], limit: int) -> list:
    """The items of `fetch(limit=limit, cursor=...)`'s pages in order, from the first page
    to the one without a next cursor; each page holds at most `limit` items."""
    items, cursor, pages = [], None, 0
    while True:
        page = fetch(limit=limit, cursor=cursor)
        assert len(page.items) <= limit
        items += page.items
        pages += 1
        cursor = page.next_cursor
        if cursor is None:
            return items
        assert pages < 1000
