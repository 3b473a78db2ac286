"""Master data seeding: load a factory YAML file and write it to PostgreSQL.

`load_factory` and `parse_factory` validate a file completely, including every
reference between its entries and every ingestMapping, before the database is
touched. `seed_factory` then writes the factory in one transaction, keyed by
natural keys, so seeding the same file again changes nothing.

What a second seed of a changed file does, by kind:

- lines, station groups, stations, data specs and routes are inserted or
  updated to match the file;
- route versions are immutable: a stored version must have the same content
  hash, and only its status may move forward (DRAFT, READY, RETIRED);
- runs and units are inserted when missing. Their production state belongs to
  the worker, so an existing unit is never changed, and an existing run only
  takes the file's work order number and a promotion from PREP to AUTHORIZED.

Nothing is ever deleted: an entry removed from the file stays in the database.
"""

from __future__ import annotations

import hashlib
import reprlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn

import asyncpg
import orjson
import structlog
import yaml
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from ingest_worker.errors import MappingDefinitionError, MasterDataError
from ingest_worker.mapping import compile_mapping

__all__ = [
    "MASTER_DATA_CHANNEL",
    "MAX_UNITS_PER_RANGE",
    "DataSpec",
    "Factory",
    "Line",
    "Route",
    "RouteStep",
    "RouteVersion",
    "Run",
    "SeedReport",
    "SnRange",
    "Station",
    "StationGroup",
    "UnitEntry",
    "load_factory",
    "parse_factory",
    "seed_factory",
]

log = structlog.get_logger(__name__)

# Channel of the NOTIFY sent by every successful seed, so that running workers
# can refresh their master data caches.
MASTER_DATA_CHANNEL = "ingest_master_data"
MAX_UNITS_PER_RANGE = 1_000_000

# Any 64-bit number fixed for this purpose. The transaction-level advisory lock
# serializes concurrent seeds, so their existence checks and writes never interleave.
_SEED_LOCK_ID = 0x1D6E57_5EED
# Problems listed in one MasterDataError; the rest are counted.
_MAX_PROBLEMS_SHOWN = 50
_MAX_ECHO = 60

_SECTIONS = (
    "lines",
    "stationGroups",
    "stations",
    "dataSpecs",
    "routes",
    "runs",
    "units",
)
# Report kinds in the order in which they are written.
_KINDS = (
    "lines",
    "stationGroups",
    "stations",
    "dataSpecs",
    "routes",
    "routeVersions",
    "routeSteps",
    "runs",
    "units",
)
_ROUTE_VERSION_STATUS_ORDER = {"DRAFT": 0, "READY": 1, "RETIRED": 2}

StationType = Literal["AUTO", "BATCH", "TEST"]
DataType = Literal["NUMBER", "TEXT", "BOOLEAN", "JSON"]
TriggerType = Literal["EVENT", "TIME", "EACH_UNIT", "EACH_CARRIER"]
DataSpecMethod = Literal["AUTO", "MANUAL"]
RouteVersionStatus = Literal["DRAFT", "READY", "RETIRED"]
RunStatus = Literal[
    "PREP", "AUTHORIZED", "IN_PROGRESS", "COMPLETED", "CLOSED_REWORK", "SCRAPPED"
]
UnitStatus = Literal[
    "QUEUED", "IN_STATION", "DONE", "OUT_FAILED", "SCRAPPED", "ON_HOLD"
]

# A code, name or number that other entries refer to.
Key = Annotated[str, Field(min_length=1)]

_repr = reprlib.Repr()
_repr.maxstring = _MAX_ECHO
_repr.maxother = _MAX_ECHO


# ---------------------------------------------------------------------------
# File models
# ---------------------------------------------------------------------------


class _FileModel(BaseModel):
    """Base of the file models: camelCase keys, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True, alias_generator=to_camel)


def _json_compatible(value: Any) -> Any:
    """Return `value` as JSON would store it, or raise ValueError.

    YAML can produce values that JSON cannot hold, such as non-string keys, so a
    value stored in a jsonb column is checked here rather than in the database.
    """
    try:
        return orjson.loads(orjson.dumps(value))
    except TypeError as error:
        raise ValueError(f"must contain only JSON values: {error}") from None


class Line(_FileModel):
    """A production line."""

    code: Key
    name: str | None = None


class StationGroup(_FileModel):
    """A group of interchangeable stations, referred to by route steps."""

    code: Key
    line: Key | None = None


class Station(_FileModel):
    """A machine or test station that publishes events."""

    code: Key
    line: Key | None = None
    group: Key | None = None
    station_type: StationType
    active: bool = True


class DataSpec(_FileModel):
    """A named value that stations report, with its type and limits."""

    name: Key
    data_type: DataType
    trigger_type: TriggerType
    method: DataSpecMethod
    item_type: str | None = None
    is_required: bool = False
    spec: dict[str, Any] = Field(default_factory=dict)
    active: bool = True

    @field_validator("spec")
    @classmethod
    def _check_limits(cls, spec: dict[str, Any]) -> dict[str, Any]:
        spec = _json_compatible(spec)
        for bound in ("min", "max"):
            value = spec.get(bound)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float)
            ):
                raise ValueError(f"{bound} must be a number, got {_echo(value)}")
        low, high = spec.get("min"), spec.get("max")
        if low is not None and high is not None and low > high:
            raise ValueError(f"min {low} is greater than max {high}")
        unit = spec.get("unit")
        if unit is not None and not isinstance(unit, str):
            raise ValueError(f"unit must be a string, got {_echo(unit)}")
        return spec


class RouteStep(_FileModel):
    """One step of a route version.

    `ingest_mapping` is the mapping as given in the file. `parse_factory`
    validates it with `compile_mapping`, and the seed stores it unchanged as jsonb.
    """

    step_no: int
    operation: Key
    station_type: StationType
    station_group: Key | None = None
    allowed_stations: Annotated[list[Key], Field(min_length=1)] | None = None
    requires_fai: bool = Field(default=False, alias="requiresFAI")
    requires_authorization: bool = False
    data_specs: list[Key] = Field(default_factory=list)
    ingest_mapping: dict[str, Any] | None = None

    @field_validator("allowed_stations", "data_specs")
    @classmethod
    def _reject_repeats(cls, values: list[str] | None) -> list[str] | None:
        repeated = [
            value for value, count in Counter(values or []).items() if count > 1
        ]
        if repeated:
            raise ValueError(f"{', '.join(map(repr, repeated))} listed more than once")
        return values

    @field_validator("ingest_mapping")
    @classmethod
    def _check_mapping_json(cls, mapping: dict[str, Any] | None) -> Any:
        return None if mapping is None else _json_compatible(mapping)


class RouteVersion(_FileModel):
    """A numbered, immutable version of a route with its steps."""

    version_no: Annotated[int, Field(ge=1)]
    status: RouteVersionStatus
    compiled_at: AwareDatetime | None = None
    steps: Annotated[list[RouteStep], Field(min_length=1)]

    @field_validator("compiled_at")
    @classmethod
    def _to_utc(cls, moment: datetime | None) -> datetime | None:
        return None if moment is None else moment.astimezone(UTC)

    def content_hash(self) -> str:
        """Return the SHA-256 hex digest of the version's content.

        The content is canonical JSON (sorted keys, no whitespace) of compiledAt
        and the steps in stepNo order with every field that differs from its
        default, including the raw ingestMapping. Status is left out because it
        may move forward on a stored version, and defaults are left out so that
        spelling out a default value does not change the hash.
        """
        content = {
            "compiledAt": self.compiled_at,
            "steps": [
                step.model_dump(mode="json", by_alias=True, exclude_defaults=True)
                for step in sorted(self.steps, key=lambda step: step.step_no)
            ],
        }
        canonical = orjson.dumps(content, option=orjson.OPT_SORT_KEYS)
        return hashlib.sha256(canonical).hexdigest()


class Route(_FileModel):
    """A route: the ordered steps that a product passes, in numbered versions."""

    code: Key
    source_system: str | None = None
    source_key: str | None = None
    versions: list[RouteVersion] = Field(default_factory=list)


class Run(_FileModel):
    """A production run bound to one route version."""

    run_no: Key
    wo_no: str | None = None
    route: Key
    version_no: int
    status: RunStatus = "PREP"
    started_at: AwareDatetime | None = None


class SnRange(_FileModel):
    """A range of serial numbers: `prefix` + the number zero-padded to `width`."""

    prefix: str = ""
    first: Annotated[int, Field(ge=0, alias="from")]
    last: Annotated[int, Field(ge=0, alias="to")]
    width: Annotated[int, Field(ge=1, le=64)] = 1

    @model_validator(mode="after")
    def _check_bounds(self) -> SnRange:
        if self.first > self.last:
            raise ValueError(
                f"from {self.first} is greater than to {self.last}; swap them"
            )
        if self.count > MAX_UNITS_PER_RANGE:
            raise ValueError(
                f"covers {self.count} units, more than the maximum of "
                f"{MAX_UNITS_PER_RANGE}; split it into several ranges"
            )
        if len(str(self.last)) > self.width:
            raise ValueError(
                f"to {self.last} has more than width {self.width} digits; "
                "raise width so that every serial number has the same length"
            )
        return self

    @property
    def count(self) -> int:
        return self.last - self.first + 1

    def serial_number(self, number: int) -> str:
        return f"{self.prefix}{number:0{self.width}d}"

    def serial_numbers(self) -> list[str]:
        """Return the serial numbers of the range in ascending order."""
        return [self.serial_number(n) for n in range(self.first, self.last + 1)]

    def describe(self) -> str:
        """Return the range as `first..last` serial numbers, for messages."""
        return f"{self.serial_number(self.first)}..{self.serial_number(self.last)}"


class UnitEntry(_FileModel):
    """One unit (`sn`) or a numbered range of units (`snRange`) of a run.

    A missing currentStepNo means the first step of the run's route version.
    """

    sn: Key | None = None
    sn_range: SnRange | None = None
    run: Key
    status: UnitStatus = "QUEUED"
    current_step_no: int | None = None

    @model_validator(mode="after")
    def _require_one_form(self) -> UnitEntry:
        if (self.sn is None) == (self.sn_range is None):
            raise ValueError("give either sn or snRange, not both or neither")
        return self

    def serial_numbers(self) -> list[str]:
        if self.sn is not None:
            return [self.sn]
        assert self.sn_range is not None
        return self.sn_range.serial_numbers()

    def describe(self) -> str:
        if self.sn is not None:
            return self.sn
        assert self.sn_range is not None
        return self.sn_range.describe()


class Factory(_FileModel):
    """The master data of one factory file, validated by `parse_factory`."""

    lines: list[Line] = Field(default_factory=list)
    station_groups: list[StationGroup] = Field(default_factory=list)
    stations: list[Station] = Field(default_factory=list)
    data_specs: list[DataSpec] = Field(default_factory=list)
    routes: list[Route] = Field(default_factory=list)
    runs: list[Run] = Field(default_factory=list)
    units: list[UnitEntry] = Field(default_factory=list)

    @field_validator("*", mode="before")
    @classmethod
    def _empty_section(cls, value: Any) -> Any:
        # `stations:` with nothing under it is an empty section in YAML terms.
        return [] if value is None else value

    def route_version(self, route_code: str, version_no: int) -> RouteVersion | None:
        for route in self.routes:
            if route.code != route_code:
                continue
            for version in route.versions:
                if version.version_no == version_no:
                    return version
        return None

    def unit_count(self) -> int:
        return sum(
            entry.sn_range.count if entry.sn_range is not None else 1
            for entry in self.units
        )


# ---------------------------------------------------------------------------
# Loading and validation
# ---------------------------------------------------------------------------


def load_factory(path: str | Path) -> Factory:
    """Read a factory YAML file and validate it with `parse_factory`.

    Raises MasterDataError when the file cannot be read, is not valid YAML or
    fails validation. Every problem of the file is listed with its location.
    """
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise MasterDataError(f"{source}: cannot read the file: {error}") from error
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise MasterDataError(f"{source}: invalid YAML: {error}") from error
    return parse_factory(document, source=source)


def parse_factory(document: Any, source: str = "<memory>") -> Factory:
    """Validate a factory document (the parsed YAML) and return it as a Factory.

    Checks the shape of every entry, unique natural keys, every reference
    between entries (a file must be complete in itself), every ingestMapping
    (with `compile_mapping`) and the unit serial numbers. Raises one
    MasterDataError listing every problem as `SOURCE: LOCATION: PROBLEM`.
    """
    if document is None:
        _raise_problems(source, ["the file is empty; expected sections such as lines"])
    if not isinstance(document, dict):
        _raise_problems(
            source,
            [
                f"expected a mapping of sections ({', '.join(_SECTIONS)}), got "
                f"{_type_name(document)}"
            ],
        )
    try:
        factory = Factory.model_validate(document)
    except ValidationError as error:
        _raise_problems(source, _describe_validation_error(error, document))
    problems = _check_factory(factory)
    if problems:
        _raise_problems(source, problems)
    return factory


def _raise_problems(source: str, problems: Sequence[str]) -> NoReturn:
    listed = [f"{source}: {problem}" for problem in problems[:_MAX_PROBLEMS_SHOWN]]
    hidden = len(problems) - len(listed)
    if hidden > 0:
        listed.append(f"{source}: {hidden} more problems not shown")
    raise MasterDataError("\n".join(listed))


def _echo(value: Any) -> str:
    return _repr.repr(value)


def _type_name(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, str):
        return f"the string {_echo(value)}"
    return f"{type(value).__name__} {_echo(value)}"


def _describe_validation_error(error: ValidationError, document: dict) -> list[str]:
    problems = []
    for detail in error.errors(include_url=False):
        label, rest = _entry_label(document, detail["loc"])
        location = _format_location(rest)
        message = _plain_message(detail)
        parts = [part for part in (label, location) if part]
        problems.append(f"{': '.join(parts)}: {message}" if parts else message)
    return problems


def _format_location(location: Sequence[int | str]) -> str:
    text = ""
    for part in location:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text.lstrip(".")


def _plain_message(detail: Mapping[str, Any]) -> str:
    kind = detail["type"]
    value = detail.get("input")
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        return "unknown field; remove it or correct its spelling"
    if kind == "value_error":
        return str(detail["msg"]).removeprefix("Value error, ")
    if kind == "literal_error":
        return f"invalid value {_echo(value)}; expected {detail['ctx']['expected']}"
    if kind == "string_type":
        hint = "; quote it in YAML" if isinstance(value, bool | int | float) else ""
        return f"must be a string, got {_type_name(value)}{hint}"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "too_short":
        return "must contain at least one entry"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return f"must be a mapping, got {_type_name(value)}"
    if kind == "list_type":
        return f"must be a list, got {_type_name(value)}"
    return f"{detail['msg']}, got {_echo(value)}"


def _raw(container: Any, key: str | int) -> Any:
    """Return container[key] from the raw document, or None when it is absent."""
    if isinstance(key, int):
        ok = isinstance(container, list) and -len(container) <= key < len(container)
        return container[key] if ok else None
    return container.get(key) if isinstance(container, dict) else None


def _entry_label(
    document: dict, location: Sequence[int | str]
) -> tuple[str, Sequence[int | str]]:
    """Split a validation location into an entry label and the field inside it.

    ("stations", 3, "group") becomes ("stations[3] AOI-A2", ("group",)), and a
    location inside a route step names the route code, versionNo and stepNo.
    """
    if len(location) < 2 or not isinstance(location[1], int):
        return "", location
    section, index = location[0], location[1]
    entry = _raw(_raw(document, str(section)), index)
    label = f"{section}[{index}]"
    name_key = {"dataSpecs": "name", "runs": "runNo"}.get(str(section), "code")
    if section == "units":
        name = _raw(entry, "sn") or _describe_raw_range(_raw(entry, "snRange"))
    else:
        name = _raw(entry, name_key)
    if isinstance(name, str | int):
        label += f" {name}"
    rest = location[2:]
    if section != "routes":
        return label, rest
    for child, key, word in (
        ("versions", "versionNo", "version"),
        ("steps", "stepNo", "step"),
    ):
        if len(rest) < 2 or rest[0] != child or not isinstance(rest[1], int):
            break
        entry = _raw(_raw(entry, child), rest[1])
        number = _raw(entry, key)
        label += (
            f" {word} {number}" if isinstance(number, int) else f" {child}[{rest[1]}]"
        )
        rest = rest[2:]
    return label, rest


def _describe_raw_range(raw: Any) -> str | None:
    try:
        return SnRange.model_validate(raw).describe()
    except ValidationError:
        return None


def _route_label(index: int, route: Route, version: RouteVersion | None = None) -> str:
    label = f"routes[{index}] {route.code}"
    return label if version is None else f"{label} version {version.version_no}"


def _missing(field_name: str, value: str, section: str) -> str:
    return (
        f"{field_name} {value!r} is not defined in {section}; "
        f"add it to {section} or correct the {field_name}"
    )


def _duplicates(section: str, keys: Sequence[str], field_name: str) -> list[str]:
    first_index: dict[str, int] = {}
    problems = []
    for index, key in enumerate(keys):
        if key in first_index:
            problems.append(
                f"{section}[{index}] {key}: {field_name} {key!r} is already used by "
                f"{section}[{first_index[key]}]; each {field_name} must be unique"
            )
        else:
            first_index[key] = index
    return problems


def _check_factory(factory: Factory) -> list[str]:
    problems: list[str] = []
    problems += _duplicates("lines", [line.code for line in factory.lines], "code")
    problems += _duplicates(
        "stationGroups", [group.code for group in factory.station_groups], "code"
    )
    problems += _duplicates(
        "stations", [station.code for station in factory.stations], "code"
    )
    problems += _duplicates(
        "dataSpecs", [spec.name for spec in factory.data_specs], "name"
    )
    problems += _duplicates("routes", [route.code for route in factory.routes], "code")
    problems += _duplicates("runs", [run.run_no for run in factory.runs], "runNo")
    problems += _check_stations(factory)
    problems += _check_routes(factory)
    problems += _check_runs(factory)
    problems += _check_units(factory)
    return problems


def _check_stations(factory: Factory) -> list[str]:
    lines = {line.code for line in factory.lines}
    group_lines = {group.code: group.line for group in factory.station_groups}
    problems = []
    for index, group in enumerate(factory.station_groups):
        if group.line is not None and group.line not in lines:
            problems.append(
                f"stationGroups[{index}] {group.code}: "
                + _missing("line", group.line, "lines")
            )
    for index, station in enumerate(factory.stations):
        label = f"stations[{index}] {station.code}"
        if station.line is not None and station.line not in lines:
            problems.append(f"{label}: " + _missing("line", station.line, "lines"))
        if station.group is None:
            continue
        if station.group not in group_lines:
            problems.append(
                f"{label}: " + _missing("group", station.group, "stationGroups")
            )
            continue
        group_line = group_lines[station.group]
        if station.line and group_line and station.line != group_line:
            problems.append(
                f"{label}: group {station.group!r} belongs to line {group_line!r}, "
                f"not {station.line!r}; move the station or the group to one line"
            )
    return problems


def _check_routes(factory: Factory) -> list[str]:
    problems = []
    for index, route in enumerate(factory.routes):
        seen: dict[int, int] = {}
        for version_index, version in enumerate(route.versions):
            if version.version_no in seen:
                problems.append(
                    f"{_route_label(index, route)}: versionNo {version.version_no} "
                    f"is listed twice (versions[{seen[version.version_no]}] and "
                    f"versions[{version_index}]); each versionNo must be unique"
                )
                continue
            seen[version.version_no] = version_index
            problems += _check_steps(
                factory, _route_label(index, route, version), version
            )
    return problems


def _check_steps(
    factory: Factory, version_label: str, version: RouteVersion
) -> list[str]:
    groups = {group.code for group in factory.station_groups}
    station_types = {station.code: station.station_type for station in factory.stations}
    spec_names = {spec.name for spec in factory.data_specs}
    problems = []
    step_numbers: set[int] = set()
    for step in version.steps:
        label = f"{version_label} step {step.step_no}"
        if step.step_no in step_numbers:
            problems.append(
                f"{label}: stepNo {step.step_no} is listed twice in this version; "
                "each stepNo must be unique within a version"
            )
        step_numbers.add(step.step_no)
        if step.station_group is not None and step.station_group not in groups:
            problems.append(
                f"{label}: "
                + _missing("stationGroup", step.station_group, "stationGroups")
            )
        for code in step.allowed_stations or []:
            if code not in station_types:
                problems.append(
                    f"{label}: allowedStations: "
                    + _missing("station", code, "stations")
                )
            elif station_types[code] != step.station_type:
                log.warning(
                    "allowed station can never pass this step: its station type "
                    "differs from the step's",
                    step=label,
                    station=code,
                    station_type=station_types[code],
                    step_station_type=step.station_type,
                )
        for name in step.data_specs:
            if name not in spec_names:
                problems.append(
                    f"{label}: dataSpecs: " + _missing("data spec", name, "dataSpecs")
                )
        if step.ingest_mapping is not None:
            problems += _check_mapping(label, step)
    return problems


def _check_mapping(label: str, step: RouteStep) -> list[str]:
    mapping = step.ingest_mapping
    assert mapping is not None
    try:
        compile_mapping(mapping)
    except MappingDefinitionError as error:
        field_name = "ingestMapping"
        if error.field and error.field != "ingestMapping":
            field_name += f".{error.field}"
        return [f"{label}: {field_name}: {error.reason}"]
    mapped_type = mapping.get("eventType")
    if mapped_type is not None and mapped_type != step.station_type:
        # Such a mapping is never chosen, and a frozen route version could not
        # be corrected later, so the file is rejected now.
        return [
            f"{label}: ingestMapping.eventType: {mapped_type} differs from the "
            f"step's stationType {step.station_type}; make them equal or drop "
            "the mapping's eventType"
        ]
    spec_map = mapping.get("dataSpecMap") or {}
    unbound = sorted(
        {name for name in spec_map.values() if name not in step.data_specs}
    )
    if unbound:
        log.warning(
            "ingest mapping maps measurements to data specs that the step does not "
            "list, so their values will not be stored",
            step=label,
            data_specs=unbound,
        )
    return []


def _check_runs(factory: Factory) -> list[str]:
    routes = {route.code for route in factory.routes}
    problems = []
    for index, run in enumerate(factory.runs):
        label = f"runs[{index}] {run.run_no}"
        if run.route not in routes:
            problems.append(f"{label}: " + _missing("route", run.route, "routes"))
        elif factory.route_version(run.route, run.version_no) is None:
            problems.append(
                f"{label}: route {run.route!r} has no version {run.version_no} in "
                "routes; add the version or correct the versionNo"
            )
    return problems


def _check_units(factory: Factory) -> list[str]:
    run_versions = {
        run.run_no: factory.route_version(run.route, run.version_no)
        for run in factory.runs
    }
    problems = []
    for index, entry in enumerate(factory.units):
        label = f"units[{index}] {entry.describe()}"
        if entry.run not in run_versions:
            problems.append(f"{label}: " + _missing("run", entry.run, "runs"))
            continue
        version = run_versions[entry.run]
        if version is None or entry.current_step_no is None:
            continue
        step_numbers = sorted(step.step_no for step in version.steps)
        if entry.current_step_no not in step_numbers:
            problems.append(
                f"{label}: currentStepNo {entry.current_step_no} is not a step of "
                f"the route version of run {entry.run!r} (steps "
                f"{', '.join(map(str, step_numbers))}); use one of them"
            )
    problems += _check_serial_numbers(factory.units)
    return problems


def _check_serial_numbers(entries: Sequence[UnitEntry]) -> list[str]:
    """Report serial numbers listed twice, once per pair of entries."""
    owner: dict[str, int] = {}
    problems = []
    for index, entry in enumerate(entries):
        repeats: Counter[int] = Counter()
        example: dict[int, str] = {}
        # A range never repeats a number, so a repeat is always in an earlier entry.
        for sn in entry.serial_numbers():
            earlier = owner.setdefault(sn, index)
            if earlier != index:
                repeats[earlier] += 1
                example.setdefault(earlier, sn)
        for earlier, count in repeats.items():
            repeated = (
                "1 serial number is" if count == 1 else f"{count} serial numbers are"
            )
            problems.append(
                f"units[{index}] {entry.describe()}: {repeated} already listed in "
                f"units[{earlier}], for example {example[earlier]!r}; list each sn once"
            )
    return problems


# ---------------------------------------------------------------------------
# Seeding
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SeedReport:
    """Counts of one seed: kind (`stations`, `units` ...) to action to count.

    The actions are `inserted`, `updated` and `unchanged`. A route version whose
    status moved forward counts as updated, and so does a run that took a new
    work order number or was promoted from PREP to AUTHORIZED.
    """

    counts: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        """Whether the seed inserted or updated anything."""
        return any(
            actions["inserted"] or actions["updated"]
            for actions in self.counts.values()
        )

    def summary(self) -> str:
        """Return one line per kind: `stations: 1 inserted, 0 updated, 5 unchanged`."""
        return "\n".join(
            f"{kind}: {actions['inserted']} inserted, {actions['updated']} updated, "
            f"{actions['unchanged']} unchanged"
            for kind, actions in self.counts.items()
        )


def _counts(total: int, inserted: int = 0, updated: int = 0) -> dict[str, int]:
    return {
        "inserted": inserted,
        "updated": updated,
        "unchanged": total - inserted - updated,
    }


async def seed_factory(connection: asyncpg.Connection, factory: Factory) -> SeedReport:
    """Write a validated factory to the database in one transaction.

    Takes a transaction-level advisory lock so that concurrent seeds run one
    after the other, and sends `NOTIFY ingest_master_data` before the commit,
    which PostgreSQL delivers only if the transaction commits. Raises
    MasterDataError, with nothing written, when the file contradicts the
    database: a changed route version under a stored number, a route version
    status moving back, a stored run on another route version, or a stored
    unit in another run. Inside a caller's transaction the seed runs as a
    savepoint, and the notification goes out with the caller's commit.
    `connection` must use the jsonb codec of `ingest_worker.storage.database.connect`.
    """
    counts: dict[str, dict[str, int]] = {}
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock($1)", _SEED_LOCK_ID)
        counts["lines"] = await _upsert_lines(connection, factory.lines)
        counts["stationGroups"] = await _upsert_station_groups(
            connection, factory.station_groups
        )
        counts["stations"] = await _upsert_stations(connection, factory.stations)
        counts["dataSpecs"] = await _upsert_data_specs(connection, factory.data_specs)
        counts["routes"] = await _upsert_routes(connection, factory.routes)
        counts["routeVersions"], counts["routeSteps"] = await _seed_route_versions(
            connection, factory.routes
        )
        counts["runs"] = await _seed_runs(connection, factory.runs)
        counts["units"] = await _seed_units(connection, factory)
        await connection.execute(f"NOTIFY {MASTER_DATA_CHANNEL}")
    for kind in _KINDS:
        log.info("master data seeded", kind=kind, **counts[kind])
    return SeedReport(counts)


def _upsert_counts(rows: Sequence[asyncpg.Record], total: int) -> dict[str, int]:
    # The upserts return only the rows they wrote. `xmax = 0` marks a row
    # version created by the INSERT, and a nonzero xmax one written by ON
    # CONFLICT DO UPDATE. NOTE: this is PostgreSQL implementation behavior
    # (checked on 15), not a documented guarantee; the seed tests cover it.
    inserted = sum(1 for row in rows if row["inserted"])
    return _counts(total, inserted=inserted, updated=len(rows) - inserted)


async def _upsert_lines(
    connection: asyncpg.Connection, lines: Sequence[Line]
) -> dict[str, int]:
    rows = await connection.fetch(
        """
        INSERT INTO line AS t (code, name)
        SELECT * FROM unnest($1::text[], $2::text[])
        ON CONFLICT (code) DO UPDATE SET name = EXCLUDED.name
        WHERE t.name IS DISTINCT FROM EXCLUDED.name
        RETURNING (t.xmax = 0) AS inserted
        """,
        [line.code for line in lines],
        [line.name for line in lines],
    )
    return _upsert_counts(rows, len(lines))


async def _upsert_station_groups(
    connection: asyncpg.Connection, groups: Sequence[StationGroup]
) -> dict[str, int]:
    rows = await connection.fetch(
        """
        INSERT INTO station_group AS t (code, line_id)
        SELECT f.code, (SELECT l.id FROM line l WHERE l.code = f.line_code)
        FROM unnest($1::text[], $2::text[]) AS f (code, line_code)
        ON CONFLICT (code) DO UPDATE SET line_id = EXCLUDED.line_id
        WHERE t.line_id IS DISTINCT FROM EXCLUDED.line_id
        RETURNING (t.xmax = 0) AS inserted
        """,
        [group.code for group in groups],
        [group.line for group in groups],
    )
    return _upsert_counts(rows, len(groups))


async def _upsert_stations(
    connection: asyncpg.Connection, stations: Sequence[Station]
) -> dict[str, int]:
    rows = await connection.fetch(
        """
        INSERT INTO station AS t (code, line_id, station_group_id, station_type, active)
        SELECT f.code,
               (SELECT l.id FROM line l WHERE l.code = f.line_code),
               (SELECT g.id FROM station_group g WHERE g.code = f.group_code),
               f.station_type,
               f.active
        FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::boolean[])
            AS f (code, line_code, group_code, station_type, active)
        ON CONFLICT (code) DO UPDATE SET
            line_id = EXCLUDED.line_id,
            station_group_id = EXCLUDED.station_group_id,
            station_type = EXCLUDED.station_type,
            active = EXCLUDED.active
        WHERE (t.line_id, t.station_group_id, t.station_type, t.active)
            IS DISTINCT FROM (EXCLUDED.line_id, EXCLUDED.station_group_id,
                              EXCLUDED.station_type, EXCLUDED.active)
        RETURNING (t.xmax = 0) AS inserted
        """,
        [station.code for station in stations],
        [station.line for station in stations],
        [station.group for station in stations],
        [station.station_type for station in stations],
        [station.active for station in stations],
    )
    return _upsert_counts(rows, len(stations))


async def _upsert_data_specs(
    connection: asyncpg.Connection, specs: Sequence[DataSpec]
) -> dict[str, int]:
    # jsonb equality ignores key order and compares numbers by value, so a spec
    # written as {max: 130, min: 70} equals the stored {min: 70.0, max: 130}.
    rows = await connection.fetch(
        """
        INSERT INTO data_spec AS t
            (name, data_type, trigger_type, method, item_type, is_required, spec,
             active)
        SELECT f.name, f.data_type, f.trigger_type, f.method, f.item_type,
               f.is_required, f.spec::jsonb, f.active
        FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                    $6::boolean[], $7::text[], $8::boolean[])
            AS f (name, data_type, trigger_type, method, item_type, is_required,
                  spec, active)
        ON CONFLICT (name) DO UPDATE SET
            data_type = EXCLUDED.data_type,
            trigger_type = EXCLUDED.trigger_type,
            method = EXCLUDED.method,
            item_type = EXCLUDED.item_type,
            is_required = EXCLUDED.is_required,
            spec = EXCLUDED.spec,
            active = EXCLUDED.active
        WHERE (t.data_type, t.trigger_type, t.method, t.item_type, t.is_required,
               t.spec, t.active)
            IS DISTINCT FROM (EXCLUDED.data_type, EXCLUDED.trigger_type,
                              EXCLUDED.method, EXCLUDED.item_type,
                              EXCLUDED.is_required, EXCLUDED.spec, EXCLUDED.active)
        RETURNING (t.xmax = 0) AS inserted
        """,
        [spec.name for spec in specs],
        [spec.data_type for spec in specs],
        [spec.trigger_type for spec in specs],
        [spec.method for spec in specs],
        [spec.item_type for spec in specs],
        [spec.is_required for spec in specs],
        [orjson.dumps(spec.spec).decode() for spec in specs],
        [spec.active for spec in specs],
    )
    return _upsert_counts(rows, len(specs))


async def _upsert_routes(
    connection: asyncpg.Connection, routes: Sequence[Route]
) -> dict[str, int]:
    rows = await connection.fetch(
        """
        INSERT INTO route AS t (code, source_system, source_key)
        SELECT * FROM unnest($1::text[], $2::text[], $3::text[])
        ON CONFLICT (code) DO UPDATE SET
            source_system = EXCLUDED.source_system,
            source_key = EXCLUDED.source_key
        WHERE (t.source_system, t.source_key)
            IS DISTINCT FROM (EXCLUDED.source_system, EXCLUDED.source_key)
        RETURNING (t.xmax = 0) AS inserted
        """,
        [route.code for route in routes],
        [route.source_system for route in routes],
        [route.source_key for route in routes],
    )
    return _upsert_counts(rows, len(routes))


_INSERT_ROUTE_VERSION = """
    INSERT INTO route_version (route_id, version_no, status, compiled_at, content_hash)
    SELECT r.id, $2, $3, $4, $5 FROM route r WHERE r.code = $1
    RETURNING id
"""
_INSERT_ROUTE_STEP = """
    INSERT INTO route_step (
        route_version_id, step_no, operation, station_type, station_group,
        allowed_stations, requires_fai, requires_authorization, data_specs,
        ingest_mapping
    )
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
"""


async def _seed_route_versions(
    connection: asyncpg.Connection, routes: Sequence[Route]
) -> tuple[dict[str, int], dict[str, int]]:
    """Insert new route versions with their steps and check the stored ones.

    Returns the counts of route versions and of route steps.
    """
    stored_rows = await connection.fetch(
        """
        SELECT r.code, v.id, v.version_no, v.status, v.content_hash
        FROM route_version v JOIN route r ON r.id = v.route_id
        WHERE r.code = ANY($1::text[])
        """,
        [route.code for route in routes],
    )
    stored = {(row["code"], row["version_no"]): row for row in stored_rows}
    versions = _counts(0)
    steps = _counts(0)
    problems = []
    for index, route in enumerate(routes):
        for version in route.versions:
            label = _route_label(index, route, version)
            content_hash = version.content_hash()
            row = stored.get((route.code, version.version_no))
            versions["unchanged"] += 1
            steps["unchanged"] += len(version.steps)
            if row is None:
                await _insert_route_version(connection, route, version, content_hash)
                _move_count(versions, "inserted")
                _move_count(steps, "inserted", len(version.steps))
            elif row["content_hash"] != content_hash:
                problems.append(
                    f"{label}: the content differs from the stored version (content "
                    f"hash {row['content_hash'][:12]}... stored, "
                    f"{content_hash[:12]}... in the file); route versions are "
                    "immutable, so publish the change under a new versionNo"
                )
            elif row["status"] != version.status:
                problem = await _move_route_version_status(
                    connection, label, row, version.status
                )
                if problem:
                    problems.append(problem)
                else:
                    _move_count(versions, "updated")
    if problems:
        raise MasterDataError("\n".join(problems))
    return versions, steps


def _move_count(counts: dict[str, int], action: str, amount: int = 1) -> None:
    counts["unchanged"] -= amount
    counts[action] += amount


async def _insert_route_version(
    connection: asyncpg.Connection,
    route: Route,
    version: RouteVersion,
    content_hash: str,
) -> None:
    version_id = await connection.fetchval(
        _INSERT_ROUTE_VERSION,
        route.code,
        version.version_no,
        version.status,
        version.compiled_at,
        content_hash,
    )
    await connection.executemany(
        _INSERT_ROUTE_STEP,
        [
            (
                version_id,
                step.step_no,
                step.operation,
                step.station_type,
                step.station_group,
                step.allowed_stations,
                step.requires_fai,
                step.requires_authorization,
                step.data_specs,
                step.ingest_mapping,
            )
            for step in version.steps
        ],
    )


async def _move_route_version_status(
    connection: asyncpg.Connection,
    label: str,
    row: asyncpg.Record,
    status: str,
) -> str | None:
    """Move a stored route version's status forward, or return why it cannot."""
    if _ROUTE_VERSION_STATUS_ORDER[status] < _ROUTE_VERSION_STATUS_ORDER[row["status"]]:
        return (
            f"{label}: status cannot move back from {row['status']} to {status}; "
            "a route version moves only forward (DRAFT, READY, RETIRED), so "
            "publish a new versionNo or keep the status"
        )
    await connection.execute(
        "UPDATE route_version SET status = $2 WHERE id = $1", row["id"], status
    )
    return None


async def _seed_runs(
    connection: asyncpg.Connection, runs: Sequence[Run]
) -> dict[str, int]:
    """Insert missing runs and apply the master data changes to stored ones.

    A stored run keeps its production state. It only takes the file's work
    order number, and moves from PREP to AUTHORIZED when the file sets
    AUTHORIZED, because authorization is master data.
    """
    # FOR UPDATE keeps a worker from starting a run between this read and the
    # conditional status update below.
    stored_rows = await connection.fetch(
        """
        SELECT run.run_no, run.wo_no, run.status, r.code AS route_code, v.version_no
        FROM run
        JOIN route_version v ON v.id = run.route_version_id
        JOIN route r ON r.id = v.route_id
        WHERE run.run_no = ANY($1::text[])
        FOR UPDATE OF run
        """,
        [run.run_no for run in runs],
    )
    stored = {row["run_no"]: row for row in stored_rows}
    new_runs: list[Run] = []
    updates: list[tuple[str, str | None, str]] = []
    problems = []
    for index, run in enumerate(runs):
        row = stored.get(run.run_no)
        if row is None:
            new_runs.append(run)
            continue
        if (row["route_code"], row["version_no"]) != (run.route, run.version_no):
            problems.append(
                f"runs[{index}] {run.run_no}: the stored run uses route "
                f"{row['route_code']!r} version {row['version_no']}, the file says "
                f"route {run.route!r} version {run.version_no}; a run never moves to "
                "another route version, so correct the file or use a new runNo"
            )
            continue
        status = row["status"]
        if run.status == "AUTHORIZED" and status == "PREP":
            status = "AUTHORIZED"
        if status != row["status"] or run.wo_no != row["wo_no"]:
            updates.append((run.run_no, run.wo_no, status))
    if problems:
        raise MasterDataError("\n".join(problems))
    await connection.execute(
        """
        INSERT INTO run (run_no, wo_no, route_version_id, status, started_at)
        SELECT f.run_no, f.wo_no,
               (SELECT v.id FROM route_version v JOIN route r ON r.id = v.route_id
                WHERE r.code = f.route_code AND v.version_no = f.version_no),
               f.status, f.started_at
        FROM unnest($1::text[], $2::text[], $3::text[], $4::integer[], $5::text[],
                    $6::timestamptz[])
            AS f (run_no, wo_no, route_code, version_no, status, started_at)
        """,
        [run.run_no for run in new_runs],
        [run.wo_no for run in new_runs],
        [run.route for run in new_runs],
        [run.version_no for run in new_runs],
        [run.status for run in new_runs],
        [run.started_at for run in new_runs],
    )
    await connection.executemany(
        "UPDATE run SET wo_no = $2, status = $3 WHERE run_no = $1", updates
    )
    return _counts(len(runs), inserted=len(new_runs), updated=len(updates))


@dataclass
class _UnitColumns:
    """Units of the file in columns, as the unnest-based INSERT takes them."""

    entry_index: list[int] = field(default_factory=list)
    sn: list[str] = field(default_factory=list)
    run_no: list[str] = field(default_factory=list)
    status: list[str] = field(default_factory=list)
    current_step_no: list[int] = field(default_factory=list)


def _unit_columns(factory: Factory) -> _UnitColumns:
    first_steps = {}
    for run in factory.runs:
        version = factory.route_version(run.route, run.version_no)
        assert version is not None  # parse_factory checked the reference
        first_steps[run.run_no] = min(step.step_no for step in version.steps)
    columns = _UnitColumns()
    for index, entry in enumerate(factory.units):
        serial_numbers = entry.serial_numbers()
        step_no = entry.current_step_no
        if step_no is None:
            step_no = first_steps[entry.run]
        count = len(serial_numbers)
        columns.entry_index += [index] * count
        columns.sn += serial_numbers
        columns.run_no += [entry.run] * count
        columns.status += [entry.status] * count
        columns.current_step_no += [step_no] * count
    return columns


async def _seed_units(
    connection: asyncpg.Connection, factory: Factory
) -> dict[str, int]:
    """Insert missing units; stored units keep their state and are never reset."""
    columns = _unit_columns(factory)
    await _check_unit_runs(connection, factory, columns)
    run_rows = await connection.fetch(
        "SELECT run_no, id FROM run WHERE run_no = ANY($1::text[])",
        [run.run_no for run in factory.runs],
    )
    run_ids = {row["run_no"]: row["id"] for row in run_rows}
    inserted = await connection.fetchval(
        """
        WITH inserted AS (
            INSERT INTO unit (sn, run_id, status, current_step_no)
            SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::integer[])
            ON CONFLICT (sn) DO NOTHING
            RETURNING 1
        )
        SELECT count(*) FROM inserted
        """,
        columns.sn,
        [run_ids[run_no] for run_no in columns.run_no],
        columns.status,
        columns.current_step_no,
    )
    return _counts(len(columns.sn), inserted=inserted)


async def _check_unit_runs(
    connection: asyncpg.Connection, factory: Factory, columns: _UnitColumns
) -> None:
    """Raise MasterDataError when a stored unit is in another run than in the file."""
    examples_shown = 20
    rows = await connection.fetch(
        """
        SELECT f.position, f.sn, r.run_no AS stored_run_no, count(*) OVER () AS total
        FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS f (sn, run_no, position)
        JOIN unit u ON u.sn = f.sn
        JOIN run r ON r.id = u.run_id
        WHERE r.run_no <> f.run_no
        ORDER BY f.position
        LIMIT $3
        """,
        columns.sn,
        columns.run_no,
        examples_shown,
    )
    if not rows:
        return
    problems = []
    for row in rows:
        position = row["position"] - 1
        index = columns.entry_index[position]
        problems.append(
            f"units[{index}] {factory.units[index].describe()}: unit "
            f"{row['sn']!r} is stored in run {row['stored_run_no']!r}, the file "
            f"puts it in run {columns.run_no[position]!r}; a unit never moves to "
            "another run, so correct the run of this entry"
        )
    hidden = rows[0]["total"] - len(rows)
    if hidden > 0:
        problems.append(f"{hidden} more units are stored in another run")
    raise MasterDataError("\n".join(problems))
