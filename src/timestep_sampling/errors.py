"""The one exception type that means "the user asked for something we cannot do".

The command line prints these as a single line and exits with status 2; anything else is a bug and
keeps its traceback.
"""
from __future__ import annotations

import difflib
from typing import Iterable


class UserError(ValueError):
    """A mistake in the caller's input: a bad name, value, path or file. The message says what was expected."""


def unknown_choice(kind: str, name: str, choices: Iterable[str]) -> UserError:
    """A UserError for an unknown name, listing the valid ones and the closest match."""
    choices = sorted(choices)
    close = difflib.get_close_matches(name, choices, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return UserError(f"unknown {kind} {name!r}{hint}; valid choices: {', '.join(choices)}")


def require(condition: bool, message: str) -> None:
    """Raise UserError(message) unless condition holds."""
    if not condition:
        raise UserError(message)
