"""The SDK for plain scripts: :class:`ColivingSync`, the same methods without ``await``.

It runs a trio loop in a thread of its own for as long as it is open, with a
:class:`~sdk.client.Coliving` connected inside, and hands each call to that
loop (``trio.from_thread``). A stream comes back as an ordinary iterator of
verified chunks::

    with ColivingSync("http://127.0.0.1:8080") as co:
        co.login("ada@example.com", "correct horse")
        for track in co.search("song"):
            print(track["title"])
"""

from __future__ import annotations

import functools
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import trio
import trio.lowlevel

from sdk.client import Account, Coliving


class ColivingSync:
    """A blocking client. Use as a context manager (or call :meth:`close`)."""

    def __init__(
        self, gateway: str, *, node: str | None = None, account: Account | None = None,
        **options: Any,
    ) -> None:  # fmt: skip
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._co: Coliving | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._thread = threading.Thread(
            target=trio.run,
            args=(self._main, gateway, node, account, options),
            name="coliving-sdk",
            daemon=True,
        )
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._thread.join()
            raise self._error

    async def _main(
        self, gateway: str, node: str | None, account: Account | None, options: dict[str, Any]
    ) -> None:
        try:
            async with Coliving.connect(gateway, node=node, account=account, **options) as co:
                self._co = co
                self._token = trio.lowlevel.current_trio_token()
                self._stop = trio.Event()
                self._ready.set()
                await self._stop.wait()
        except BaseException as exc:  # reported to the constructor's caller
            if not self._ready.is_set():
                self._error = exc
                self._ready.set()
            else:
                raise

    @property
    def client(self) -> Coliving:
        """The async client inside (for its attributes: ``account``, ``network``)."""
        assert self._co is not None
        return self._co

    @property
    def account(self) -> Account | None:
        return self.client.account

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.client, name)
        if not callable(method):
            return method  # type: ignore[no-any-return]

        @functools.wraps(method)
        def call(*args: Any, **kwargs: Any) -> Any:
            result = trio.from_thread.run(
                functools.partial(_call, method, *args, **kwargs), trio_token=self._token
            )
            return result

        return call

    def stream(self, track_id: int, *, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        return self._iterate(self.client.stream(track_id, start=start, end=end))

    def fetch(self, cid: str, *, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        return self._iterate(self.client.fetch(cid, start=start, end=end))

    def _iterate(self, chunks: AsyncIterator[bytes]) -> Iterator[bytes]:
        try:
            while True:
                try:
                    yield trio.from_thread.run(chunks.__anext__, trio_token=self._token)
                except StopAsyncIteration:
                    return
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                trio.from_thread.run(aclose, trio_token=self._token)

    def close(self) -> None:
        if self._stop is not None and self._thread.is_alive():
            trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join()

    def __enter__(self) -> ColivingSync:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def _call(method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    result = method(*args, **kwargs)
    if hasattr(result, "__await__"):
        return await result
    return result
