"""Speaker roles, network roles and conversion directions: the one table every stage reads."""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["DIRECTIONS", "GENERATORS", "DISCRIMINATORS", "Direction", "direction"]

#: the generators, by role: ``G_ab`` maps speaker A to B, ``G_ba`` B to A
GENERATORS = ("G_ab", "G_ba")
#: the discriminators, by role: ``D_a`` judges speaker A's features, ``D_b`` B's
DISCRIMINATORS = ("D_a", "D_b")


class Direction(NamedTuple):
    """One conversion direction: from the ``source`` speaker role to the ``target`` one, by ``generator``."""

    name: str
    source: str
    target: str
    generator: str
    #: the discriminator that judges this direction's output (the target speaker's)
    discriminator: str


DIRECTIONS: dict[str, Direction] = {
    "A2B": Direction("A2B", "A", "B", "G_ab", "D_b"),
    "B2A": Direction("B2A", "B", "A", "G_ba", "D_a"),
}


def direction(name: str) -> Direction:
    """The :class:`Direction` called ``name`` (``"A2B"`` or ``"B2A"``); ``ValueError`` for any other."""
    try:
        return DIRECTIONS[name]
    except (KeyError, TypeError):
        raise ValueError(f"direction must be one of {sorted(DIRECTIONS)}, got {name!r}") from None
