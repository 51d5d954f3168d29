"""Scheduling cells: which cell a region's nodes and sessions live in, and where a cell's
sessions go when it cannot serve them (the fallback ladder).

A *cell* is one scheduling domain: every key of a cell carries the hash tag ``{<cell>}``
(``lingua_shared.keys``), so on a Redis Cluster a cell lives in one slot, on one master, and
different cells spread over the masters. Every script runs inside one cell.

``LINGUA_CELLS`` maps regions to cells, ``region=cell`` entries separated by commas; ``*``
names the cell of every other region (without it: ``LINGUA_CELL``)::

    LINGUA_CELLS="eu=eu,us=us,*=main"

``LINGUA_CELL_FALLBACK`` gives a cell's ladder, the cells its sessions try after it, as
``cell>next>next`` entries separated by commas; a cell without an entry falls back to every
other cell in the order ``LINGUA_CELLS`` first names them, and an entry of the cell alone
(``eu``) means no fallback::

    LINGUA_CELL_FALLBACK="eu>us>main,us>eu>main"

Unset, there is one cell, ``LINGUA_CELL`` (``main``), and everything behaves as with no
cells at all.
"""

from __future__ import annotations

from dataclasses import dataclass

from lingua_shared.keys import KEY_LABEL_RE

ANY_REGION = "*"
MAX_CELLS = 64


class InvalidCells(ValueError):
    """``LINGUA_CELLS`` / ``LINGUA_CELL_FALLBACK`` that cannot be read; says which entry."""


def _label(value: str, what: str, setting: str) -> str:
    if not KEY_LABEL_RE.fullmatch(value):
        raise InvalidCells(
            f"{setting}: {what} {value!r} is not a label (1-64 of a-z 0-9 _ . -, starting "
            "with a letter or digit)"
        )
    return value


@dataclass(frozen=True)
class CellMap:
    regions: dict[str, str]  # region -> cell (without the default)
    default: str  # the cell of every region not in ``regions``
    names: tuple[str, ...]  # every cell, in the order the settings first name them
    ladders: dict[str, tuple[str, ...]]  # cell -> itself, then its fallbacks in order

    @classmethod
    def single(cls, cell: str = "main") -> CellMap:
        return cls({}, cell, (cell,), {cell: (cell,)})

    @classmethod
    def parse(cls, cells: str, fallback: str = "", default_cell: str = "main") -> CellMap:
        """Read the two settings; :class:`InvalidCells` names the entry that is wrong."""
        regions: dict[str, str] = {}
        default = _label(default_cell, "cell", "LINGUA_CELL")
        names: list[str] = []
        for raw in (e.strip() for e in cells.split(",")):
            if not raw:
                continue
            region, sep, cell = (p.strip() for p in raw.partition("="))
            if not sep or not region or not cell:
                raise InvalidCells(f"LINGUA_CELLS: {raw!r} is not region=cell")
            _label(cell, "cell", "LINGUA_CELLS")
            if region == ANY_REGION:
                default = cell
            else:
                _label(region, "region", "LINGUA_CELLS")
                if region in regions and regions[region] != cell:
                    raise InvalidCells(f"LINGUA_CELLS: region {region!r} is mapped twice")
                regions[region] = cell
            if cell not in names:
                names.append(cell)
        if default not in names:
            names.append(default)
        if len(names) > MAX_CELLS:
            raise InvalidCells(f"LINGUA_CELLS: at most {MAX_CELLS} cells")
        ladders = {c: (c, *(o for o in names if o != c)) for c in names}
        for raw in (e.strip() for e in fallback.split(",")):
            if not raw:
                continue
            steps = [s.strip() for s in raw.split(">")]
            for step in steps:
                if step not in names:
                    raise InvalidCells(
                        f"LINGUA_CELL_FALLBACK: {step!r} in {raw!r} is not a cell of "
                        f"LINGUA_CELLS ({', '.join(names)})"
                    )
            if len(set(steps)) != len(steps):
                raise InvalidCells(f"LINGUA_CELL_FALLBACK: {raw!r} names a cell twice")
            ladders[steps[0]] = tuple(steps)
        return cls(regions, default, tuple(names), ladders)

    @property
    def ordered(self) -> list[str]:
        """Every cell, the default first, then in the order the settings name them."""
        return [self.default, *(c for c in self.names if c != self.default)]

    def regions_of(self, cell: str) -> list[str]:
        """The regions mapped to ``cell``, sorted; ``*`` last for the default cell."""
        regions = sorted(r for r, c in self.regions.items() if c == cell)
        return [*regions, ANY_REGION] if cell == self.default else regions

    def cell_of(self, region: str | None) -> str:
        """The cell of a region (the default cell for none, or one not mapped)."""
        if region is None:
            return self.default
        return self.regions.get(region, self.default)

    def ladder(self, cell: str) -> tuple[str, ...]:
        """``cell`` and then the cells its sessions fall back to, in order."""
        return self.ladders.get(cell, (cell,))

    def tag(self, cell: str) -> str | None:
        """What a bus message says of its cell: None for the default one (so one cell's
        messages are as before)."""
        return None if cell == self.default else cell

    def known(self, cell: str) -> bool:
        return cell in self.ladders

    @property
    def several(self) -> bool:
        return len(self.names) > 1
