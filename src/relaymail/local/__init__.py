"""Local names and aliases: what `root` and `root@<local domain>` stand for.

- aliases.py: the aliases(5) file format and its checks (loops, depth, size), pure
- expand.py: `qualify` and `expand`, pure
- table.py: the file on disk, re-read when it changes (the daemon's AliasTable)
"""

from __future__ import annotations

from .aliases import MAX_EXPANSION, Alias, Aliases, AliasProblem, Target, parse_aliases
from .expand import Expansion, expand, expansions, merged, qualify
from .table import AliasTable, load_aliases

__all__ = [
    "MAX_EXPANSION",
    "Alias",
    "AliasProblem",
    "AliasTable",
    "Aliases",
    "Expansion",
    "Target",
    "expand",
    "expansions",
    "load_aliases",
    "merged",
    "parse_aliases",
    "qualify",
]
