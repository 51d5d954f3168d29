"""``LINGUA_CELLS`` and ``LINGUA_CELL_FALLBACK``: regions to cells, and each cell's ladder."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from lingua_shared.cells import CellMap, InvalidCells
from lingua_shared.settings import Settings


def test_unset_is_one_cell_of_lingua_cell() -> None:
    m = Settings(cell="it").cell_map()
    assert m == CellMap.single("it")
    assert m.cell_of("eu") == m.cell_of(None) == "it"
    assert m.ladder("it") == ("it",)
    assert not m.several
    assert m.tag("it") is None  # one cell's messages say nothing of cells


def test_regions_map_to_cells_and_the_rest_to_the_star() -> None:
    m = CellMap.parse("eu=eu, us=us, *=main")
    assert m.names == ("eu", "us", "main")
    assert m.ordered == ["main", "eu", "us"]  # the default first
    assert (m.regions_of("eu"), m.regions_of("main")) == (["eu"], ["*"])
    assert (m.cell_of("eu"), m.cell_of("us"), m.cell_of("asia"), m.cell_of(None)) == (
        "eu",
        "us",
        "main",
        "main",
    )
    # without a ladder of its own, a cell falls back to the others in LINGUA_CELLS order
    assert m.ladder("us") == ("us", "eu", "main")
    assert m.tag("main") is None and m.tag("eu") == "eu"
    assert m.known("eu") and not m.known("asia")


def test_several_regions_share_a_cell_and_no_star_means_lingua_cell() -> None:
    m = CellMap.parse("de=eu,fr=eu,us=us", default_cell="main")
    assert m.names == ("eu", "us", "main")
    assert m.cell_of("fr") == "eu" and m.cell_of("jp") == "main"


def test_a_ladder_orders_the_fallbacks_and_a_lone_cell_has_none() -> None:
    m = CellMap.parse("eu=eu,us=us,*=main", "eu>us, us")
    assert m.ladder("eu") == ("eu", "us")
    assert m.ladder("us") == ("us",)
    assert m.ladder("main") == ("main", "eu", "us")


@pytest.mark.parametrize(
    ("cells", "fallback", "says"),
    [
        ("eu", "", "not region=cell"),
        ("eu=", "", "not region=cell"),
        ("eu=EU", "", "cell 'EU'"),
        ("e u=eu", "", "region 'e u'"),
        ("eu=eu,eu=us", "", "mapped twice"),
        ("eu=a}b", "", "cell 'a}b'"),  # a hash tag's end would split the cell's slot
        ("eu=eu,us=us", "eu>asia", "'asia' in 'eu>asia' is not a cell"),
        ("eu=eu,us=us", "eu>us>eu", "names a cell twice"),
    ],
)
def test_what_cannot_be_read_is_refused_by_name(cells: str, fallback: str, says: str) -> None:
    with pytest.raises(InvalidCells, match=says.replace("}", "\\}")):
        CellMap.parse(cells, fallback)
    with pytest.raises(ValidationError, match=says.split("'")[0] or "LINGUA"):
        Settings(cells=cells, cell_fallback=fallback)
