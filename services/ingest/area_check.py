"""Plausibility of an incident's place: inside the United Kingdom, inside the force area.

The contract only bounds coordinates to the globe (and the grid), so a point in the sea or
in another force's area is a valid record. Such a point is *flagged, not dropped*: the
record is published as it is, and ingest counts a warning
(``asvat_ingest_location_warnings_total{source,check}``) and, for files, reports it.

* ``outside_uk``: outside the box 49.8°N–60.95°N, 8.7°W–1.8°E (Great Britain, Northern
  Ireland and the islands, generously);
* ``outside_force_area``: inside that box but outside every district polygon of the
  boundary file (``ASVAT_DISTRICTS_GEOJSON``; by default the shipped Northumbria file),
  with a 2 km margin for coastlines simplified in the file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import shapely
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from asvat.domain.location import bng_to_wgs84_many

OUTSIDE_UK = "outside_uk"
OUTSIDE_FORCE_AREA = "outside_force_area"
CHECKS = (OUTSIDE_UK, OUTSIDE_FORCE_AREA)

_UK_LAT = (49.8, 60.95)
_UK_LON = (-8.7, 1.8)
#: About 2 km in degrees of latitude (and, at 55°N, a little more east-west).
_MARGIN_DEG = 0.02


class AreaCheck:
    """Warnings for a ``location`` object (already valid against the contract)."""

    def __init__(self, districts_geojson: Path | None = None) -> None:
        if districts_geojson is None:
            source = resources.files("asvat").joinpath(
                "reference", "northumbria", "districts.geojson"
            )
            text = source.read_text(encoding="utf-8")
        else:
            text = Path(districts_geojson).read_text(encoding="utf-8")
        document = json.loads(text)
        shapes: list[BaseGeometry] = [
            shape(feature["geometry"]) for feature in document.get("features", [])
        ]
        area = shapely.union_all(shapes).buffer(_MARGIN_DEG)
        shapely.prepare(area)
        self._area = area

    def warnings(self, location: Any) -> tuple[str, ...]:
        """``()`` for a point inside the force area, else the checks it fails (one)."""
        return self.warnings_many([location])[0]

    def warnings_many(self, locations: Sequence[Any]) -> list[tuple[str, ...]]:
        """:meth:`warnings` of each location, in order: the grid points converted in one
        call to PROJ and every point tested against the area in one call to GEOS."""
        out: list[tuple[str, ...]] = [()] * len(locations)
        grid: list[int] = []
        eastings: list[float] = []
        northings: list[float] = []
        given: dict[int, tuple[float, float]] = {}
        for index, location in enumerate(locations):
            if not isinstance(location, Mapping):
                continue
            try:
                if "easting" in location and "northing" in location:
                    easting, northing = float(location["easting"]), float(location["northing"])
                    grid.append(index)
                    eastings.append(easting)
                    northings.append(northing)
                elif "lat" in location and "lon" in location:
                    given[index] = (float(location["lat"]), float(location["lon"]))
            except (TypeError, ValueError):
                continue
        points = dict(given)
        for index, lat, lon in zip(grid, *bng_to_wgs84_many(eastings, northings), strict=True):
            points[index] = (lat, lon)
        inside_uk = [
            index
            for index, (lat, lon) in points.items()
            if _UK_LAT[0] <= lat <= _UK_LAT[1] and _UK_LON[0] <= lon <= _UK_LON[1]
        ]
        for index in points.keys() - set(inside_uk):
            out[index] = (OUTSIDE_UK,)
        if inside_uk:
            inside = shapely.contains_xy(
                self._area,
                [points[index][1] for index in inside_uk],
                [points[index][0] for index in inside_uk],
            )
            for index, found in zip(inside_uk, inside, strict=True):
                if not found:
                    out[index] = (OUTSIDE_FORCE_AREA,)
        return out
