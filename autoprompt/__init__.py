"""autoprompt: find the best prompt for your LM with DSPy optimizers and Optuna trials.

Example:
    >>> import autoprompt
    >>> task = autoprompt.load_task("tasks/sentiment.py")          # doctest: +SKIP
    >>> result = autoprompt.optimize(task, lm="local", seed=0)      # doctest: +SKIP
    >>> result.baseline_score, result.best_score                    # doctest: +SKIP
    >>> result.evaluate("test")                                     # doctest: +SKIP
"""

import os as _os

# Offline by default: DSPy (as LiteLLM did) fetches a model price map from GitHub on the first remote LM
# call unless told to use its bundled copy; a user who wants the live map sets the variable to "false".
_os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from autoprompt._adapter import CompactJSONAdapter
from autoprompt._exceptions import (
    AutopromptError,
    BudgetExhausted,
    DataError,
    ExportError,
    FinetuneError,
    LMError,
    MissingExtraError,
    OptionError,
    RunError,
    TaskError,
)
from autoprompt._version import __version__
from autoprompt.bettertogether import BetterTogetherResult, better_together
from autoprompt.decision import Decision, decide
from autoprompt.export import export_prompt, load_prompt, render_messages
from autoprompt.lms import build_lm
from autoprompt.run import Result, configure_cache, optimize
from autoprompt.store import RunStore
from autoprompt.task import Task, exact_match, load_task
from autoprompt.usage import Budget

__all__ = [
    "AutopromptError",
    "BetterTogetherResult",
    "Budget",
    "BudgetExhausted",
    "CompactJSONAdapter",
    "DataError",
    "Decision",
    "ExportError",
    "FinetuneError",
    "LMError",
    "MissingExtraError",
    "OptionError",
    "Result",
    "RunError",
    "RunStore",
    "Task",
    "TaskError",
    "__version__",
    "better_together",
    "build_lm",
    "configure_cache",
    "decide",
    "exact_match",
    "export_prompt",
    "load_prompt",
    "load_task",
    "optimize",
    "render_messages",
]
