"""Micro-batching of concurrent requests into one model-server call.

Each request's rows are queued; whenever fewer than ``max_inflight`` calls are out, the queued requests
(up to ``max_rows`` rows in all, never splitting a request) leave together as one call and every request
gets its own slice of the answer back. So at low traffic a request leaves at once (no added wait), and
under load the requests that arrive while a call is out are sent together with the next one: the hop to
the model server and its fixed per-call cost are paid per batch, not per request.

Bounds: ``max_rows`` per call; ``max_wait`` (optional linger for a fuller batch once a call slot is free);
``max_queue_rows`` queued at most (beyond: :class:`QueueFull`, the gateway answers 503 at once instead of
queueing without limit). A request's wait in the queue is bounded by the calls ahead of it, each bounded by
the upstream timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

Rows = list[Any]
SendFn = Callable[[Rows], Awaitable[Sequence[Any]]]


class QueueFull(RuntimeError):
    """Too many rows queued for the model server: shed the request."""


class BatcherClosed(RuntimeError):
    """The batcher was closed (upstream retired or gateway shutting down) with this request still queued."""


class MicroBatcher:
    def __init__(
        self,
        send: SendFn,
        *,
        max_rows: int = 256,
        max_wait: float = 0.0,
        max_inflight: int = 1,
        max_queue_rows: int = 20_000,
        isolate: Callable[[BaseException], bool] | None = None,
        on_batch: Callable[[int, int], None] | None = None,
    ) -> None:
        """``send(rows) -> results`` (one per row, in order) makes one upstream call.

        ``isolate(exc)``: when a call of several requests fails with an error for which this is true (the
        model server refused the input), each request is retried on its own so only the bad one fails.
        ``on_batch(requests, rows)`` is called for every call made (metrics).
        """
        if max_rows < 1 or max_inflight < 1:
            raise ValueError("max_rows and max_inflight must be >= 1")
        self.send = send
        self.max_rows = max_rows
        self.max_wait = max(0.0, max_wait)
        self.max_inflight = max_inflight
        self.max_queue_rows = max(max_queue_rows, max_rows)
        self.isolate = isolate
        self.on_batch = on_batch
        self._queue: deque[tuple[Rows, asyncio.Future]] = deque()
        self._queued_rows = 0
        self._inflight = 0
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task] = set()
        self._closed = False

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    @property
    def inflight(self) -> int:
        return self._inflight

    async def submit(self, rows: Rows) -> list[Any]:
        """The results for ``rows`` (one per row), from a call shared with other requests."""
        if self._closed:
            raise BatcherClosed("upstream retired")
        if self._queue and self._queued_rows + len(rows) > self.max_queue_rows:
            raise QueueFull(f"{self._queued_rows} rows already queued for the model server")
        future = asyncio.get_running_loop().create_future()
        self._queue.append((rows, future))
        self._queued_rows += len(rows)
        self._pump()
        return await future

    # -- dispatching --------------------------------------------------------------------------------------

    def _pump(self) -> None:
        while self._queue and self._inflight < self.max_inflight:
            if self.max_wait > 0 and self._queued_rows < self.max_rows and self._inflight > 0:
                # Calls are out and this batch is not full: linger (bounded) for more requests.
                if self._timer is None:
                    self._timer = asyncio.get_running_loop().call_later(self.max_wait, self._linger_done)
                return
            self._dispatch()

    def _linger_done(self) -> None:
        self._timer = None
        while self._queue and self._inflight < self.max_inflight:
            self._dispatch()

    def _take(self) -> list[tuple[Rows, asyncio.Future]]:
        items: list[tuple[Rows, asyncio.Future]] = []
        n = 0
        queue = self._queue
        while queue:
            rows, future = queue[0]
            if future.done():  # its request was cancelled (client gone)
                queue.popleft()
                self._queued_rows -= len(rows)
                continue
            if items and n + len(rows) > self.max_rows:
                break
            queue.popleft()
            self._queued_rows -= len(rows)
            items.append((rows, future))
            n += len(rows)
        return items

    def _dispatch(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        items = self._take()
        if not items:
            return
        self._inflight += 1
        task = asyncio.get_running_loop().create_task(self._run(items))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _call(self, items: list[tuple[Rows, asyncio.Future]]) -> None:
        if len(items) == 1:
            rows = items[0][0]
        else:
            rows = [row for request_rows, _ in items for row in request_rows]
        if self.on_batch is not None:
            self.on_batch(len(items), len(rows))
        try:
            results = await self.send(rows)
        except Exception as exc:
            if len(items) > 1 and self.isolate is not None and self.isolate(exc):
                await asyncio.gather(*(self._call([item]) for item in items))
                return
            for _, future in items:
                if not future.done():
                    future.set_exception(exc)
            return
        if len(results) != len(rows):  # the sender checks this; never hand out misaligned slices
            exc = RuntimeError(f"model server returned {len(results)} results for {len(rows)} rows")
            for _, future in items:
                if not future.done():
                    future.set_exception(exc)
            return
        start = 0
        for request_rows, future in items:
            end = start + len(request_rows)
            if not future.done():
                future.set_result(results[start:end] if len(items) > 1 else list(results))
            start = end

    async def _run(self, items: list[tuple[Rows, asyncio.Future]]) -> None:
        try:
            await self._call(items)
        except BaseException as exc:  # cancelled (shutdown) or a bug: never leave a request hanging
            for _, future in items:
                if not future.done():
                    future.set_exception(exc if isinstance(exc, Exception) else BatcherClosed("cancelled"))
            if not isinstance(exc, Exception):
                raise
        finally:
            self._inflight -= 1
            if not self._closed:
                self._pump()

    async def close(self, timeout: float = 5.0) -> None:
        """Fail queued requests, wait (bounded) for calls in flight."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._queue:
            rows, future = self._queue.popleft()
            self._queued_rows -= len(rows)
            if not future.done():
                future.set_exception(BatcherClosed("gateway shutting down"))
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(BaseException):
                    await task
