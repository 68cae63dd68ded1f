"""Fine-tuning an LM's weights on compiled training data (BetterTogether's "w" step).

- :class:`LoRAFinetuner` (``"lora"``): LoRA on a GGUF model (default: the embedded SmolLM2-135M)
  on CPU with the ``finetune`` extra; the result is served by llama.cpp (``local?lora=...``).
- :class:`OpenAIFinetuner` (``"openai"``): an OpenAI-compatible fine-tuning API, through DSPy's
  provider interface.
- :class:`LocalProvider` / :func:`dspy_lm`: the LoRA finetuner as a DSPy provider, so that
  ``dspy.BootstrapFinetune`` and ``dspy.BetterTogether`` fine-tune the embedded model on CPU.

Both take :class:`autoprompt.export.TrainingData` and return a :class:`FinetuneResult`.
"""

from __future__ import annotations

from typing import Any

from autoprompt._exceptions import FinetuneError
from autoprompt.finetune._base import FINETUNE_FORMAT_VERSION, BaseFinetuner, FinetuneResult
from autoprompt.finetune._dspy import LocalProvider, dspy_lm
from autoprompt.finetune._gguf import write_lora_adapter
from autoprompt.finetune._lora import DEFAULT_TARGET_MODULES, LoRAFinetuner, load_base, require_finetune_extra
from autoprompt.finetune._remote import OpenAIFinetuner

__all__ = [
    "DEFAULT_TARGET_MODULES",
    "FINETUNERS",
    "FINETUNE_FORMAT_VERSION",
    "BaseFinetuner",
    "FinetuneResult",
    "LoRAFinetuner",
    "LocalProvider",
    "OpenAIFinetuner",
    "dspy_lm",
    "get_finetuner",
    "load_base",
    "require_finetune_extra",
    "write_lora_adapter",
]

FINETUNERS: dict[str, type[BaseFinetuner]] = {cls.name: cls for cls in (LoRAFinetuner, OpenAIFinetuner)}


def get_finetuner(finetuner: Any = "lora", **options: Any) -> BaseFinetuner:
    """A finetuner by name (``"lora"`` or ``"openai"``) with constructor options, or the object itself."""
    if isinstance(finetuner, BaseFinetuner):
        if options:
            raise TypeError("options apply to a finetuner given by name, not to a finetuner object")
        return finetuner
    if finetuner not in FINETUNERS:
        raise FinetuneError(f"unknown finetuner {finetuner!r}; choose one of {sorted(FINETUNERS)}")
    from autoprompt._options import check_options

    check_options(FINETUNERS[finetuner], options, f"finetuner {finetuner!r}")
    return FINETUNERS[finetuner](**options)
