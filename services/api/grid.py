"""Grid cells: a coarse place key on ``assessments``, so that a radius scan reads the rows
near its point instead of a north-south strip of the whole force area.

A cell is a square of :data:`CELL_M` metres of the British National Grid. Its number is
``(E // CELL_M) * STRIDE + (N // CELL_M)``: its decimal digits read as the grid reference
of its south-west corner in hectometres, the easting's then the northing's in five digits
(cell ``4245_05649`` holds E 424500–424599, N 564900–564999). The cells of one north-south
column are consecutive numbers.

Bounds: eastings 0..:data:`E_MAX` and northings 0..:data:`N_MAX` (Great Britain, Shetland
included, is 0..700,000 by 0..1,300,000 m). A coordinate outside them is clamped to the
nearest bound first, so a stray point is kept in a border cell, never dropped. Clamping
never loses a row to a scan: it keeps order (``x <= y`` gives ``clamp(x) <= clamp(y)``), so
a point within ``[e - r, e + r]`` has its cell column within the columns of the clamped
ends, which :func:`covering_cells` reads (the same holds for northings). The largest number
is ``7000 * 100_000 + 13000``, well within a 32-bit integer.

The database computes the same numbers (``migrations/versions/0004_grid_cells.py``, for
rows written before the column existed); the write path stores :func:`cell_of` with the
point (``statistics.place_columns``, which every write of a point uses).
"""

from __future__ import annotations

#: A cell's side, in metres: the shipped policy's largest location radius (100 m), so a
#: 100 m scan reads 9 cells (300 m by 300 m) at most; a wider radius reads more of them.
CELL_M = 100
#: The largest easting and northing kept as they are (inclusive); larger ones are clamped.
E_MAX = 700_000
N_MAX = 1_300_000
#: The multiplier of the cell's column: more than ``N_MAX // CELL_M``, a power of ten.
STRIDE = 100_000
#: The longest list of cells a scan sends: a radius needing more (over about 1.5 km, far
#: wider than any policy's) is scanned the old way, by the (easting, northing) index.
MAX_CELLS = 1024

assert N_MAX // CELL_M < STRIDE and (E_MAX // CELL_M) * STRIDE + N_MAX // CELL_M < 2**31


def _clamp(value: int, high: int) -> int:
    return 0 if value < 0 else high if value > high else value


def cell_of(easting: int | None, northing: int | None) -> int | None:
    """The cell holding the point (clamped into the bounds); None without a point."""
    if easting is None or northing is None:
        return None
    column = _clamp(int(easting), E_MAX) // CELL_M
    return column * STRIDE + _clamp(int(northing), N_MAX) // CELL_M


def covering_cells(easting: int, northing: int, radius_m: int) -> list[int] | None:
    """Every cell that can hold a point within ``radius_m`` of ``(easting, northing)``:
    those meeting the square around the circle, in ascending order. None when there would
    be more than :data:`MAX_CELLS` (the caller then scans without cells)."""
    radius = max(int(radius_m), 0)
    e_low = _clamp(easting - radius, E_MAX) // CELL_M
    e_high = _clamp(easting + radius, E_MAX) // CELL_M
    n_low = _clamp(northing - radius, N_MAX) // CELL_M
    n_high = _clamp(northing + radius, N_MAX) // CELL_M
    if (e_high - e_low + 1) * (n_high - n_low + 1) > MAX_CELLS:
        return None
    return [
        column * STRIDE + row
        for column in range(e_low, e_high + 1)
        for row in range(n_low, n_high + 1)
    ]
