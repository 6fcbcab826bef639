"""Unit tests of the gateway's micro-batcher, circuit breaker and prediction log (no processes, no network)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from gateway.batcher import BatcherClosed, MicroBatcher, QueueFull
from gateway.predlog import Lineage, PredictionLog
from gateway.resilience import CircuitBreaker, backoff_delay


class FakeUpstream:
    """send(rows) that records each call and answers [row["x"] * 10, ...] once released."""

    def __init__(self, auto: bool = True) -> None:
        self.calls: list[list[dict]] = []
        self.gate = asyncio.Event()
        if auto:
            self.gate.set()
        self.concurrent = 0
        self.max_concurrent = 0
        self.fail: Exception | None = None

    async def send(self, rows: list[dict]) -> list[float]:
        self.calls.append(rows)
        self.concurrent += 1
        self.max_concurrent = max(self.max_concurrent, self.concurrent)
        try:
            await self.gate.wait()
            await asyncio.sleep(0)
            if self.fail is not None:
                raise self.fail
            return [row["x"] * 10 for row in rows]
        finally:
            self.concurrent -= 1


def rows(*xs: float) -> list[dict]:
    return [{"x": x} for x in xs]


def run(coro):
    return asyncio.run(coro)


def test_single_request_leaves_at_once():
    async def main():
        up = FakeUpstream()
        batcher = MicroBatcher(up.send, max_rows=8, max_inflight=1)
        assert await batcher.submit(rows(1, 2)) == [10, 20]
        assert up.calls == [rows(1, 2)]

    run(main())


def test_concurrent_requests_share_calls_and_get_their_own_slices():
    async def main():
        up = FakeUpstream(auto=False)
        sizes: list[tuple[int, int]] = []
        batcher = MicroBatcher(up.send, max_rows=64, max_inflight=1, on_batch=lambda r, n: sizes.append((r, n)))
        tasks = [asyncio.create_task(batcher.submit(rows(i, i + 0.5))) for i in range(20)]
        await asyncio.sleep(0.01)
        # the first request left alone; the 19 others queued behind the call in flight
        assert len(up.calls) == 1 and batcher.queued_rows == 38
        up.gate.set()
        results = await asyncio.gather(*tasks)
        assert results == [[i * 10, (i + 0.5) * 10] for i in range(20)]
        assert len(up.calls) == 2 and sizes == [(1, 2), (19, 38)]
        assert up.max_concurrent == 1

    run(main())


def test_max_rows_bounds_a_call_and_requests_are_never_split():
    async def main():
        up = FakeUpstream(auto=False)
        batcher = MicroBatcher(up.send, max_rows=5, max_inflight=1)
        first = asyncio.create_task(batcher.submit(rows(0)))
        await asyncio.sleep(0)
        others = [asyncio.create_task(batcher.submit(rows(*range(3)))) for _ in range(4)]
        big = asyncio.create_task(batcher.submit(rows(*range(7))))  # larger than max_rows: goes alone
        await asyncio.sleep(0.01)
        up.gate.set()
        await asyncio.gather(first, *others, big)
        assert [len(c) for c in up.calls] == [1, 3, 3, 3, 3, 7]
        assert big.result() == [x * 10 for x in range(7)]

    run(main())


def test_max_inflight_and_linger():
    async def main():
        up = FakeUpstream(auto=False)
        batcher = MicroBatcher(up.send, max_rows=100, max_inflight=2, max_wait=0.05)
        a = asyncio.create_task(batcher.submit(rows(1)))
        await asyncio.sleep(0.01)
        assert len(up.calls) == 1  # nothing out: leaves at once, no linger
        b = asyncio.create_task(batcher.submit(rows(2)))
        c = asyncio.create_task(batcher.submit(rows(3)))
        await asyncio.sleep(0.01)
        assert len(up.calls) == 1, "a call is out and the batch is not full: linger"
        await asyncio.sleep(0.08)
        assert len(up.calls) == 2 and up.calls[1] == rows(2, 3)  # linger bounded by max_wait
        up.gate.set()
        assert await asyncio.gather(a, b, c) == [[10], [20], [30]]
        assert up.max_concurrent == 2

    run(main())


def test_queue_full_sheds():
    async def main():
        up = FakeUpstream(auto=False)
        batcher = MicroBatcher(up.send, max_rows=2, max_inflight=1, max_queue_rows=4)
        tasks = [asyncio.create_task(batcher.submit(rows(i, i))) for i in range(3)]  # 1 out, 2 queued (4 rows)
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFull):
            await batcher.submit(rows(9))
        up.gate.set()
        await asyncio.gather(*tasks)

    run(main())


def test_errors_reach_every_request_of_the_call():
    async def main():
        up = FakeUpstream(auto=False)
        up.fail = RuntimeError("boom")
        batcher = MicroBatcher(up.send, max_rows=10, max_inflight=1)
        tasks = [asyncio.create_task(batcher.submit(rows(i))) for i in range(4)]
        await asyncio.sleep(0.01)
        up.gate.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, RuntimeError) for r in results)
        up.fail = None
        assert await batcher.submit(rows(5)) == [50]  # the batcher keeps working

    run(main())


def test_rejected_batch_is_retried_request_by_request():
    class Rejected(Exception):
        pass

    async def send(batch: list[dict]) -> list[float]:
        if any(r["x"] < 0 for r in batch):
            raise Rejected(f"bad row in a call of {len(batch)}")
        return [r["x"] for r in batch]

    async def main():
        calls = []
        batcher = MicroBatcher(
            send,
            max_rows=10,
            max_inflight=1,
            isolate=lambda e: isinstance(e, Rejected),
            on_batch=lambda r, n: calls.append(r),
        )
        blocker = asyncio.create_task(batcher.submit(rows(0)))
        await asyncio.sleep(0)
        good = asyncio.create_task(batcher.submit(rows(1)))
        bad = asyncio.create_task(batcher.submit(rows(-1)))
        good2 = asyncio.create_task(batcher.submit(rows(2)))
        res = await asyncio.gather(blocker, good, bad, good2, return_exceptions=True)
        assert res[0] == [0] and res[1] == [1] and res[3] == [2]
        assert isinstance(res[2], Rejected) and "call of 1" in str(res[2])

    run(main())


def test_cancelled_request_is_skipped_and_close_fails_the_queue():
    async def main():
        up = FakeUpstream(auto=False)
        batcher = MicroBatcher(up.send, max_rows=10, max_inflight=1)
        first = asyncio.create_task(batcher.submit(rows(1)))
        await asyncio.sleep(0)
        gone = asyncio.create_task(batcher.submit(rows(2)))
        waiting = asyncio.create_task(batcher.submit(rows(3)))
        await asyncio.sleep(0)
        gone.cancel()
        up.gate.set()
        assert await first == [10] and await waiting == [30]
        assert up.calls == [rows(1), rows(3)]

        up.gate.clear()
        out = asyncio.create_task(batcher.submit(rows(4)))
        await asyncio.sleep(0)
        queued = asyncio.create_task(batcher.submit(rows(5)))
        await asyncio.sleep(0)
        closing = asyncio.create_task(batcher.close(timeout=1))
        await asyncio.sleep(0.01)
        with pytest.raises(BatcherClosed):
            await queued
        up.gate.set()
        await closing
        assert await out == [40]
        with pytest.raises(BatcherClosed):
            await batcher.submit(rows(6))

    run(main())


def test_circuit_breaker_states():
    now = [100.0]
    changes = []
    breaker = CircuitBreaker(3, 2.0, clock=lambda: now[0], on_change=changes.append)
    for _ in range(2):
        assert breaker.allow()
        breaker.failure("refused")
    assert breaker.state == "closed"
    breaker.success()  # success resets the count
    for _ in range(3):
        assert breaker.allow()
        breaker.failure("refused")
    assert breaker.state == "open" and not breaker.allow() and breaker.retry_after() == pytest.approx(2.0)
    now[0] += 2.1
    assert breaker.allow() and breaker.state == "half_open"
    assert not breaker.allow(), "one probe at a time"
    breaker.failure("still refused")
    assert breaker.state == "open" and not breaker.allow()
    now[0] += 2.1
    assert breaker.allow()
    breaker.success()
    assert breaker.state == "closed" and breaker.allow() and breaker.retry_after() == 0
    assert changes == ["open", "half_open", "open", "half_open", "closed"]


def test_backoff_is_bounded_and_grows():
    for attempt in range(6):
        d = backoff_delay(attempt, 0.05, 0.4)
        ceiling = min(0.4, 0.05 * 2**attempt)
        assert ceiling / 2 <= d <= ceiling


def test_prediction_log_writes_parquet_by_hour(tmp_path):
    import pyarrow.parquet as pq

    lineage = Lineage(
        "fraud-detector", "3", "r" * 32, "sha256:abc", "sha256:img", ("amount", "n_tx"), ("double", "long")
    )

    async def main():
        written, dropped = [], []
        log = PredictionLog(
            tmp_path, flush_interval=0.05, max_pending_rows=5, on_written=written.append, on_dropped=dropped.append
        )
        log.start()
        ts = datetime(2026, 11, 22, 13, 5, tzinfo=UTC).timestamp()
        assert log.record(ts, "req-1", lineage, [{"amount": 1.5, "n_tx": 2}, {"amount": -1.0, "n_tx": 0}], [0.9, 0.1])
        assert log.record(ts + 3600, "req-2", lineage, [{"amount": 2.0, "n_tx": 1}], [0.5])
        assert not log.record(ts, "req-3", lineage, [{"amount": 0.0, "n_tx": 0}] * 3, [0.0] * 3)  # over the bound
        assert log.pending_rows == 3 and dropped == [3]
        await asyncio.sleep(0.2)
        await log.close()
        return written

    written = run(main())
    assert sum(written) == 3
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.parquet"))
    assert [f.rsplit("/", 1)[0] for f in files] == [
        "model=fraud-detector/date=2026-11-22/hour=13",
        "model=fraud-detector/date=2026-11-22/hour=14",
    ]
    assert not list(tmp_path.rglob("*.tmp"))
    table = pq.read_table(tmp_path / files[0]).to_pylist()
    assert [(r["request_id"], r["row"], r["prediction"], r["features"]) for r in table] == [
        ("req-1", 0, 0.9, {"amount": 1.5, "n_tx": 2}),
        ("req-1", 1, 0.1, {"amount": -1.0, "n_tx": 0}),
    ]
    assert table[0]["version"] == "3" and table[0]["image_digest"] == "sha256:img" and table[0]["run_id"] == "r" * 32
    assert str(table[0]["ts"]) == "2026-11-22 13:05:00+00:00"
