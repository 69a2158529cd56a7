"""A repeated game flag that also takes several games after one flag.

``--games Pong --games Breakout``, ``--games Pong,Breakout`` and ``--games Pong Breakout`` all give
``("Pong", "Breakout")``. Click has no variadic options, so :class:`GamesOption` wraps the parser's handler
of its own flag: after the flag's value it takes every following token up to the next one that starts with
``-`` and hands each to click as if the flag had been repeated. Only commands without positional arguments
use it (a greedy flag would swallow them).
"""

from __future__ import annotations

from typing import Any

import click


def split_games(values: Any) -> tuple[str, ...]:
    """Flatten repeated and comma-separated values: ``("Pong,Breakout", "Seaquest")`` -> three games."""
    return tuple(g.strip() for item in values or () for g in str(item).split(",") if g.strip())


class GamesOption(click.Option):
    """``multiple=True`` option whose flag takes every following non-option token too (commas split)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["multiple"] = True
        super().__init__(*args, **kwargs)

    def add_to_parser(self, parser: Any, ctx: click.Context) -> None:
        super().add_to_parser(parser, ctx)
        # click's parser keeps one handler per flag string (``_long_opt``/``_short_opt``, click 8.x); its
        # ``process(value, state)`` appends one value for a ``multiple`` option, and ``state.rargs`` holds the
        # tokens not parsed yet. tests/test_cli_games.py fails if click stops working this way.
        for opt in self.opts:
            handler = parser._long_opt.get(opt) or parser._short_opt.get(opt)
            if handler is None:
                continue
            original = handler.process

            def process(value: Any, state: Any, _original: Any = original) -> None:
                _original(value, state)
                while state.rargs and not state.rargs[0].startswith("-"):
                    _original(state.rargs.pop(0), state)

            handler.process = process

    def process_value(self, ctx: click.Context, value: Any) -> Any:
        raw = super().process_value(ctx, value)
        for item in raw or ():
            if not split_games([item]):  # '' or ',,,': given, but names no game (not "the default games")
                raise click.BadParameter(f"{item!r} names no game: give game names such as Pong,Breakout, "
                                         "or leave the flag out for the default games", ctx=ctx, param=self)
        return split_games(raw)
