"""Placing incidents in districts and wards from the shipped boundary files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from asvat.demo import _records
from services.api.areas import UNASSIGNED, AreaIndex, BoundaryError, parse_location_key

NEWCASTLE, MONUMENT = "E08000021", "E05011453"


@pytest.fixture(scope="module")
def areas() -> AreaIndex:
    return AreaIndex.from_settings(None, None)


def test_points_fall_in_their_district_and_ward(areas: AreaIndex) -> None:
    northumberland_street = (54.97613, -1.61185)
    wooler = (55.6, -2.0)
    north_sea = (54.98, -1.30)
    found = areas.locate_points([northumberland_street, wooler, north_sea])
    assert found[0] == (NEWCASTLE, MONUMENT)
    assert areas.name("district", found[1][0]) == "Northumberland"
    assert areas.name("ward", found[1][1]) == "Wooler"
    assert found[2] == (UNASSIGNED, UNASSIGNED)  # outside every polygon: kept, unassigned


def test_location_keys_grid_points_are_placed_uprns_are_not(areas: AreaIndex) -> None:
    grid, uprn, none, far = areas.locate_keys(
        ["bng:424560:564921", "uprn:100012345678", None, "bng:0:0"]
    )
    assert (grid.district_code, grid.ward_code) == (NEWCASTLE, MONUMENT)
    assert (grid.easting, grid.northing) == (424560, 564921)
    assert grid.lat == pytest.approx(54.9783, abs=1e-3)
    assert grid.lon == pytest.approx(-1.6178, abs=1e-3)
    for nowhere in (uprn, none):  # no point to place (no gazetteer for UPRNs)
        assert (nowhere.district_code, nowhere.ward_code, nowhere.lat) == (
            UNASSIGNED,
            UNASSIGNED,
            None,
        )
    assert far.easting == 0 and far.district_code == UNASSIGNED



def test_remembered_places_are_the_places(areas: AreaIndex, monkeypatch: Any) -> None:
    """A key asked again (in one call or a later one) is answered from memory, and the
    memory starts over when full, with the same answers."""
    keys = ["bng:424560:564921", "uprn:1", None, "bng:424560:564921", "bng:400000:600000"]
    first = areas.locate_keys(keys)
    assert first[0] == first[3]
    monkeypatch.setattr(areas, "_locate_new_keys", lambda new: pytest.fail(f"located {new}"))
    assert areas.locate_keys(list(reversed(keys))) == list(reversed(first))
    monkeypatch.undo()
    monkeypatch.setattr("services.api.areas.LOCATED_CACHE_SIZE", 1)
    assert areas.locate_keys(keys) == first
    assert areas.locate_keys(["bng:1:1"])[0].district_code == UNASSIGNED

def test_every_ward_knows_its_district(areas: AreaIndex) -> None:
    districts = set(areas.codes("district"))
    assert len(districts) == 6 and len(areas.wards.areas) == 177
    assert all(w.district_code in districts for w in areas.wards.areas)


def test_every_real_record_is_placed_none_dropped(areas: AreaIndex) -> None:
    records = _records()
    found = areas.locate_points([(r.lat, r.lon) for r in records])
    assert len(found) == len(records) == 39_706
    unassigned = sum(1 for district, _ in found if district == UNASSIGNED)
    assert unassigned < len(records) * 0.01  # the force's own records lie in its area


def test_parse_location_key() -> None:
    assert parse_location_key("bng:-5:12") == (-5, 12)
    for junk in ("uprn:1", "bng:1", "bng:a:b", "", None, "bng:1:2:3"):
        assert parse_location_key(junk) is None


def test_a_bad_boundary_file_names_the_file_and_the_problem(tmp_path: Path) -> None:
    bad = tmp_path / "wards.geojson"
    bad.write_text(json.dumps({"type": "FeatureCollection", "features": [{"properties": {}}]}))
    shipped = Path(__file__).resolve().parents[2] / "asvat/reference/northumbria/districts.geojson"
    with pytest.raises(BoundaryError, match=r"wards.geojson: feature 0: expected properties"):
        AreaIndex(shipped, bad)
    missing = tmp_path / "nothing.geojson"
    with pytest.raises(BoundaryError, match=r"nothing\.geojson: cannot read"):
        AreaIndex(missing, bad)
