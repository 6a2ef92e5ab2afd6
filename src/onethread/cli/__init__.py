"""The ``onethread`` command: ``run``, ``chat``, ``identity``, ``history``, ``access``.

One module per group of subcommands (:mod:`.run`, :mod:`.history`,
:mod:`.identity`), the parser and entry point in :mod:`.main`, what they share
in :mod:`.common`.
"""

from __future__ import annotations

from .main import build_parser, main

__all__ = ["build_parser", "main"]
