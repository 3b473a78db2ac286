"""Ingest mappings: path expressions, timestamps and normalization of events."""

from ingest_worker.mapping.compiler import CompiledMapping, compile_mapping
from ingest_worker.mapping.model import (
    EventType,
    IngestMappingModel,
    Judge,
    Measurement,
    NormalizedEvent,
)
from ingest_worker.mapping.paths import CompiledPath, PathSyntaxError, compile_path
from ingest_worker.mapping.timestamps import format_utc, parse_epoch, parse_rfc3339

__all__ = [
    "CompiledMapping",
    "CompiledPath",
    "EventType",
    "IngestMappingModel",
    "Judge",
    "Measurement",
    "NormalizedEvent",
    "PathSyntaxError",
    "compile_mapping",
    "compile_path",
    "format_utc",
    "parse_epoch",
    "parse_rfc3339",
]
