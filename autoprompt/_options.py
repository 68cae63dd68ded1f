"""Checking user options against the constructor that takes them: names and simple types.

Options reach constructors from the CLI (``--option n_trials=8``) and from scripts. A misspelt
name or a value of the wrong type used to surface as a ``TypeError`` deep inside the optimizer (or
Optuna); :func:`check_options` turns it into one :class:`OptionError` that names the option, the
type it takes and the valid names, before any work.
"""

from __future__ import annotations

import inspect
import typing
from typing import Any, Callable

from autoprompt._exceptions import OptionError

__all__ = ["OptionError", "check_options"]


def check_options(target: Callable[..., Any], options: dict[str, Any], what: str) -> None:
    """Raise :class:`OptionError` for an unknown option name or a value whose type does not fit.

    Args:
        target: a class (its ``__init__`` is read) or a function.
        options: the keyword arguments about to be passed.
        what: how the message names the taker, e.g. ``"optimizer 'optuna'"``.

    Example:
        >>> def f(n_trials: int = 8, seed: int | None = None): ...
        >>> check_options(f, {"n_trials": "abc"}, "optimizer 'x'")
        Traceback (most recent call last):
        ...
        autoprompt._exceptions.OptionError: optimizer 'x': option n_trials takes int, got 'abc' (str)
    """
    function = target.__init__ if inspect.isclass(target) else target
    signature = inspect.signature(function)
    params = {n: p for n, p in signature.parameters.items() if n != "self"
              and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    takes_any = any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values())
    try:
        hints = typing.get_type_hints(function)
    except Exception:  # an annotation that does not evaluate here: check names only
        hints = {}
    for name, value in options.items():
        if name not in params:
            if takes_any:
                continue
            raise OptionError(f"{what} takes no option {name!r}; its options are {', '.join(sorted(params))}")
        hint = hints.get(name)
        if hint is not None and not _fits(value, hint):
            raise OptionError(f"{what}: option {name} takes {_describe(hint)}, got {value!r} ({type(value).__name__})")


def _fits(value: Any, hint: Any) -> bool:
    """Whether ``value`` fits a simple annotation; anything not understood fits."""
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin is typing.Union or (origin is not None and type(hint).__name__ == "UnionType"):
        return any(_fits(value, h) for h in typing.get_args(hint))
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    base = origin or hint
    if base in (list, tuple, typing.Sequence) or getattr(base, "__name__", "") == "Sequence":
        return isinstance(value, (list, tuple))
    if base is dict or getattr(base, "__name__", "") == "Mapping":
        return isinstance(value, dict)
    return True


def _describe(hint: Any) -> str:
    args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if origin is typing.Union or (origin is not None and type(hint).__name__ == "UnionType"):
        return " or ".join(_describe(a) for a in args)
    if hint is type(None):
        return "None"
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
