"""The server's SIGTERM handler (uvicorn's graceful stop) kept over Ray's.

ray.init() installs Ray's C-level failure handler for SIGTERM, from whatever thread it
runs in: it logs "SIGTERM received" and exits at once, so running jobs are not handed
back and Ray's agents are left orphaned. Python still holds its own handler, so setting
that again puts it back; only the main thread may set one, so a Ray started in another
thread asks the main thread's event loop (the server's) to do it.
"""

from __future__ import annotations

import asyncio
import signal
import threading

_main_loop: asyncio.AbstractEventLoop | None = None


def keep_on(loop: asyncio.AbstractEventLoop) -> None:
    """The running loop, if it runs in the main thread (a server's; a test client's runs
    in another): the one that puts the handler back later."""
    global _main_loop
    if threading.current_thread() is threading.main_thread():
        _main_loop = loop


def put_back(handler: signal.Handlers | object | None) -> None:
    """Set Python's SIGTERM handler again, from the main thread (now) or through its
    loop (soon): the one Ray's start replaced below Python."""
    if handler is None:  # set outside Python: nothing to put back
        return
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)
        return
    loop = _main_loop
    if loop is not None and not loop.is_closed():
        loop.call_soon_threadsafe(signal.signal, signal.SIGTERM, handler)
