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
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import shapely
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from asvat.domain.location import Place

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
        point = _lat_lon(location)
        if point is None:
            return ()
        lat, lon = point
        if not (_UK_LAT[0] <= lat <= _UK_LAT[1] and _UK_LON[0] <= lon <= _UK_LON[1]):
            return (OUTSIDE_UK,)
        if not shapely.contains_xy(self._area, lon, lat):  # no Point object: 5x faster
            return (OUTSIDE_FORCE_AREA,)
        return ()


def _lat_lon(location: Any) -> tuple[float, float] | None:
    if not isinstance(location, Mapping):
        return None
    try:
        if "easting" in location and "northing" in location:
            return Place(float(location["easting"]), float(location["northing"])).to_wgs84()
        if "lat" in location and "lon" in location:
            return float(location["lat"]), float(location["lon"])
    except (TypeError, ValueError):
        return None
    return None
