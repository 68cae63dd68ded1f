"""The fine-tuning extension point: ``finetune(data, output_dir) -> FinetuneResult``."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import dspy

    from autoprompt.export import TrainingData

__all__ = ["BaseFinetuner", "FinetuneResult", "FINETUNE_FORMAT_VERSION"]

FINETUNE_FORMAT_VERSION = 1


@dataclass
class FinetuneResult:
    """A fine-tuned LM and what it took.

    Attributes:
        lm_spec: the ``lm=`` string that serves the fine-tuned model (``build_lm(lm_spec)``;
            e.g. ``"local?lora=/path/adapter.gguf"`` or a provider's ``"openai/ft:..."``).
        output_dir: where the weights and ``finetune.json`` are (None for remote jobs).
        metrics: losses, steps, examples used, seconds.
        manifest: what ``finetune.json`` records (format version, base model, options, data manifest).
    """

    lm_spec: str
    output_dir: Path | None
    metrics: dict[str, Any] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)
    lm_kwargs: dict[str, Any] = field(default_factory=dict, repr=False)

    def lm(self, **kwargs: Any) -> "dspy.LM":
        """The fine-tuned model as a ``dspy.LM`` (see :func:`autoprompt.build_lm`)."""
        from autoprompt.lms import build_lm

        return build_lm(self.lm_spec, **{**self.lm_kwargs, **kwargs})


class BaseFinetuner(abc.ABC):
    """Trains an LM's weights on compiled training data (BetterTogether's "w" step).

    Subclasses take the model to train and every option in ``__init__``.

    Attributes:
        name: the name the CLI knows it by.
    """

    name: ClassVar[str]

    @abc.abstractmethod
    def finetune(self, data: "TrainingData", output_dir: str | Path) -> FinetuneResult:
        """Train on ``data.train`` (and report on ``data.val``); keep what it writes in ``output_dir``."""

    def options(self) -> dict[str, Any]:
        """The constructor options, as recorded in manifests (never secrets)."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(self).items()
                if not k.startswith("_") and "key" not in k.lower()}
