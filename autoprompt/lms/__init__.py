"""LM backends: turn the ``lm=`` shorthand into a ``dspy.LM``, in one place.

- ``None`` or ``"local"``: the embedded SmolLM2-135M-Instruct, in-process (:class:`LlamaCppEngine`).
- ``"local:/path/model.gguf"``: another GGUF file, in-process.
- ``"local?lora=/path/adapter.gguf"`` (or ``"local:/path/model.gguf?lora=..."``): the model with a
  llama.cpp LoRA adapter, e.g. one written by :class:`autoprompt.finetune.LoRAFinetuner`.
- any other string: a LiteLLM / DSPy model string (``"openai/gpt-4o-mini"``,
  ``"openai/<name>"`` with ``api_base=`` for an OpenAI-compatible server, ``"ollama_chat/..."``).
- a ``dspy.LM`` (used as is) or a :class:`BaseEngine` (wrapped).
- an :class:`LMSpec`: the one value that stores and rebuilds an LM (model, adapter, server; no secret).
"""

from __future__ import annotations

import re
from typing import Any

import dspy

from autoprompt.lms._base import BaseEngine, request_to_messages
from autoprompt.lms._local import LlamaCppEngine, register_engine, smollm2_path
from autoprompt.lms._spec import LMSpec

__all__ = ["BaseEngine", "LMSpec", "LlamaCppEngine", "build_lm", "describe_lm", "request_to_messages", "smollm2_path"]

_local_engines: dict[str, LlamaCppEngine] = {}


def _local_engine(spec: str) -> LlamaCppEngine:
    # one llama.cpp instance per (model file, adapter) and process: loading costs time and memory
    model, _, lora = spec.partition("?lora=")
    path = model[len("local:"):] if model.startswith("local:") else None
    key = f"{path or '<embedded>'}?lora={lora}"
    if key not in _local_engines:
        _local_engines[key] = LlamaCppEngine(path or None, lora_path=lora or None)
        register_engine(_local_engines[key])
    return _local_engines[key]


def build_lm(
    lm: Any = None,
    *,
    max_tokens: int | None = None,
    temperature: float = 0.0,
    cache: bool = True,
    **kwargs: Any,
) -> dspy.LM:
    """Build the ``dspy.LM`` for an ``lm=`` argument.

    Args:
        lm: see the module docstring.
        max_tokens: cap on generated tokens per call (default: 128 for local models, 512 otherwise).
        temperature: sampling temperature (0 = greedy).
        cache: use DSPy's on-disk response cache (see :func:`autoprompt.configure_cache`).
        **kwargs: passed to ``dspy.LM`` for model strings (e.g. ``api_base``, ``api_key``).

    Raises:
        TypeError: ``lm`` is none of the accepted kinds.
    """
    if isinstance(lm, dspy.BaseLM):
        return lm
    if isinstance(lm, LMSpec):  # the spec's own settings stand unless given here
        given = {k: v for k, v in (("max_tokens", max_tokens), ("temperature", temperature), ("cache", cache))
                 if v != {"max_tokens": None, "temperature": 0.0, "cache": True}[k]}
        return lm.build(**given, **kwargs)
    engine: BaseEngine | None = None
    if lm is None:
        engine = _local_engine("local")
    elif isinstance(lm, str) and (lm == "local" or lm.startswith(("local:", "local?"))):
        engine = _local_engine(lm)
    elif isinstance(lm, BaseEngine):
        engine = lm
    elif not isinstance(lm, str) or not lm.strip():
        raise TypeError(
            f"Invalid lm argument: {lm!r}. Pass 'local', 'local:/path/model.gguf', a model string "
            "such as 'openai/gpt-4o-mini', a dspy.LM or an autoprompt.lms.BaseEngine"
        )
    if engine is not None:
        if kwargs:
            raise TypeError(f"{sorted(kwargs)} do not apply to a local model; they configure a remote LM")
        model_id = engine.model_id if hasattr(engine, "model_id") else f"local/{type(engine).__name__}"
        return dspy.LM(
            model_id,
            engine=engine,
            max_tokens=max_tokens or 128,
            temperature=temperature,
            cache=cache,
            num_retries=0,
        )
    from autoprompt._secrets import register_secret, register_url

    for name, value in kwargs.items():  # a key or a URL with a token: redacted by value from now on
        if isinstance(value, str) and value.startswith(("http://", "https://")):
            register_url(value)
        elif not _is_public(name):
            register_secret(value)
    return dspy.LM(lm, max_tokens=max_tokens or 512, temperature=temperature, cache=cache, **kwargs)


def describe_lm(lm: dspy.BaseLM) -> dict[str, Any]:
    """What to record about an LM in run files: never its API key or other secrets."""
    kwargs = {k: v for k, v in getattr(lm, "kwargs", {}).items() if _is_public(k)}
    return {"model": lm.model, "kwargs": kwargs}


_SECRET_NAME = re.compile(r"key|secret|passw|auth|header|credential|cookie|session|(^|_)token($|_)", re.IGNORECASE)


def _is_public(key: str) -> bool:
    """A setting whose name does not say "secret" (``api_key``, ``azure_ad_token``, ``vertex_credentials``,
    ...); ``max_tokens`` is public. Values are redacted anyway (see :mod:`autoprompt._secrets`)."""
    return not _SECRET_NAME.search(key)
