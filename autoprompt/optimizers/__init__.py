"""Optimizers, by name.

=================  =====================================================================
name               what it runs
=================  =====================================================================
``optuna``         autoprompt's Optuna search (default): :class:`OptunaSearch`
``labeled``        k labelled demos (DSPy LabeledFewShot): :class:`LabeledFewShot`
``bootstrap``      DSPy BootstrapFewShot: :class:`BootstrapFewShot`
``random-search``  DSPy BootstrapFewShotWithRandomSearch: :class:`RandomSearch`
``mipro``          DSPy MIPROv2: :class:`MIPROv2`
``gepa``           DSPy GEPA (reflective prompt evolution): :class:`GEPA`
``simba``          DSPy SIMBA (stochastic mini-batch ascent): :class:`SIMBA`
=================  =====================================================================
"""

from __future__ import annotations

from typing import Any

from autoprompt.optimizers._base import BaseOptimizer, Context
from autoprompt.optimizers._dspy import GEPA, SIMBA, MIPROv2, BootstrapFewShot, RandomSearch
from autoprompt.optimizers._labeled import LabeledFewShot
from autoprompt.optimizers.optuna import OptunaSearch

__all__ = [
    "OPTIMIZERS",
    "BaseOptimizer",
    "BootstrapFewShot",
    "Context",
    "GEPA",
    "LabeledFewShot",
    "MIPROv2",
    "OptunaSearch",
    "RandomSearch",
    "SIMBA",
    "get_optimizer",
    "optimizer_from_config",
]

OPTIMIZERS: dict[str, type[BaseOptimizer]] = {
    cls.name: cls for cls in (OptunaSearch, LabeledFewShot, BootstrapFewShot, RandomSearch, MIPROv2, GEPA, SIMBA)
}


def get_optimizer(optimizer: Any = None, **options: Any) -> BaseOptimizer:
    """Turn an ``optimizer=`` argument (a name or an instance) into an optimizer object.

    Raises:
        TypeError: unknown name; :class:`autoprompt.OptionError` (a ``TypeError`` too): an option the
            optimizer does not take, or a value of the wrong type.
    """
    if isinstance(optimizer, BaseOptimizer):
        if options:
            raise TypeError(f"options {sorted(options)} given with an optimizer object; set them on the object")
        return optimizer
    name = optimizer or "optuna"
    if not isinstance(name, str) or name not in OPTIMIZERS:
        raise TypeError(f"Invalid optimizer argument: {optimizer!r}; use one of {sorted(OPTIMIZERS)} or a BaseOptimizer")
    from autoprompt._options import check_options

    check_options(OPTIMIZERS[name], options, f"optimizer {name!r}")  # OptionError: one line naming the option
    return OPTIMIZERS[name](**options)


def optimizer_from_config(record: dict[str, Any], **overrides: Any) -> BaseOptimizer:
    """Rebuild the optimizer a run's ``config.json`` records (``{"name", "options"}``)."""
    options = {**record.get("options", {}), **{k: v for k, v in overrides.items() if v is not None}}
    for key in ("minibatches", "temperatures"):  # JSON has no tuples
        if isinstance(options.get(key), list):
            options[key] = tuple(options[key])
    return get_optimizer(record["name"], **options)
