"""The LM backend extension point.

A backend is a DSPy 3.4 custom engine: ``complete(dspy.lm15.Request) -> dspy.lm15.Response``.
:class:`BaseEngine` adds what every autoprompt backend shares: plain chat messages from a
request, and the LM-call budget (see :class:`autoprompt.usage.Meter`).
"""

from __future__ import annotations

import abc
from typing import Any

from autoprompt.usage import current_meter

__all__ = ["BaseEngine", "request_to_messages"]


def request_to_messages(request: Any) -> list[dict[str, str]]:
    """Flatten an lm15 request into OpenAI-style ``[{"role", "content"}]`` text messages."""
    messages: list[dict[str, str]] = []
    system = request.system
    if system is not None:
        text = system if isinstance(system, str) else "".join(getattr(p, "text", "") for p in system)
        messages.append({"role": "system", "content": text})
    for message in request.messages:
        role = "system" if message.role == "developer" else message.role
        text = message.text
        if text is None:
            text = "".join(getattr(p, "text", "") or "" for p in message.parts)
        messages.append({"role": role, "content": text})
    return messages


class BaseEngine(abc.ABC):
    """One LM backend. Subclasses implement :meth:`_complete`; :meth:`complete` checks the budget."""

    #: capability hints read by DSPy's adapters (dspy.clients.capabilities)
    supports_function_calling = False
    supports_reasoning = False
    supports_response_schema = False
    supported_params: frozenset[str] = frozenset({"temperature", "max_tokens", "stop"})

    def complete(self, request: Any) -> Any:
        meter = current_meter()
        if meter is not None:
            meter.check()
        return self._complete(request)

    @abc.abstractmethod
    def _complete(self, request: Any) -> Any:
        """Answer one request (no budget logic here)."""
