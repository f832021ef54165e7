"""Areas: which district and ward an incident lies in, from the boundary GeoJSON files.

The files (``ASVAT_DISTRICTS_GEOJSON``, ``ASVAT_WARDS_GEOJSON``; by default the shipped
Northumbria boundaries) are WGS84 polygons. Points are looked up in a shapely STRtree, many
at a time. A point outside every polygon, and an incident with no point at all, is placed
in :data:`UNASSIGNED`: it is counted there, never dropped.

Locations arrive as assessment ``location_key`` values: ``bng:<E>:<N>`` (British National
Grid metres) is converted to WGS84 with the domain's transformation; ``uprn:<n>`` carries no
point (the API has no address gazetteer), so such incidents are unassigned.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely import STRtree
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from asvat.domain.location import Place

UNASSIGNED = "unassigned"
REFERENCE = ("reference", "northumbria")
#: Location keys whose place :meth:`AreaIndex.locate_keys` remembers (then it starts over).
LOCATED_CACHE_SIZE = 200_000


class BoundaryError(ValueError):
    """A boundary file that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True, slots=True)
class Area:
    code: str
    name: str
    level: str  # district | ward
    district_code: str | None = None  # of a ward: the district holding its centre


@dataclass(frozen=True, slots=True)
class Located:
    """Where a location key lies: its point (if any) and its district and ward codes."""

    easting: int | None
    northing: int | None
    lat: float | None
    lon: float | None
    district_code: str
    ward_code: str


NOWHERE = Located(None, None, None, None, UNASSIGNED, UNASSIGNED)


def parse_location_key(key: str | None) -> tuple[int, int] | None:
    """``(easting, northing)`` of a ``bng:E:N`` key; None for ``uprn:…``, None or junk."""
    if not key or not key.startswith("bng:"):
        return None
    parts = key.split(":")
    if len(parts) != 3:
        return None
    try:
        return int(parts[1]), int(parts[2])
    except ValueError:
        return None


class _Layer:
    """One boundary file: its areas, their polygons, and the tree over them."""

    def __init__(self, path: Path, level: str, code_keys: Sequence[str], name_keys: Sequence[str]):
        self.path = path
        self.level = level
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise BoundaryError(f"{path}: cannot read GeoJSON ({exc})") from exc
        features = document.get("features") if isinstance(document, dict) else None
        if not isinstance(features, list) or not features:
            raise BoundaryError(f"{path}: expected a FeatureCollection with features")
        self.document: dict[str, Any] = document
        self.areas: list[Area] = []
        geometries: list[BaseGeometry] = []
        for index, feature in enumerate(features):
            props = feature.get("properties") or {}
            code = next((str(props[k]) for k in code_keys if props.get(k)), None)
            name = next((str(props[k]) for k in name_keys if props.get(k)), None)
            if code is None or name is None:
                raise BoundaryError(
                    f"{path}: feature {index}: expected properties {' or '.join(code_keys)} "
                    f"and {' or '.join(name_keys)}, got {sorted(props)}"
                )
            try:
                geometry = shape(feature["geometry"])
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise BoundaryError(f"{path}: feature {index} ({code}): bad geometry") from exc
            if not geometry.is_valid:
                geometry = geometry.buffer(0)
            self.areas.append(Area(code=code, name=name, level=level))
            geometries.append(geometry)
        self.geometries = np.array(geometries, dtype=object)
        self.tree = STRtree(self.geometries)

    def locate(self, points: np.ndarray[Any, Any]) -> list[str]:
        """The code of the first area (in file order) holding each point, else unassigned."""
        codes = [UNASSIGNED] * len(points)
        if len(points) == 0:
            return codes
        point_index, area_index = self.tree.query(points, predicate="intersects")
        for p, a in sorted(zip(point_index.tolist(), area_index.tolist(), strict=True)):
            if codes[p] == UNASSIGNED:
                codes[p] = self.areas[a].code
        return codes


class AreaIndex:
    """District and ward look-ups for points and location keys."""

    def __init__(self, districts: Path, wards: Path) -> None:
        self.districts = _Layer(districts, "district", ("objectid", "code"), ("district", "name"))
        self.wards = _Layer(wards, "ward", ("ward_code", "code"), ("ward_name", "name"))
        centres = shapely.points(
            [shapely.point_on_surface(g).coords[0] for g in self.wards.geometries]
        )
        holders = self.districts.locate(centres)
        self.wards.areas = [
            Area(a.code, a.name, "ward", district_code=d)
            for a, d in zip(self.wards.areas, holders, strict=True)
        ]
        self.by_code: dict[tuple[str, str], Area] = {
            (a.level, a.code): a for layer in (self.districts, self.wards) for a in layer.areas
        }
        self._located: dict[str, Located] = {}  # location key -> where (locate_keys)

    @classmethod
    def from_settings(cls, districts: Path | None, wards: Path | None) -> AreaIndex:
        """The index of the given files (None: the shipped ones); one per pair of files."""
        base = resources.files("asvat").joinpath(*REFERENCE)
        return _load(
            Path(districts) if districts else Path(str(base.joinpath("districts.geojson"))),
            Path(wards) if wards else Path(str(base.joinpath("wards.geojson"))),
        )

    def name(self, level: str, code: str) -> str:
        if code == UNASSIGNED:
            return "Unassigned (outside every boundary, or no point)"
        area = self.by_code.get((level, code))
        return area.name if area else code

    def codes(self, level: str) -> list[str]:
        layer = self.districts if level == "district" else self.wards
        return [a.code for a in layer.areas]

    def boundaries(self, level: str) -> dict[str, Any]:
        """The boundary file of ``district`` or ``ward`` as GeoJSON, properties normalised."""
        layer = self.districts if level == "district" else self.wards
        return {
            "type": "FeatureCollection",
            "features": [
                {
                    "type": "Feature",
                    "properties": {
                        "code": area.code,
                        "name": area.name,
                        "level": area.level,
                        "district_code": area.district_code,
                    },
                    "geometry": feature["geometry"],
                }
                for area, feature in zip(layer.areas, layer.document["features"], strict=True)
            ],
        }

    @cached_property
    def bounds(self) -> tuple[float, float, float, float]:
        """``(min_lon, min_lat, max_lon, max_lat)`` of the districts."""
        minx, miny, maxx, maxy = shapely.total_bounds(self.districts.geometries)
        return (float(minx), float(miny), float(maxx), float(maxy))

    def locate_points(self, lat_lon: Sequence[tuple[float, float]]) -> list[tuple[str, str]]:
        """``(district_code, ward_code)`` of each WGS84 point."""
        points = shapely.points([(lon, lat) for lat, lon in lat_lon])
        return list(zip(self.districts.locate(points), self.wards.locate(points), strict=True))

    def locate_keys(self, keys: Sequence[str | None]) -> list[Located]:
        """Where each location key lies (:data:`NOWHERE` for uprn keys and None).

        Remembered per key (a key is a grid point: the same places come back again and
        again, and each new one costs a point-in-polygon test against every ward)."""
        known = self._located
        new = [k for k in dict.fromkeys(keys) if k is not None and k not in known]
        if new:
            if len(known) + len(new) > LOCATED_CACHE_SIZE:
                known.clear()
            known.update(zip(new, self._locate_new_keys(new), strict=True))
        return [NOWHERE if key is None else known.get(key, NOWHERE) for key in keys]

    def _locate_new_keys(self, keys: Sequence[str]) -> list[Located]:
        out: list[Located] = [NOWHERE] * len(keys)
        grid: list[tuple[int, int, int]] = []
        for index, key in enumerate(keys):
            parsed = parse_location_key(key)
            if parsed is not None:
                grid.append((index, *parsed))
        if not grid:
            return out
        wgs = [Place(float(e), float(n)).to_wgs84() for _, e, n in grid]
        areas = self.locate_points(wgs)
        for (index, easting, northing), (lat, lon), (district, ward) in zip(
            grid, wgs, areas, strict=True
        ):
            out[index] = Located(easting, northing, round(lat, 6), round(lon, 6), district, ward)
        return out


@lru_cache(maxsize=8)
def _load(districts: Path, wards: Path) -> AreaIndex:
    return AreaIndex(districts, wards)
