"""Grid cells (services/api/grid.py): the encoding, its bounds, and the cells covering a
circle, which must hold every point within the radius whatever the point and radius."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from services.api import grid
from services.api.grid import CELL_M, E_MAX, MAX_CELLS, N_MAX, STRIDE, cell_of, covering_cells


def test_a_cell_number_reads_as_the_hectometre_reference_of_its_corner() -> None:
    assert cell_of(424_560, 564_921) == 4245_05649
    assert cell_of(424_500, 564_900) == 4245_05649  # the corner is in its cell
    assert cell_of(424_499, 564_900) == 4244_05649  # one metre west: the next column
    assert cell_of(424_500, 564_899) == 4245_05648  # one metre south: the next row
    assert cell_of(0, 0) == 0
    assert cell_of(None, 564_921) is None and cell_of(424_560, None) is None


def test_points_outside_the_bounds_are_clamped_into_border_cells() -> None:
    assert cell_of(-30, 40) == cell_of(0, 40) == 0
    assert cell_of(E_MAX + 5_000, N_MAX + 1) == cell_of(E_MAX, N_MAX)
    assert cell_of(2**31 - 1, -(2**31)) == (E_MAX // CELL_M) * STRIDE
    assert cell_of(E_MAX, N_MAX) == 7000_13000 < 2**31  # the largest: a 32-bit integer


def test_a_100_m_scan_reads_at_most_9_cells_and_a_wide_one_none() -> None:
    assert covering_cells(424_550, 564_950, 100) == [
        column * STRIDE + row for column in (4244, 4245, 4246) for row in (5648, 5649, 5650)
    ]
    assert len(covering_cells(424_550, 564_950, 50) or []) == 4  # corners on cell borders
    assert len(covering_cells(424_560, 564_921, 0) or []) == 1
    assert len(covering_cells(424_560, 564_921, 1_500) or []) <= MAX_CELLS
    assert covering_cells(424_560, 564_921, 2_000) is None  # the caller scans without cells


coordinates = st.integers(-50_000, 1_400_000)


@given(
    e=coordinates,
    n=coordinates,
    radius=st.integers(0, 1_600),
    de=st.integers(-1_600, 1_600),
    dn=st.integers(-1_600, 1_600),
)
def test_every_point_within_the_radius_is_in_a_covering_cell(
    e: int, n: int, radius: int, de: int, dn: int
) -> None:
    cells = covering_cells(e, n, radius)
    if cells is None:
        assert radius > 1_500
        return
    assert cells == sorted(set(cells))
    if de * de + dn * dn <= radius * radius:
        assert cell_of(e + de, n + dn) in cells


def test_cells_are_as_wide_as_the_shipped_policy_s_widest_radius() -> None:
    from asvat.domain.policy import default_policy

    assert default_policy().max_radius_m <= grid.CELL_M  # so 9 cells at most for it
