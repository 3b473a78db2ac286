"""Summaries over repeated runs and the printed report."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import Any

Summary = dict[str, dict[str, float]]


def summarize(runs: Sequence[dict[str, Any]]) -> Summary:
    """Return median, min and max of every numeric metric over the runs."""
    keys: list[str] = []
    for run in runs:
        for key, value in run.items():
            numeric = isinstance(value, int | float) and not isinstance(value, bool)
            if numeric and key not in keys:
                keys.append(key)
    summary: Summary = {}
    for key in keys:
        values = [
            run[key]
            for run in runs
            if isinstance(run.get(key), int | float) and run.get(key) is not None
        ]
        if values:
            summary[key] = {
                "median": statistics.median(values),
                "min": min(values),
                "max": max(values),
                "runs": len(values),
            }
    return summary


def _number(value: float, digits: int) -> str:
    if digits == 0:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def value_text(summary: Summary, key: str, digits: int = 0, unit: str = "") -> str:
    """Format one metric: the value, or `median [min..max]` over several runs."""
    entry = summary.get(key)
    if entry is None:
        return "n/a"
    suffix = f" {unit}" if unit else ""
    if entry["runs"] == 1:
        return _number(entry["median"], digits) + suffix
    return (
        f"{_number(entry['median'], digits)} [{_number(entry['min'], digits)}.."
        f"{_number(entry['max'], digits)}]{suffix}"
    )


def _lines_test(summary: Summary, options: dict[str, Any]) -> list[str]:
    def show(key: str, digits: int = 0, unit: str = "") -> str:
        return value_text(summary, key, digits, unit)

    lines = [
        f"  worker        {show('worker_events_per_s', 0, 'events/s')}",
        f"                {show('worker_data_values_per_s', 0, 'data values/s')}",
        f"                {show('worker_duration_s', 2, 's')} from first fetch to "
        "last commit",
        f"                peak RSS {show('worker_peak_rss_mib', 1, 'MiB')}, "
        f"worker CPU {show('worker_cpu_s', 1, 's')}",
        f"                outbox empty {show('outbox_drain_s', 2, 's')} after the "
        "last commit",
    ]
    if "latency_p50_ms" in summary:
        lines += [
            f"  latency       at {show('latency_publish_rate', 0, 'events/s')} for "
            f"{options['latency_seconds']:g} s: p50 {show('latency_p50_ms', 1, 'ms')}",
            f"                p90 {show('latency_p90_ms', 1, 'ms')}, "
            f"p99 {show('latency_p99_ms', 1, 'ms')}, "
            f"max {show('latency_max_ms', 1, 'ms')}",
        ]
    if "limit_events_per_s" in summary:
        lines.append(f"  raw limit     {show('limit_events_per_s', 0, 'events/s')}")
    if "naive_events_per_s" in summary:
        lines.append(
            f"  naive         {show('naive_events_per_s', 0, 'events/s')} "
            f"on {show('naive_events')} events"
        )
    if "worker_to_limit" in summary:
        lines.append(f"  worker/limit  {show('worker_to_limit', 3)}")
    if "worker_to_naive" in summary:
        lines.append(f"  worker/naive  {show('worker_to_naive', 2)}")
    return lines


def _lines_latency(summary: Summary, options: dict[str, Any]) -> list[str]:
    def show(key: str, digits: int = 0, unit: str = "") -> str:
        return value_text(summary, key, digits, unit)

    return [
        f"  published     {show('latency_publish_rate', 0, 'events/s')} for "
        f"{options['latency_seconds']:g} s",
        f"  latency       p50 {show('latency_p50_ms', 1, 'ms')}, "
        f"p90 {show('latency_p90_ms', 1, 'ms')}",
        f"                p99 {show('latency_p99_ms', 1, 'ms')}, "
        f"max {show('latency_max_ms', 1, 'ms')}",
        f"  peak RSS      {show('worker_peak_rss_mib', 1, 'MiB')}",
    ]


def _lines_mixed(summary: Summary, options: dict[str, Any]) -> list[str]:
    def show(key: str, digits: int = 0, unit: str = "") -> str:
        return value_text(summary, key, digits, unit)

    lines = []
    for stage in ("auto", "batch", "test", "total"):
        lines += [
            f"  {stage:<6}        worker {show(f'{stage}_events_per_s', 0, 'events/s')}"
            f" ({show(f'{stage}_records_per_s', 0, 'records/s')}), "
            f"{show(f'{stage}_duration_s', 2, 's')}",
            f"                raw limit {show(f'{stage}_limit_events_per_s', 0)} "
            f"events/s, worker/limit {show(f'{stage}_worker_to_limit', 3)}",
        ]
    lines += [
        f"  records       {show('records')} = {show('stored')} stored + "
        f"{show('duplicate')} duplicates + {show('rejected')} rejected",
        f"  peak RSS      {show('worker_peak_rss_mib', 1, 'MiB')}",
    ]
    return lines


def _lines_scaling(summary: Summary, options: dict[str, Any]) -> list[str]:
    def show(key: str, digits: int = 0, unit: str = "") -> str:
        return value_text(summary, key, digits, unit)

    return [
        f"  worker        {show('worker_events_per_s', 0, 'events/s')}, "
        f"{show('worker_data_values_per_s', 0, 'data values/s')}",
        f"                {show('worker_duration_s', 2, 's')}, "
        f"peak RSS {show('worker_peak_rss_mib', 1, 'MiB')}",
    ]


_SECTIONS: dict[str, Callable[[Summary, dict[str, Any]], list[str]]] = {
    "test": _lines_test,
    "latency": _lines_latency,
    "mixed": _lines_mixed,
    "scaling": _lines_scaling,
}


def format_report(document: dict[str, Any]) -> str:
    """Return the printed report of a finished benchmark document."""
    machine = document["machine"]
    settings = document["worker_settings"]
    lines = [
        "",
        "ingest-worker benchmark",
        f"command     {document['command']}",
        f"machine     {machine['nproc']} CPUs ({machine['cpu_model']}), "
        f"{machine['memory_total']} memory, Linux {machine['kernel']}",
        f"software    Python {machine['python']}, PostgreSQL {machine['postgresql']} "
        f"({machine['database']}), broker {machine['broker']}",
        f"worker      commit {machine['git_commit']}"
        + (" with uncommitted changes" if machine["git_tracked_changes"] else ""),
        f"settings    {', '.join(f'{k}={v}' for k, v in settings.items())}",
    ]
    options = document["options"]
    if options["runs"] > 1:
        lines.append(f"values      median [min..max] of {options['runs']} runs")
    for entry in document["scenarios"]:
        lines.append("")
        lines.append(entry["title"])
        lines += _SECTIONS[entry["scenario"]](entry["summary"], options)
    lines.append("")
    lines.append(f"written to {document['output']}")
    return "\n".join(lines)
