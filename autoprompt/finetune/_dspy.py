"""The local LoRA finetuner behind DSPy's provider interface.

DSPy fine-tunes through ``lm.finetune(train_data, format, train_kwargs)``, which hands the job to
the LM's ``provider``; ``dspy.BootstrapFinetune`` and ``dspy.BetterTogether`` work that way.
:class:`LocalProvider` trains a LoRA with :class:`LoRAFinetuner` on the chat records DSPy built and
returns the fine-tuned model's id; DSPy then copies the LM onto that id, and the local engine
serves it with the adapter. So DSPy's own optimizers fine-tune the embedded model on CPU::

    lm = autoprompt.finetune.dspy_lm()                 # the embedded model, finetunable
    student.set_lm(lm)
    dspy.BetterTogether(metric, p=dspy.BootstrapFewShot(metric), w=dspy.BootstrapFinetune(metric))
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from autoprompt._exceptions import FinetuneError

__all__ = ["LocalProvider", "dspy_lm"]

logger = logging.getLogger(__name__)


def _provider_base() -> type:
    from dspy.clients.provider import Provider

    return Provider


class LocalProvider(_provider_base()):  # type: ignore[misc]
    """A DSPy ``Provider`` that fine-tunes local GGUF models with :class:`LoRAFinetuner`.

    ``train_kwargs`` (DSPy's per-job options) are ``LoRAFinetuner`` options plus ``output_dir``
    (default: a new temporary folder) and ``val_fraction`` (default 0.1 when there are 20 records or
    more: the checkpoint is chosen by validation accuracy).
    """

    def __init__(self) -> None:
        super().__init__()
        self.finetunable = True

    @staticmethod
    def is_provider_model(model: str) -> bool:
        return model.startswith("local/")

    @staticmethod
    def finetune(job: Any, model: str, train_data: list[dict[str, Any]], train_data_format: Any,
                 train_kwargs: dict[str, Any] | None = None) -> str:
        from autoprompt.export import TrainingData, split_validation
        from autoprompt.finetune._lora import LoRAFinetuner
        from autoprompt.lms import LlamaCppEngine, register_engine

        options = dict(train_kwargs or {})
        out = Path(options.pop("output_dir", None) or tempfile.mkdtemp(prefix="autoprompt-dspy-ft-"))
        records = [{"predictor": "dspy", "messages": r["messages"], "example": i} for i, r in enumerate(train_data)
                   if "messages" in r]
        if not records:
            raise FinetuneError(f"DSPy sent no chat records to fine-tune on (format {train_data_format!r}); "
                                "only chat data is supported")
        fraction = options.pop("val_fraction", 0.1 if len(records) >= 20 else 0.0)
        train, val = split_validation(records, fraction, options.get("seed", 0))
        base = _base_engine(model)
        data = TrainingData(train=train, val=val, counts={"records": len(records)},
                            manifest={"format": "autoprompt.training-data", "source_program": "dspy", "lm": model})
        tuner = LoRAFinetuner(base_model=base.model_path, **{"progress": False, **options})
        result = tuner.finetune(data, out)
        adapter = result.lm_spec.partition("?lora=")[2]
        tuned = LlamaCppEngine(base.model_path, lora_path=adapter, n_threads=base.n_threads,
                               quantization=base.quantization)
        logger.info("DSPy fine-tune of %s: %s", model, result.lm_spec)
        return register_engine(tuned)


def _base_engine(model: str) -> Any:
    from autoprompt.lms._local import engine_for

    engine = engine_for(model)
    if engine is None:
        raise FinetuneError(f"LocalProvider fine-tunes local models built by autoprompt; {model!r} is not one "
                            "(use autoprompt.finetune.dspy_lm())")
    return engine


def dspy_lm(lm: Any = "local", **kwargs: Any) -> Any:
    """A local ``dspy.LM`` that DSPy can fine-tune (``provider=LocalProvider()``).

    Example:
        >>> lm = dspy_lm()                                  # doctest: +SKIP
        >>> dspy.BootstrapFinetune(metric).compile(student.set_lm(lm) or student, trainset=rows)  # doctest: +SKIP
    """
    from autoprompt.lms import build_lm

    built = build_lm(lm, **kwargs)
    built.provider = LocalProvider()
    return built
