"""Benchmark the ingest worker on the embedded servers or on servers of your own.

Scenarios (see bench/README.md):

- test: the worker drains N TEST events with ten measurements each from a
  full topic. Then it measures produce-to-commit latency at a steady rate,
  and for comparison the raw write limit and a naive worker that commits one
  transaction per record.
- latency: only the steady-rate latency measurement.
- mixed: AUTO, BATCH and TEST stages with duplicates and invalid records,
  against the raw write limit for the same rows.
- scaling (--scaling): the worker's throughput and peak RSS at several N.

The report is printed and written as JSON to bench/results/<timestamp>.json.
This is a measurement, not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

# `python bench/run.py` puts bench/ first on sys.path, so the modules beside
# this file import by their plain names.
import workload
from naive_worker import run_naive
from probe_client import ProbeProcess
from publisher import Outgoing, publish_bulk, publish_paced
from raw_limit import Stage, write_limit
from report import format_report, summarize
from servers import (
    Databases,
    create_topics,
    delete_topics,
    machine_facts,
    new_prefix,
    seed,
    worker_environment,
)

from ingest_worker.embedded import EmbeddedServices, embedded_services
from ingest_worker.logs import configure_logging
from ingest_worker.settings import Settings, load_settings

RESULTS = Path(__file__).resolve().parent / "results"
SCENARIOS = ("test", "latency", "mixed")
# A phase may take this long plus one second per MIN_RATE records.
PHASE_BASE_TIMEOUT_S = 300.0
MIN_RATE = 50.0
IDLE_TIMEOUT_S = 600.0
NAIVE_TIMEOUT_S = 1800.0

_ICT_SPEC_NAMES = {name: spec for name, spec, *_ in workload.TEST_MEASUREMENTS}
_AUTO_SPEC_NAMES = {"volume_pct": "SPI_VOLUME_PCT", "height_um": "SPI_HEIGHT_UM"}
_WASH_SPEC_NAMES = {"temperature": "WASH_TEMP_C", "duration": "WASH_TIME_S"}


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(part.replace("_", "")) for part in text.split(",") if part]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated event counts such as 10000,100000, got {text}"
        ) from None
    if not sizes or min(sizes) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive event counts, got {text}")
    return sizes


def _scenarios(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown scenario {', '.join(unknown) or text!r}; choose from "
            f"{', '.join(SCENARIOS)}"
        )
    return names


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/run.py",
        description="Measure the ingest worker's throughput, latency and memory.",
    )
    parser.add_argument(
        "--scenario",
        type=_scenarios,
        default=None,
        help="comma-separated scenarios out of test, latency, mixed (default: "
        "test,mixed, or none when --scaling is given)",
    )

    parser.add_argument(
        "--events",
        type=_positive,
        default=100_000,
        help="TEST events of the test scenario, and units of the mixed scenario "
        "(default 100000)",
    )
    parser.add_argument(
        "--naive-events",
        type=int,
        default=5_000,
        help="records for the naive worker, at most --events; 0 skips it "
        "(default 5000)",
    )
    parser.add_argument(
        "--latency-seconds",
        type=float,
        default=20.0,
        help="duration of the steady-rate latency phase in seconds; 0 skips it "
        "in the test scenario (default 20)",
    )
    parser.add_argument(
        "--latency-rate",
        type=float,
        default=1_000.0,
        help="events per second of the latency phase (default 1000)",
    )
    parser.add_argument(
        "--mixed-units",
        type=_positive,
        default=None,
        help="units of the mixed scenario (default: --events)",
    )

    parser.add_argument(
        "--no-limit",
        action="store_true",
        help="skip the raw write limit",
    )
    parser.add_argument(
        "--scaling",
        type=_sizes,
        default=None,
        help="comma-separated event counts: run the test scenario's worker "
        "measurement at each, e.g. 10000,100000,1000000",
    )
    parser.add_argument(
        "--runs",
        type=_positive,
        default=1,
        help="repetitions of each measurement; the report gives median, min "
        "and max (default 1)",
    )

    parser.add_argument(
        "--partitions",
        type=_positive,
        default=3,
        help="partitions of each new topic (default 3, as `topics ensure`)",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the databases and topics of every measurement",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="JSON result file (default bench/results/<UTC timestamp>.json)",
    )

    arguments = parser.parse_args(argv)
    if arguments.scenario is None:
        arguments.scenario = [] if arguments.scaling else ["test", "mixed"]
    if arguments.latency_rate <= 0:
        parser.error(f"--latency-rate must be positive, got {arguments.latency_rate}")
    if arguments.latency_seconds < 0:
        parser.error(
            f"--latency-seconds must not be negative, got {arguments.latency_seconds}"
        )
    if "latency" in arguments.scenario and arguments.latency_seconds == 0:
        parser.error("the latency scenario needs --latency-seconds above 0")
    return arguments


def phase_timeout(records: int) -> float:
    return PHASE_BASE_TIMEOUT_S + records / MIN_RATE


def _mib(kib: int) -> float:
    return round(kib / 1024, 1)


@dataclass
class Bench:
    """State of one benchmark invocation."""

    arguments: argparse.Namespace
    services: EmbeddedServices
    databases: Databases
    log_dir: Path
    started: float = field(default_factory=time.monotonic)
    measurement: int = 0

    def progress(self, message: str) -> None:
        print(f"[{time.monotonic() - self.started:7.1f} s] {message}", flush=True)

    def next_log(self, label: str) -> Path:
        self.measurement += 1
        self.log_dir.mkdir(parents=True, exist_ok=True)
        return self.log_dir / f"{self.measurement:02d}-{label}-worker.log"

    @property
    def batch_size(self) -> int:
        environment = worker_environment(self.services, "postgresql://", "bench")
        return load_settings(environment).max_batch_records

    async def prepare(
        self, label: str, factory: dict[str, Any]
    ) -> tuple[str, str, dict[str, str], Settings]:
        """Create and seed a database and create topics.

        Returns the database name and URL, the worker's environment and its
        settings.
        """
        name, url = await self.databases.create(label)
        self.progress(f"{label}: seeding {name}")
        await seed(url, factory)
        environment = worker_environment(self.services, url, new_prefix(label))
        settings = await create_topics(environment, self.arguments.partitions)
        return name, url, environment, settings

    async def finish_topics(self, settings: Settings) -> None:
        if self.arguments.keep:
            return
        problem = await delete_topics(settings)
        if problem is not None:
            self.progress(f"topics of {settings.group_id} not deleted: {problem}")

    async def start_probe(
        self, label: str, environment: dict[str, str], phases: list[tuple[int, str]]
    ) -> ProbeProcess:
        specs = [f"{count}:{kind}" if kind else str(count) for count, kind in phases]
        timeout = sum(phase_timeout(count) for count, _ in phases) + IDLE_TIMEOUT_S
        log_path = self.next_log(label)
        self.progress(f"{label}: starting the worker (log {log_path})")
        return await ProbeProcess.start(
            environment, specs, log_path, timeout, self.progress
        )

    # -- test ---------------------------------------------------------------

    async def run_test(
        self, events: int, *, latency: bool, limit: bool, naive: int, label: str
    ) -> dict[str, Any]:
        """Run one measurement of the test scenario and return its metrics."""
        args = self.arguments
        latency_count = (
            round(args.latency_rate * args.latency_seconds) if latency else 0
        )
        factory = workload.ict_factory(events, latency_count)
        name, _, environment, settings = await self.prepare(label, factory)
        metrics: dict[str, Any] = {"events": events}
        try:
            topic = settings.topics.test
            records = (
                Outgoing(topic, envelope["sn"].encode(), orjson.dumps(envelope))
                for envelope in workload.ict_events(workload.THROUGHPUT_PREFIX, events)
            )
            published = await publish_bulk(
                settings, records, events, self.progress, f"{label} TEST events"
            )
            metrics["publish_events_per_s"] = round(published.rate)
            metrics["record_bytes_mean"] = round(published.bytes / published.records)
            self.progress(
                f"{label}: published {events:,} events in {published.duration_s:.1f} s"
            )
            phases = [(events, "")]
            if latency_count:
                phases.append((latency_count, "latency"))
            probe = await self.start_probe(label, environment, phases)
            try:
                probe.send("go")
                phase = await probe.expect("phase", phase_timeout(events), label)
                metrics.update(_throughput_metrics(phase))
                self.progress(
                    f"{label}: worker {metrics['worker_events_per_s']:,.0f} events/s"
                )
                probe.send("wait-idle")
                idle = await probe.expect("idle", IDLE_TIMEOUT_S + 30, label)
                metrics["outbox_drain_s"] = idle["outbox_drain_s"]
                if latency_count:
                    metrics.update(
                        await self._latency_phase(probe, settings, latency_count, label)
                    )
                result = await probe.expect("result", IDLE_TIMEOUT_S, label)
                metrics["worker_peak_rss_mib"] = _mib(result["peak_rss_kib"])
                metrics["worker_stop_s"] = result["stop_s"]
            finally:
                await probe.close()
            await self.databases.drop(name)
            if limit:
                metrics.update(await self._test_limit(events, label))
            if naive:
                metrics.update(await self._naive(events, naive, settings, label))
        finally:
            await self.finish_topics(settings)
        if "limit_events_per_s" in metrics:
            metrics["worker_to_limit"] = round(
                metrics["worker_events_per_s"] / metrics["limit_events_per_s"], 4
            )
        if "naive_events_per_s" in metrics:
            metrics["worker_to_naive"] = round(
                metrics["worker_events_per_s"] / metrics["naive_events_per_s"], 3
            )
        return metrics

    async def _latency_phase(
        self, probe: ProbeProcess, settings: Settings, count: int, label: str
    ) -> dict[str, Any]:
        """Publish `count` events at the steady rate and return the latency metrics."""
        topic = settings.topics.test
        records = []
        start = datetime(2026, 12, 5, tzinfo=UTC)
        for envelope in workload.ict_events(workload.LATENCY_PREFIX, count, start):
            records.append(
                Outgoing(topic, envelope["sn"].encode(), orjson.dumps(envelope))
            )

        self.progress(
            f"{label}: publishing {count:,} events at "
            f"{self.arguments.latency_rate:g} events/s"
        )
        probe.send("go")
        # Follow the probe while publishing, so progress lines appear on time.
        finished = asyncio.create_task(
            probe.expect("phase", phase_timeout(count), label)
        )
        try:
            published = await publish_paced(
                settings, records, self.arguments.latency_rate
            )
            phase = await finished
        finally:
            finished.cancel()
        latency = phase["latency_ms"]
        self.progress(
            f"{label}: latency p50 {latency['p50']:.1f} ms, p99 {latency['p99']:.1f} ms"
        )
        return {
            "latency_publish_rate": round(published.rate, 1),
            "latency_events": count,
            "latency_p50_ms": latency["p50"],
            "latency_p90_ms": latency["p90"],
            "latency_p99_ms": latency["p99"],
            "latency_p999_ms": latency["p999"],
            "latency_max_ms": latency["max"],
            "latency_mean_ms": latency["mean"],
            "latency_worker_cpu_s": phase["worker_cpu_s"],
            "latency_rejected": phase["rejected"],
        }

    async def _test_limit(self, events: int, label: str) -> dict[str, Any]:
        name, url = await self.databases.create(f"{label}_limit")
        try:
            await seed(url, workload.ict_factory(events, 0))
            self.progress(f"{label}: writing the raw limit")
            envelopes = (
                (envelope, orjson.dumps(envelope))
                for envelope in workload.ict_events(workload.THROUGHPUT_PREFIX, events)
            )
            stage = Stage(10, "DONE", 10, _ICT_SPEC_NAMES)
            (result,) = await write_limit(url, [(stage, envelopes)], self.batch_size)
        finally:
            await self.databases.drop(name)
        self.progress(f"{label}: raw limit {result.rate:,.0f} events/s")
        return {
            "limit_events_per_s": round(result.rate, 1),
            "limit_duration_s": round(result.duration_s, 3),
            "limit_transactions": result.transactions,
        }

    async def _naive(
        self, events: int, naive: int, settings: Settings, label: str
    ) -> dict[str, Any]:
        count = min(events, naive)
        name, url = await self.databases.create(f"{label}_naive")
        try:
            await seed(url, workload.ict_factory(events, 0))
            self.progress(f"{label}: naive worker on {count:,} events")
            result = await run_naive(
                settings,
                url,
                settings.topics.test,
                f"{settings.group_id}-naive",
                count,
                _ICT_SPEC_NAMES,
                10,
                NAIVE_TIMEOUT_S,
            )
        finally:
            await self.databases.drop(name)
        self.progress(f"{label}: naive {result.rate:,.0f} events/s")
        return {
            "naive_events": result.events,
            "naive_events_per_s": round(result.rate, 1),
            "naive_duration_s": round(result.duration_s, 3),
        }

    # -- latency ------------------------------------------------------------

    async def run_latency(self, label: str) -> dict[str, Any]:
        args = self.arguments
        count = round(args.latency_rate * args.latency_seconds)
        factory = workload.ict_factory(0, count)
        name, _, environment, settings = await self.prepare(label, factory)
        try:
            probe = await self.start_probe(label, environment, [(count, "latency")])
            try:
                await probe.expect("assigned", PHASE_BASE_TIMEOUT_S, label)
                metrics = await self._latency_phase(probe, settings, count, label)
                result = await probe.expect("result", IDLE_TIMEOUT_S, label)
                metrics["worker_peak_rss_mib"] = _mib(result["peak_rss_kib"])
            finally:
                await probe.close()
            await self.databases.drop(name)
        finally:
            await self.finish_topics(settings)
        return metrics

    # -- mixed --------------------------------------------------------------

    async def run_mixed(self, label: str) -> dict[str, Any]:
        units = self.arguments.mixed_units or self.arguments.events
        stages = ("AUTO", "BATCH", "TEST")
        name, _, environment, settings = await self.prepare(
            label, workload.mixed_factory(units)
        )
        metrics: dict[str, Any] = {"units": units}
        try:
            phases = [(workload.stage_records(stage, units), "") for stage in stages]
            probe: ProbeProcess | None = None
            try:
                for stage, (count, _) in zip(stages, phases, strict=True):
                    await self._publish_stage(settings, stage, units, count, label)
                    if probe is None:
                        probe = await self.start_probe(label, environment, phases)
                    self.progress(f"{label}: worker draining {stage}")
                    probe.send("go")
                    phase = await probe.expect("phase", phase_timeout(count), label)
                    metrics.update(_stage_metrics(stage.lower(), phase))
                    probe.send("wait-idle")
                    idle = await probe.expect("idle", IDLE_TIMEOUT_S + 30, label)
                    metrics[f"{stage.lower()}_outbox_drain_s"] = idle["outbox_drain_s"]
                    self.progress(
                        f"{label}: {stage} "
                        f"{metrics[f'{stage.lower()}_events_per_s']:,.0f} events/s"
                    )
                assert probe is not None
                result = await probe.expect("result", IDLE_TIMEOUT_S, label)
                metrics["worker_peak_rss_mib"] = _mib(result["peak_rss_kib"])
            finally:
                if probe is not None:
                    await probe.close()
            await self.databases.drop(name)
        finally:
            await self.finish_topics(settings)
        _mixed_totals(metrics)
        if not self.arguments.no_limit:
            metrics.update(await self._mixed_limit(units, label))
            for stage in ("auto", "batch", "test", "total"):
                metrics[f"{stage}_worker_to_limit"] = round(
                    metrics[f"{stage}_events_per_s"]
                    / metrics[f"{stage}_limit_events_per_s"],
                    4,
                )
        return metrics

    async def _publish_stage(
        self, settings: Settings, stage: str, units: int, count: int, label: str
    ) -> None:
        topic = settings.topics.topic_for(stage)  # type: ignore[arg-type]
        outgoing = (
            Outgoing(topic, record.key.encode(), orjson.dumps(record.envelope))
            for record in workload.mixed_stage(stage, units)
        )
        await publish_bulk(settings, outgoing, count, self.progress, f"{label} {stage}")

    async def _mixed_limit(self, units: int, label: str) -> dict[str, Any]:
        name, url = await self.databases.create(f"{label}_limit")
        moves = {
            "AUTO": Stage(10, "QUEUED", 20, _AUTO_SPEC_NAMES),
            "BATCH": Stage(20, "QUEUED", 30, _WASH_SPEC_NAMES),
            "TEST": Stage(30, "DONE", 30, _ICT_SPEC_NAMES),
        }
        try:
            await seed(url, workload.mixed_factory(units))
            self.progress(f"{label}: writing the raw limit")
            plan = [
                (stage, _stored(workload.mixed_stage(event_type, units)))
                for event_type, stage in moves.items()
            ]
            results = await write_limit(url, plan, self.batch_size)
        finally:
            await self.databases.drop(name)
        metrics: dict[str, Any] = {}
        for stage, result in zip(("auto", "batch", "test"), results, strict=True):
            metrics[f"{stage}_limit_events_per_s"] = round(result.rate, 1)
            metrics[f"{stage}_limit_duration_s"] = round(result.duration_s, 3)
        total_events = sum(result.events for result in results)
        total_s = sum(result.duration_s for result in results)
        metrics["total_limit_duration_s"] = round(total_s, 3)
        metrics["total_limit_events_per_s"] = round(total_events / total_s, 1)
        self.progress(
            f"{label}: raw limit {metrics['total_limit_events_per_s']:,.0f} events/s"
        )
        return metrics


def _stored(
    records: Iterable[workload.StationRecord],
) -> Iterator[tuple[dict[str, Any], bytes]]:
    for record in records:
        if record.stored:
            yield record.envelope, orjson.dumps(record.envelope)


def _throughput_metrics(phase: dict[str, Any]) -> dict[str, Any]:
    duration = phase["duration_s"]
    stored = phase["stored"]
    data_values = stored * len(workload.TEST_MEASUREMENTS)
    return {
        "worker_duration_s": round(duration, 3),
        "worker_events_per_s": round(stored / duration, 1),
        "worker_data_values_per_s": round(data_values / duration, 1),
        "worker_cpu_s": phase["worker_cpu_s"],
        "stored": stored,
        "duplicate": phase["duplicate"],
        "rejected": phase["rejected"],
        "rejected_codes": phase["rejected_codes"],
    }


def _stage_metrics(stage: str, phase: dict[str, Any]) -> dict[str, Any]:
    duration = phase["duration_s"]
    return {
        f"{stage}_records": phase["records"],
        f"{stage}_stored": phase["stored"],
        f"{stage}_duplicate": phase["duplicate"],
        f"{stage}_rejected": phase["rejected"],
        f"{stage}_rejected_codes": phase["rejected_codes"],
        f"{stage}_duration_s": round(duration, 3),
        f"{stage}_events_per_s": round(phase["stored"] / duration, 1),
        f"{stage}_records_per_s": round(phase["records"] / duration, 1),
        f"{stage}_worker_cpu_s": phase["worker_cpu_s"],
    }


def _mixed_totals(metrics: dict[str, Any]) -> None:
    stages = ("auto", "batch", "test")
    duration = sum(metrics[f"{stage}_duration_s"] for stage in stages)
    for kind in ("records", "stored", "duplicate", "rejected"):
        metrics[kind] = sum(metrics[f"{stage}_{kind}"] for stage in stages)
    metrics["total_duration_s"] = round(duration, 3)
    metrics["total_events_per_s"] = round(metrics["stored"] / duration, 1)
    metrics["total_records_per_s"] = round(metrics["records"] / duration, 1)


async def run_scenarios(bench: Bench) -> list[dict[str, Any]]:
    args = bench.arguments
    entries: list[dict[str, Any]] = []
    naive = min(args.naive_events, args.events)
    for scenario in args.scenario:
        runs = []
        for index in range(args.runs):
            label = f"{scenario}{index + 1}"
            bench.progress(f"scenario {scenario}, run {index + 1} of {args.runs}")
            if scenario == "test":
                run = await bench.run_test(
                    args.events,
                    latency=args.latency_seconds > 0,
                    limit=not args.no_limit,
                    naive=naive,
                    label=label,
                )
            elif scenario == "latency":
                run = await bench.run_latency(label)
            else:
                run = await bench.run_mixed(label)
            runs.append(run)
        entries.append(_entry(scenario, _title(scenario, args), runs))
    for size in args.scaling or ():
        runs = []
        for index in range(args.runs):
            label = f"scale{size}r{index + 1}"
            bench.progress(f"scaling N={size:,}, run {index + 1} of {args.runs}")
            runs.append(
                await bench.run_test(
                    size, latency=False, limit=False, naive=0, label=label
                )
            )
        entry = _entry("scaling", f"scaling: test scenario at N={size:,}", runs)
        entry["events"] = size
        entries.append(entry)
    return entries


def _title(scenario: str, args: argparse.Namespace) -> str:
    if scenario == "test":
        return (
            f"test: {args.events:,} TEST events with "
            f"{len(workload.TEST_MEASUREMENTS)} measurements each"
        )
    if scenario == "latency":
        return (
            f"latency: {args.latency_rate:g} TEST events/s for "
            f"{args.latency_seconds:g} s"
        )
    units = args.mixed_units or args.events
    return (
        f"mixed: {units:,} units through AUTO, BATCH ({workload.UNITS_PER_CARRIER} "
        f"units per carrier) and TEST, with 1 duplicate per "
        f"{workload.DUPLICATE_EVERY} and 1 invalid record per "
        f"{workload.INVALID_EVERY} events; events/s counts stored events"
    )


def _entry(scenario: str, title: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "scenario": scenario,
        "title": title,
        "runs": runs,
        "summary": summarize(runs),
    }


def _worker_settings(services: EmbeddedServices, partitions: int) -> dict[str, Any]:
    settings = load_settings(worker_environment(services, "postgresql://", "bench"))
    return {
        "max_batch_records": settings.max_batch_records,
        "poll_timeout_ms": settings.poll_timeout_ms,
        "db_pool_size": settings.db_pool_size,
        "session_timeout_ms": settings.session_timeout_ms,
        "enable_idempotence": settings.kafka.enable_idempotence,
        "log_level": settings.log_level,
        "partitions": partitions,
    }


async def benchmark(
    arguments: argparse.Namespace, services: EmbeddedServices, stamp: str
) -> dict[str, Any]:
    databases = Databases(services.database_url, keep=arguments.keep)
    bench = Bench(arguments, services, databases, RESULTS / f"{stamp}-logs")
    started_at = datetime.now(UTC)
    machine = await machine_facts(services)
    try:
        await databases.create_template()
        entries = await run_scenarios(bench)
    finally:
        await databases.drop_template()
    if arguments.keep:
        bench.progress(f"kept databases: {', '.join(databases.created)}")
    return {
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "started_at": started_at.isoformat(),
        "finished_at": datetime.now(UTC).isoformat(),
        "machine": machine,
        "worker_settings": _worker_settings(services, arguments.partitions),
        "options": {
            key: (str(value) if isinstance(value, Path) else value)
            for key, value in vars(arguments).items()
        },
        "scenarios": entries,
        "logs": str(bench.log_dir),
    }


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    configure_logging("WARNING", "console")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    output = arguments.output or RESULTS / f"{stamp}.json"
    with embedded_services() as services:
        document = asyncio.run(benchmark(arguments, services, stamp))
    document["output"] = str(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
    print(format_report(document))
    return 0


if __name__ == "__main__":
    sys.exit(main())
