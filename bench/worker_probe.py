"""Run the real worker in this process and report when it commits offsets.

`bench/run.py` starts this script as a subprocess with the worker's settings
in the environment. The worker is `ingest_worker.consumer.worker.Worker` with
default settings and a pool opened as `ingest-worker run` opens it, but
without the HTTP server. A subclass records the wall time of the first fetch
with records and of every offset commit.

The run is split into phases, each ending when the worker has committed a
given number of input records. Commands on standard input, one per line:

- `go`: start the next phase. Until then the worker does not fetch, so the
  parent can publish a phase's records without sharing the CPU with it.
- `wait-idle`: wait until the outbox relay has published every outbox row,
  then report `idle`.

Standard output carries JSON lines only: `assigned`, `progress` (every
PROGRESS_INTERVAL_S), `phase` at the end of each phase, `idle`, and `result`
before the process exits. Logs go to standard error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import sys
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog
from aiokafka import ConsumerRecord

from ingest_worker.consumer.batch import RecordOutcome
from ingest_worker.consumer.worker import Worker
from ingest_worker.logs import configure_logging
from ingest_worker.settings import load_settings
from ingest_worker.storage.database import create_pool

log = structlog.get_logger("bench.worker_probe")

PROGRESS_INTERVAL_S = 5.0
IDLE_POLL_S = 0.2
# The worker gets this long to finish its cycle after a failed phase.
SHUTDOWN_TIMEOUT_S = 30.0


def emit(kind: str, **fields: Any) -> None:
    """Write one JSON line to standard output."""
    line = orjson.dumps({"type": kind, **fields})
    sys.stdout.buffer.write(line + b"\n")
    sys.stdout.buffer.flush()


def memory_kib(field_name: str) -> int:
    """Return a memory figure of this process from /proc/self/status, in KiB."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    return 0


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def percentiles(samples: array[float]) -> dict[str, float] | None:
    """Return p50, p90, p99, p99.9, max and mean of the samples, interpolated."""
    if not samples:
        return None
    ordered = sorted(samples)

    def at(fraction: float) -> float:
        position = fraction * (len(ordered) - 1)
        low = int(position)
        high = min(low + 1, len(ordered) - 1)
        return ordered[low] + (ordered[high] - ordered[low]) * (position - low)

    return {
        "p50": round(at(0.50), 2),
        "p90": round(at(0.90), 2),
        "p99": round(at(0.99), 2),
        "p999": round(at(0.999), 2),
        "max": round(ordered[-1], 2),
        "mean": round(sum(ordered) / len(ordered), 2),
        "samples": len(ordered),
    }


@dataclass
class Phase:
    """A phase of the run, which ends when `target` records in total are committed."""

    index: int
    records: int
    target: int
    latency: bool
    first_fetch: float | None = None
    last_commit: float | None = None
    started_cpu_s: float = 0.0
    verdicts: Counter[str] = field(default_factory=Counter)
    codes: Counter[str] = field(default_factory=Counter)
    # Produce-to-commit latency of each record in ms, for latency phases only.
    latency_ms: array[float] = field(default_factory=lambda: array("d"))
    done: asyncio.Event = field(default_factory=asyncio.Event)


class ProbeWorker(Worker):
    """The shipped worker plus timing hooks and a gate between phases."""

    def __init__(self, *args: Any, phases: list[Phase], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.phases = phases
        self.current = 0
        self.committed = 0
        self.gate = asyncio.Event()
        self._input_topics = set(self.settings.topics.input_topics())

    @property
    def phase(self) -> Phase | None:
        return self.phases[self.current] if self.current < len(self.phases) else None

    async def run_cycle(self) -> int:
        await self.gate.wait()
        return await super().run_cycle()

    async def process_until_done(
        self, records: list[ConsumerRecord[bytes, bytes]]
    ) -> list[RecordOutcome]:
        phase = self.phase
        # The retry consumer calls this method too, but only input batches count.
        if (
            phase is not None
            and phase.first_fetch is None
            and records[0].topic in self._input_topics
        ):
            phase.first_fetch = time.time()
        return await super().process_until_done(records)

    async def _commit(self, outcomes: list[RecordOutcome]) -> None:
        await super()._commit(outcomes)
        committed_at = time.time()
        phase = self.phase
        if phase is None:
            return
        self.committed += len(outcomes)
        for outcome in outcomes:
            phase.verdicts[outcome.verdict] += 1
            if outcome.error is not None:
                phase.codes[str(outcome.error.code)] += 1
        if phase.latency:
            commit_ms = committed_at * 1000.0
            phase.latency_ms.extend(
                commit_ms - outcome.record.timestamp for outcome in outcomes
            )
        if self.committed >= phase.target:
            phase.last_commit = committed_at
            self.gate.clear()
            self.current += 1
            phase.done.set()


def phase_report(phase: Phase, worker: ProbeWorker) -> dict[str, Any]:
    duration = None
    if phase.first_fetch is not None and phase.last_commit is not None:
        duration = phase.last_commit - phase.first_fetch
    return {
        "index": phase.index,
        "records": phase.records,
        "first_fetch": phase.first_fetch,
        "last_commit": phase.last_commit,
        "duration_s": duration,
        "stored": phase.verdicts["stored"],
        "duplicate": phase.verdicts["duplicate"],
        "rejected": phase.verdicts["rejected"],
        "rejected_codes": dict(phase.codes),
        "worker_cpu_s": round(cpu_seconds() - phase.started_cpu_s, 3),
        "peak_rss_kib": memory_kib("VmHWM"),
        "rss_kib": memory_kib("VmRSS"),
        "outbox_published": worker.relay.published,
        "latency_ms": percentiles(phase.latency_ms) if phase.latency else None,
    }


async def outbox_rows(worker: ProbeWorker) -> int:
    async with worker.pool.acquire() as connection:
        return int(await connection.fetchval("SELECT count(*) FROM outbox"))


async def wait_idle(worker: ProbeWorker, timeout_s: float) -> None:
    """Report `idle` once the outbox is empty, or `idle` with a timeout flag."""
    started = time.monotonic()
    deadline = started + timeout_s
    remaining = await outbox_rows(worker)
    while remaining > 0 and time.monotonic() < deadline:
        await asyncio.sleep(IDLE_POLL_S)
        remaining = await outbox_rows(worker)
    emit(
        "idle",
        outbox_drain_s=round(time.monotonic() - started, 3),
        outbox_rows=remaining,
        timed_out=remaining > 0,
    )


async def read_commands(
    worker: ProbeWorker, stop: asyncio.Event, idle_s: float
) -> None:
    """Follow the parent's commands. The end of standard input stops the worker."""
    reader = asyncio.StreamReader()
    await asyncio.get_running_loop().connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )
    while not stop.is_set():
        line = await reader.readline()
        command = line.decode().strip()
        if not line:
            log.warning("standard input closed; stopping the worker")
            stop.set()
            return
        if command == "go":
            phase = worker.phase
            if phase is not None:
                phase.started_cpu_s = cpu_seconds()
            worker.gate.set()
        elif command == "wait-idle":
            await wait_idle(worker, idle_s)
        elif command:
            log.warning("unknown command ignored", command=command)


async def report_progress(worker: ProbeWorker, stop: asyncio.Event) -> None:
    started = time.monotonic()
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), PROGRESS_INTERVAL_S)
        emit(
            "progress",
            committed=worker.committed,
            phase=worker.current,
            elapsed_s=round(time.monotonic() - started, 1),
            rss_kib=memory_kib("VmRSS"),
        )


async def probe(arguments: argparse.Namespace) -> int:
    settings = load_settings()
    phases: list[Phase] = []
    target = 0
    for index, spec in enumerate(arguments.phase):
        count, _, kind = spec.partition(":")
        target += int(count)
        phases.append(Phase(index, int(count), target, kind == "latency"))

    pool = await create_pool(
        settings.require_database_url(), max_size=settings.db_pool_size
    )
    worker = ProbeWorker(settings, pool, phases=phases)
    stop = asyncio.Event()
    deadline = time.monotonic() + arguments.timeout_s
    exit_code = 0
    running: asyncio.Task[None] | None = None
    helpers: list[asyncio.Task[None]] = []
    reports: list[dict[str, Any]] = []
    try:
        await worker.start()
        running = asyncio.create_task(worker.run(stop), name="worker")
        helpers = [
            asyncio.create_task(read_commands(worker, stop, arguments.idle_timeout_s)),
            asyncio.create_task(report_progress(worker, stop)),
        ]
        await asyncio.wait_for(worker.assigned.wait(), arguments.timeout_s)
        emit("assigned")
        for phase in phases:
            waiters = [
                asyncio.ensure_future(phase.done.wait()),
                asyncio.ensure_future(stop.wait()),
            ]
            await asyncio.wait(
                [*waiters, running],
                timeout=max(0.0, deadline - time.monotonic()),
                return_when=asyncio.FIRST_COMPLETED,
            )
            for waiter in waiters:
                waiter.cancel()
            if running.done():
                running.result()  # raises the worker's error
                raise RuntimeError("the worker stopped before its phases ended")
            if stop.is_set():
                raise RuntimeError("standard input closed before the phases ended")
            if not phase.done.is_set():
                raise TimeoutError(
                    f"phase {phase.index} did not finish: {worker.committed} of "
                    f"{phase.target} records committed"
                )
            reports.append(phase_report(phase, worker))
            emit("phase", **reports[-1])
        stopping = time.monotonic()
        stop.set()
        # The gate is closed between phases, so open it to let the loop check stop.
        worker.gate.set()
        # The worker's own shutdown: the cycle in flight and a last relay round.
        await asyncio.wait_for(running, arguments.timeout_s)
        stop_s = time.monotonic() - stopping
        emit(
            "result",
            phases=reports,
            counts=dict(worker.counts),
            stop_s=round(stop_s, 3),
            peak_rss_kib=memory_kib("VmHWM"),
        )
    except (TimeoutError, RuntimeError) as error:
        log.error("probe failed", error=f"{type(error).__name__}: {error}")
        emit("error", message=f"{type(error).__name__}: {error}")
        exit_code = 1
    finally:
        stop.set()
        worker.gate.set()
        for helper in helpers:
            helper.cancel()
        if running is not None and not running.done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(running, SHUTDOWN_TIMEOUT_S)
        await worker.stop()
        await pool.close()
    return exit_code


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--phase",
        action="append",
        required=True,
        help="records in the phase, with ':latency' to record produce-to-commit "
        "latency; repeat for each phase in order",
    )
    parser.add_argument(
        "--timeout-s",
        type=float,
        default=3600.0,
        help="maximum run time of the whole probe, in seconds",
    )
    parser.add_argument(
        "--idle-timeout-s",
        type=float,
        default=600.0,
        help="maximum wait for an empty outbox on `wait-idle`, in seconds",
    )
    arguments = parser.parse_args()
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format or "json")
    return asyncio.run(probe(arguments))


if __name__ == "__main__":
    sys.exit(main())
