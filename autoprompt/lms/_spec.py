"""One value for "which LM": model, adapter, server and decoding settings, never a secret.

An :class:`LMSpec` is what run files store and what BetterTogether steps hand on; ``spec.build()``
turns it into the ``dspy.LM`` (through :func:`autoprompt.build_lm`, the one place that does), and
``LMSpec.from_dict(spec.to_dict()) == spec``. An API key is held in memory only (``api_key``, not in
``to_dict``/``repr``), or named by ``api_key_env`` and read from the environment when built.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

__all__ = ["LMSpec"]

LMSPEC_FORMAT_VERSION = 1


@dataclass(frozen=True)
class LMSpec:
    """Everything that rebuilds an LM.

    Args:
        model: ``"local"`` (the embedded SmolLM2-135M), ``"local:/path/model.gguf"``, or a
            LiteLLM / DSPy model string (``"openai/gpt-4o-mini"``, ``"hosted_vllm/<name>"``).
        adapter: a llama.cpp LoRA adapter (GGUF) on top of a local model.
        api_base: base URL of an OpenAI-compatible server.
        api_key_env: the environment variable holding the API key (its name is stored, not its value).
        api_key: the key itself, kept in memory only (never in ``to_dict``, ``repr`` or files).
        kwargs: further ``dspy.LM`` settings (``temperature``, ``max_tokens``, ...).

    Example:
        >>> spec = LMSpec.parse("local?lora=/tmp/a.gguf")
        >>> spec.adapter, str(spec), spec.base() == LMSpec("local")
        ('/tmp/a.gguf', 'local?lora=/tmp/a.gguf', True)
    """

    model: str = "local"
    adapter: str | None = None
    api_base: str | None = None
    api_key_env: str | None = None
    api_key: str | None = field(default=None, repr=False, compare=False)
    kwargs: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        from autoprompt._secrets import register_secret, register_url

        register_secret(self.api_key)  # never written anywhere: redacted by value from every file and log
        register_url(self.api_base)

    @classmethod
    def parse(cls, value: Any, **settings: Any) -> "LMSpec":
        """An ``lm=`` string (``"local?lora=..."`` included), ``None`` or an LMSpec, as an LMSpec."""
        if isinstance(value, LMSpec):
            return replace(value, **settings) if settings else value
        if value is None:
            value = "local"
        if not isinstance(value, str) or not value.strip():
            raise TypeError(f"Invalid lm argument: {value!r}; pass 'local', a model string or an LMSpec")
        model, _, adapter = value.partition("?lora=")
        known = {k: settings.pop(k) for k in ("api_base", "api_key_env", "api_key") if k in settings}
        return cls(model=model, adapter=adapter or None, kwargs=tuple(sorted(settings.items())), **known)

    @property
    def is_local(self) -> bool:
        return self.model == "local" or self.model.startswith("local:")

    @property
    def base_model(self) -> Path | None:
        """The GGUF file of a ``local:/path`` model (None for the embedded model and remote LMs)."""
        return Path(self.model[len("local:"):]) if self.model.startswith("local:") else None

    def base(self) -> "LMSpec":
        """The same LM without its adapter (what a new fine-tune starts from)."""
        return replace(self, adapter=None)

    def with_adapter(self, adapter: str | os.PathLike) -> "LMSpec":
        return replace(self, adapter=str(Path(adapter).resolve()))

    def __str__(self) -> str:
        """The ``lm=`` string (without server settings)."""
        return f"{self.model}?lora={self.adapter}" if self.adapter else self.model

    def build(self, **overrides: Any) -> Any:
        """The ``dspy.LM`` (a local model's llama.cpp instance is shared within the process)."""
        from autoprompt.lms import build_lm

        kwargs = {**dict(self.kwargs), **overrides}
        if self.is_local:
            return build_lm(str(self), **kwargs)
        if self.adapter:
            raise TypeError(f"an adapter applies to a local model only, not to {self.model!r}")
        key = self.api_key or (os.environ.get(self.api_key_env) if self.api_key_env else None)
        if key is not None:
            from autoprompt._secrets import register_secret

            register_secret(key)
        if self.api_key_env and key is None:
            from autoprompt._exceptions import LMError

            raise LMError(f"the API key variable ${self.api_key_env} is not set; export it or pass another one")
        server = {k: v for k, v in (("api_base", self.api_base), ("api_key", key)) if v is not None}
        if self.api_base and "api_key" not in server:
            server["api_key"] = "none"
        return build_lm(self.model, **server, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        """What run files store: no API key (its variable's name at most)."""
        out: dict[str, Any] = {"format_version": LMSPEC_FORMAT_VERSION, "model": self.model}
        for name in ("adapter", "api_base", "api_key_env"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        if self.kwargs:
            out["kwargs"] = dict(self.kwargs)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], **secrets: Any) -> "LMSpec":
        from autoprompt._exceptions import RunError

        version = data.get("format_version")
        if version != LMSPEC_FORMAT_VERSION:
            raise RunError(f"LM record format_version {version!r} is not {LMSPEC_FORMAT_VERSION}: "
                           "written by another autoprompt version")
        return cls(model=data["model"], adapter=data.get("adapter"), api_base=data.get("api_base"),
                   api_key_env=data.get("api_key_env"), kwargs=tuple(sorted((data.get("kwargs") or {}).items())),
                   **secrets)
