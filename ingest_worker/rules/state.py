"""The master data and shop-floor state that the rules read."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from ingest_worker.mapping import CompiledMapping

EventType = Literal["AUTO", "BATCH", "TEST"]

OPEN_RUN_STATUSES = frozenset({"AUTHORIZED", "IN_PROGRESS"})
CLOSED_RUN_STATUSES = frozenset({"COMPLETED", "CLOSED_REWORK", "SCRAPPED"})


@dataclass(frozen=True, slots=True)
class Station:
    id: int
    code: str
    station_type: str
    group_code: str | None
    line_code: str | None
    active: bool = True


@dataclass(frozen=True, slots=True)
class DataSpec:
    id: int
    name: str
    data_type: Literal["NUMBER", "TEXT", "BOOLEAN", "JSON"]
    trigger_type: str
    method: str
    is_required: bool
    spec: dict[str, Any]
    active: bool = True

    @property
    def limits(self) -> tuple[float | None, float | None]:
        low = self.spec.get("min")
        high = self.spec.get("max")
        return (
            float(low) if isinstance(low, int | float) else None,
            float(high) if isinstance(high, int | float) else None,
        )


@dataclass(frozen=True, slots=True)
class Step:
    step_no: int
    operation: str
    station_type: EventType
    station_group: str | None
    allowed_stations: tuple[str, ...] | None
    requires_fai: bool
    requires_authorization: bool
    data_specs: tuple[str, ...]
    mapping: CompiledMapping | None

    def accepts_station(self, station: Station) -> bool:
        """Tell whether the station meets this step's constraints."""
        if station.station_type != self.station_type:
            return False
        if self.allowed_stations and station.code not in self.allowed_stations:
            return False
        return not (self.station_group and station.group_code != self.station_group)


@dataclass(frozen=True, slots=True)
class RouteVersion:
    """A frozen route version with its steps in step order and compiled mappings."""

    id: int
    route_code: str
    version_no: int
    status: str
    steps: tuple[Step, ...]

    def step(self, step_no: int | None) -> Step | None:
        for step in self.steps:
            if step.step_no == step_no:
                return step
        return None

    def next_step(self, step_no: int) -> Step | None:
        for step in self.steps:
            if step.step_no > step_no:
                return step
        return None

    def candidates(self, event_type: str) -> list[Step]:
        """Steps whose station type is the event type and whose mapping fits."""
        return [
            step
            for step in self.steps
            if step.station_type == event_type
            and step.mapping is not None
            and step.mapping.event_type in (None, step.station_type)
        ]


@dataclass(slots=True)
class Run:
    id: int
    run_no: str
    status: str
    route_version_id: int
    started_at: datetime | None
    # Set when an event of the batch being judged started the run.
    started_in_batch: bool = False


@dataclass(slots=True)
class Unit:
    """A unit as the gates saw it; `version` guards the conditional move."""

    id: int
    sn: str
    run_id: int
    status: str
    current_step_no: int | None
    version: int
    # Moves applied in memory by earlier events of the same batch.
    moves: int = 0


@dataclass(slots=True)
class ShopFloor:
    """Everything loaded for one fetched batch, changed in memory as it is judged."""

    runs_by_no: dict[str, Run] = field(default_factory=dict)
    runs_by_id: dict[int, Run] = field(default_factory=dict)
    units: dict[str, Unit] = field(default_factory=dict)
    stations: dict[str, Station] = field(default_factory=dict)
    data_specs: dict[str, DataSpec] = field(default_factory=dict)
    route_versions: dict[int, RouteVersion] = field(default_factory=dict)

    def add_run(self, run: Run) -> None:
        self.runs_by_no[run.run_no] = run
        self.runs_by_id[run.id] = run
