"""Fine-tuning a hosted model through DSPy's provider interface (OpenAI-compatible APIs).

``dspy.LM(model, provider=dspy.OpenAIProvider()).finetune(...)`` uploads the chat JSONL to
``/files``, creates a job at ``/fine_tuning/jobs`` and polls it until it ends; the result is the
fine-tuned model's name. DSPy's provider talks through the ``openai`` package's module-level client,
so ``api_base``/``api_key`` are set on that client for the duration of the job and restored after.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from autoprompt._exceptions import FinetuneError
from autoprompt._version import __version__
from autoprompt.finetune._base import FINETUNE_FORMAT_VERSION, BaseFinetuner, FinetuneResult

__all__ = ["OpenAIFinetuner"]

logger = logging.getLogger(__name__)

_client_lock = threading.Lock()


class OpenAIFinetuner(BaseFinetuner):
    """Fine-tune a model behind an OpenAI-compatible fine-tuning API.

    Args:
        model: the model to fine-tune, as an ``openai/<name>`` model string.
        api_base: the API's base URL (default: the ``openai`` package's, i.e. ``$OPENAI_BASE_URL``
            or api.openai.com).
        api_key: the API key (default: ``$OPENAI_API_KEY``). Never written to any file.
        hyperparameters: sent as the job's ``hyperparameters`` (e.g. ``{"n_epochs": 2}``).

    Example:
        >>> tuner = OpenAIFinetuner("openai/gpt-4o-mini-2024-07-18")   # doctest: +SKIP
        >>> result = tuner.finetune(training_data, "runs/ft")          # doctest: +SKIP
        >>> result.lm_spec                                             # doctest: +SKIP
        'openai/ft:gpt-4o-mini-2024-07-18:org::abc123'
    """

    name = "openai"

    def __init__(
        self,
        model: str,
        *,
        api_base: str | None = None,
        api_key: str | None = None,
        hyperparameters: dict[str, Any] | None = None,
    ) -> None:
        if not model.startswith("openai/"):
            raise FinetuneError(
                f"model must be an 'openai/<name>' model string for an OpenAI-compatible API, got {model!r}")
        self.model = model
        self.api_base = api_base
        self._api_key = api_key
        self.hyperparameters = dict(hyperparameters or {})

    def finetune(self, data: Any, output_dir: str | Path | None = None) -> FinetuneResult:
        """Upload ``data.train`` as chat JSONL, run the provider's job, wait for the model.

        Raises:
            FinetuneError: no training data, or the provider's job failed (its message included).
        """
        import dspy
        import openai
        from dspy.clients.openai import OpenAIProvider
        from dspy.clients.utils_finetune import TrainDataFormat

        from autoprompt.store import atomic_write, dump_json

        if not data.train:
            raise FinetuneError(f"no training examples to upload (counts: {data.counts})")
        started = time.monotonic()
        rows = [{"messages": record["messages"]} for record in data.train]
        lm = dspy.LM(self.model, provider=OpenAIProvider())
        with _client_lock:
            saved = openai.base_url, openai.api_key
            try:
                if self.api_base:
                    openai.base_url = self.api_base.rstrip("/") + "/"
                if self._api_key:
                    openai.api_key = self._api_key
                openai._reset_client()
                logger.info("uploading %d examples and starting a fine-tuning job for %s", len(rows), self.model)
                job = lm.finetune(train_data=rows, train_data_format=TrainDataFormat.CHAT,
                                  train_kwargs=self.hyperparameters)
                outcome = job.result()
            finally:
                openai.base_url, openai.api_key = saved
                openai._reset_client()
        if isinstance(outcome, Exception):
            raise FinetuneError(f"the fine-tuning job for {self.model} failed: {outcome}")
        tuned = outcome.model if outcome.model.startswith("openai/") else f"openai/{outcome.model}"
        metrics = {"examples": len(rows), "seconds": round(time.monotonic() - started, 1),
                   "provider_job_id": getattr(job, "provider_job_id", None),
                   "provider_file_id": getattr(job, "provider_file_id", None)}
        manifest = {
            "format": "autoprompt.finetune",
            "format_version": FINETUNE_FORMAT_VERSION,
            "autoprompt_version": __version__,
            "finetuner": self.name,
            "base_model": {"model": self.model, "api_base": self.api_base},
            "fine_tuned_model": tuned,
            "options": self.options(),
            "data": data.manifest,
            "metrics": metrics,
        }
        out = None
        if output_dir is not None:
            out = Path(output_dir)
            out.mkdir(parents=True, exist_ok=True)
            atomic_write(out / "finetune.json", dump_json(manifest))
        logger.info("fine-tuned model %s ready after %.0f s", tuned, metrics["seconds"])
        lm_kwargs = {k: v for k, v in (("api_base", self.api_base), ("api_key", self._api_key)) if v}
        return FinetuneResult(lm_spec=tuned, output_dir=out, metrics=metrics, manifest=manifest, lm_kwargs=lm_kwargs)
