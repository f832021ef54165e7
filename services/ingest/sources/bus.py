"""Bus safety feedback placed on the bus network and made into incident events.

The network is a GeoJSON file (WGS84): routes are LineStrings with ``route_id`` and
``name``; stops are Points with ``stop_id``, ``name``, ``routes`` (the route ids served)
and ``location_id`` (digits). The shipped sample, ``asvat/reference/bus/network.geojson``,
is illustrative: three routes and twelve stops drawn by hand near real Newcastle streets.

Placement (distances in British National Grid metres):

1. a report naming a known ``stop_id`` is at that stop;
2. else a ``point`` goes to the nearest stop within ``stop_tolerance_m`` (50 m), among the
   stops of the report's route when it names one the network has;
3. else to the nearest point of that route (or, with no route, of any route) within
   ``route_tolerance_m`` (150 m);
4. else it is rejected, reason ``off_network``, with the distance to the nearest route.
   A ``route_id`` or ``stop_id`` the network does not have, with no point to fall back on,
   is rejected as ``unknown_place``.

Why a stop's ``location_id`` becomes the incident's ``uprn``: the engine's repeat-location
rules treat incidents with the same UPRN as one place, whatever their points, so every
report at a stop counts towards that stop (as the domain asks: "the same street or bus
stop again and again"), and reports snapped to a route between stops fall back on the
radius rule around their snapped point. The sample's ids (``9`` then eleven digits) lie
above any UPRN issued so far; a force should put the stop's real UPRN there where it has one.
Repeats *along* a route (not at one place) are not a rule the engine has yet.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import shapely
from shapely.geometry import LineString, Point, shape
from shapely.ops import nearest_points

from asvat.contracts import FieldError, validate_against
from asvat.domain.location import Place, wgs84_to_bng
from services.ingest.submission import PSEUDONYMOUS_FIELDS, SourceError

SCHEMA = "bus-feedback.v1"
STOP_TOLERANCE_M = 50.0
ROUTE_TOLERANCE_M = 150.0

#: Report category -> incident code of the default policy (NSIR categories: being targeted
#: is personal, damage is environmental, the rest nuisance).
CATEGORY_CODES = {
    "intimidation": "ASBP",
    "verbal_abuse": "ASBP",
    "threatening_behaviour": "ASBP",
    "vandalism": "ASBE",
    "anti_social_behaviour": "ASBN",
    "drunk_or_drugs": "ASBN",
    "other": "ASBN",
}


class NetworkError(ValueError):
    """A network file that cannot be used (the message names the file and feature)."""


@dataclass(frozen=True)
class Stop:
    stop_id: str
    name: str
    routes: tuple[str, ...]
    location_id: str | None
    lat: float
    lon: float
    grid: Point


@dataclass(frozen=True)
class Route:
    route_id: str
    name: str
    grid: LineString


def _to_grid(lon: float, lat: float) -> tuple[float, float]:
    return wgs84_to_bng(lat, lon)


class BusNetwork:
    """Routes and stops, in grid metres, and the placement rule of the module docstring."""

    def __init__(
        self,
        document: Mapping[str, Any],
        *,
        where: str = "bus network",
        stop_tolerance_m: float = STOP_TOLERANCE_M,
        route_tolerance_m: float = ROUTE_TOLERANCE_M,
    ) -> None:
        self.stop_tolerance_m = stop_tolerance_m
        self.route_tolerance_m = route_tolerance_m
        self.stops: dict[str, Stop] = {}
        self.routes: dict[str, Route] = {}
        for number, feature in enumerate(document.get("features", [])):
            props = feature.get("properties") or {}
            geometry = shape(feature.get("geometry"))
            if geometry.geom_type == "LineString" and props.get("route_id"):
                grid = LineString([_to_grid(x, y) for x, y, *_ in geometry.coords])
                rid = str(props["route_id"])
                self.routes[rid] = Route(rid, str(props.get("name", rid)), grid)
            elif geometry.geom_type == "Point" and props.get("stop_id"):
                sid = str(props["stop_id"])
                location_id = props.get("location_id")
                if location_id is not None and not str(location_id).isdigit():
                    raise NetworkError(
                        f"{where}: features[{number}].properties.location_id: expected digits"
                    )
                self.stops[sid] = Stop(
                    sid,
                    str(props.get("name", sid)),
                    tuple(str(r) for r in props.get("routes", [])),
                    None if location_id is None else str(location_id),
                    geometry.y,
                    geometry.x,
                    Point(_to_grid(geometry.x, geometry.y)),
                )
            else:
                raise NetworkError(
                    f"{where}: features[{number}]: expected a LineString with route_id or a "
                    "Point with stop_id"
                )
        if not self.routes and not self.stops:
            raise NetworkError(f"{where}: no routes and no stops")

    @classmethod
    def load(cls, path: Path | None = None) -> BusNetwork:
        """The network in ``path`` (GeoJSON), or the shipped illustrative sample."""
        if path is None:
            source = resources.files("asvat").joinpath("reference", "bus", "network.geojson")
            return cls(json.loads(source.read_text(encoding="utf-8")), where="shipped sample")
        try:
            document = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise NetworkError(f"{path}: cannot read the bus network: {exc}") from exc
        return cls(document, where=str(path))

    # ----------------------------------------------------------------- placement

    def place(self, report: Mapping[str, Any]) -> tuple[dict[str, Any] | None, list[FieldError]]:
        """The incident ``location`` for a (valid) report, or why it cannot be placed."""
        stop_id, route_id = report.get("stop_id"), report.get("route_id")
        point = report.get("point")
        if stop_id is not None and stop_id in self.stops:
            return self._at_stop(self.stops[str(stop_id)], route_id), []
        if not isinstance(point, Mapping):
            what = f"stop {stop_id!r}" if stop_id is not None else "no point"
            return None, [
                SourceError(
                    "stop_id",
                    f"expected a stop of the network, got {what} (and no point to place it by)",
                    "unknown_place",
                )
            ]
        lat, lon = float(point["lat"]), float(point["lon"])
        here = Point(_to_grid(lon, lat))
        route = self.routes.get(str(route_id)) if route_id is not None else None
        candidates = [s for s in self.stops.values() if route is None or route.route_id in s.routes]
        nearest_stop = min(candidates, key=lambda s: s.grid.distance(here), default=None)
        if nearest_stop is not None and nearest_stop.grid.distance(here) <= self.stop_tolerance_m:
            return self._at_stop(nearest_stop, route_id), []
        lines = [route] if route is not None else list(self.routes.values())
        nearest_route = min(lines, key=lambda r: r.grid.distance(here), default=None)
        if nearest_route is None:
            return None, [SourceError("point", "expected a network with routes", "off_network")]
        distance = nearest_route.grid.distance(here)
        if distance > self.route_tolerance_m:
            whose = "the report's route" if route is not None else "a route"
            return None, [
                SourceError(
                    "point",
                    f"expected a point within {self.stop_tolerance_m:g} m of a stop or "
                    f"{self.route_tolerance_m:g} m of {whose}; the nearest (route "
                    f"{nearest_route.route_id}) is {distance:.0f} m away",
                    "off_network",
                )
            ]
        snapped = nearest_points(nearest_route.grid, here)[0]
        lat_s, lon_s = Place(snapped.x, snapped.y).to_wgs84()
        return {
            "lat": round(lat_s, 6),
            "lon": round(lon_s, 6),
            "address": f"Bus route {nearest_route.route_id} ({nearest_route.name}), between stops",
        }, []

    @staticmethod
    def _at_stop(stop: Stop, route_id: Any) -> dict[str, Any]:
        address = f"Bus stop {stop.name} ({stop.stop_id})"
        if route_id is not None:
            address += f", route {route_id}"
        location: dict[str, Any] = {"lat": stop.lat, "lon": stop.lon, "address": address}
        if stop.location_id is not None:
            location["uprn"] = stop.location_id
        return location

    # ----------------------------------------------------------------- conversion

    def to_incident(
        self, report: Mapping[str, Any]
    ) -> tuple[dict[str, Any] | None, list[FieldError]]:
        """The incident.v1 record of one report, or the errors (report schema, placement).

        A report that already carries ``victim_key`` (a dead letter being replayed) keeps it
        in place of ``caller``.
        """
        checked = {k: v for k, v in report.items() if k not in PSEUDONYMOUS_FIELDS}
        errors = [_quiet(e) for e in validate_against(SCHEMA, checked)]
        if errors:
            return None, errors
        location, errors = self.place(report)
        if location is None:
            return None, errors
        category = str(report["category"])
        incident_id = f"BUS-{report['report_id']}"
        words = category.replace("_", " ")
        route = report.get("route_id")
        record: dict[str, Any] = {
            "event_id": f"{incident_id}-0",
            "incident_id": incident_id,
            "sequence": 0,
            "event_type": "opened",
            "occurred_at": report["occurred_at"],
            "reported_at": report["submitted_at"],
            "source": "bus_feedback",
            "opening_code": CATEGORY_CODES[category],
            "location": location,
            "description": f"Bus safety feedback: {words}"
            + (f" on route {route}" if route is not None else ""),
        }
        if "caller" in report:
            record["caller"] = report["caller"]
        for name in PSEUDONYMOUS_FIELDS:
            if name in report:
                record[name] = report[name]
        return record, []


def _quiet(error: FieldError) -> FieldError:
    """A whole-record error without the excerpt of the record (it may hold the caller)."""
    if error.field == "(record)" and ", got " in error.reason:
        return FieldError(error.field, error.reason.split(", got ", 1)[0])
    return error


def grid_point(lat: float, lon: float) -> Point:
    """A WGS84 point in grid metres (for tests and tools)."""
    return shapely.Point(_to_grid(lon, lat))
