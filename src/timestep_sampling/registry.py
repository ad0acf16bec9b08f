"""Name → class registries, and the "name:key=value,key=value" spec strings of the command line."""
from __future__ import annotations

import ast
import inspect
from typing import Callable

from .errors import UserError, require, unknown_choice


def parse_spec(spec: str) -> tuple[str, dict]:
    """"min-snr:gamma=5,prediction=v" → ("min-snr", {"gamma": 5, "prediction": "v"}).

    Values are read as Python literals where they parse as one (numbers, True/False/None, lists),
    otherwise kept as strings.
    """
    require(isinstance(spec, str), f"a spec is a string such as 'min-snr:gamma=5', got {spec!r}")
    name, _, rest = spec.strip().partition(":")
    options = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise UserError(f"cannot read option {item!r} in {spec!r}; expected name:key=value,key=value")
        option = key.strip().replace("-", "_")
        require(option not in options, f"option {key.strip()!r} is given twice in {spec!r}")
        try:
            options[option] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            options[option] = value.strip()
    return name.strip(), options


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Callable] = {}

    def register(self, name: str):
        def add(factory):
            self._entries[name] = factory
            return factory
        return add

    def names(self) -> list[str]:
        return sorted(self._entries)

    def make(self, spec: str, *args, **options):
        """Build the entry named by `spec` (a name or a "name:key=value" spec); keyword options
        override those in the spec. Unknown names and options raise UserError listing the valid ones."""
        name, spec_options = parse_spec(spec)
        if name not in self._entries:
            raise unknown_choice(self.kind, name, self._entries)
        factory = self._entries[name]
        options = {**spec_options, **options}
        check_options(f"{self.kind} {name!r}", factory, options)
        return factory(*args, **options)


def check_options(what: str, factory: Callable, options: dict) -> None:
    """Raise UserError for any keyword `factory` does not accept, naming those it does."""
    params = inspect.signature(factory).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    valid = [n for n, p in params.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL and n != "schedule"]
    for key in options:
        if key not in valid:
            raise unknown_choice(f"option for {what}", key, valid)
