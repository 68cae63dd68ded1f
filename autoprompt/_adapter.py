"""The DSPy adapter autoprompt optimizes, evaluates, exports and fine-tunes with.

DSPy's ``JSONAdapter`` states each output field's type twice in the system message and once more at
the end of every user message, after the input ("`intent` (must be formatted as a valid Python
Literal['card_arrival', ...])"). For a short type this costs nothing. For a long one -- Banking77's
77 intents render as ~2,000 characters, ~600 tokens -- it does: llama.cpp reuses the evaluated
prompt prefix from one call to the next (the system message, the same for every input), but every
token after the input is evaluated anew, so each call re-reads the whole list. Measured on the
embedded model (``benchmarks/results/adapter_cost.md``): a zero-shot Banking77 example costs 0.33 s
instead of 2.66, with 4 retrieved demos 0.94 s instead of 3.42, at no loss of accuracy (16.9 vs 9.7%,
76.0 vs 74.0% on 154 test rows).

:class:`CompactJSONAdapter` is ``JSONAdapter`` with one change: an output type longer than
``max_type_chars`` characters is referred to ("one of the values listed for it above") instead of
repeated after the input. Shorter types render exactly as DSPy renders them, so the messages of tasks
with short types (SST-2's two labels, Iris's three) are DSPy's own, byte for byte. The answer is
still constrained to the declared values by the JSON schema the LM is called with.
"""

from __future__ import annotations

from typing import Any

import dspy
from dspy.adapters.utils import get_annotation_name

__all__ = ["ADAPTER_NAME", "CompactJSONAdapter", "adapter_named"]

#: the name prompt documents record (``"adapter"``); documents written before it say "JSONAdapter"
ADAPTER_NAME = "CompactJSONAdapter"


class CompactJSONAdapter(dspy.JSONAdapter):
    """DSPy's ``JSONAdapter`` that does not repeat a long output type after every input.

    Args:
        max_type_chars: an output type whose rendered name (e.g. ``Literal['a', 'b']``) is longer
            than this is named once, in the system message, and referred to in the user message.
        **kwargs: passed to ``dspy.JSONAdapter``.

    Example:
        >>> import typing
        >>> many = typing.Literal[tuple(f"label_{i}" for i in range(77))]
        >>> sig = dspy.Signature({"text": (str, dspy.InputField()), "intent": (many, dspy.OutputField())})
        >>> CompactJSONAdapter().user_message_output_requirements(sig)
        'Respond with a JSON object in the following order of fields: `intent` (one of the values listed for it above).'
    """

    def __init__(self, *, max_type_chars: int = 200, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_type_chars = max_type_chars

    def user_message_output_requirements(self, signature: type[dspy.Signature]) -> str:
        message = super().user_message_output_requirements(signature)
        # DSPy's own sentence with each long type's segment replaced: every other field (a short type,
        # a ``str``, DSPy's ToolCalls wording) keeps DSPy's text, so a DSPy release that rewords it
        # changes ours too; if DSPy's segment is not found the type is left in full (longer, not wrong)
        for name, field in signature.output_fields.items():
            type_name = get_annotation_name(field.annotation)
            if len(type_name) > self.max_type_chars:
                message = message.replace(f"`{name}` (must be formatted as a valid Python {type_name})",
                                          f"`{name}` (one of the values listed for it above)")
        return message

    def format_finetune_data(self, signature: type[dspy.Signature], demos: list[dict[str, Any]],
                             inputs: dict[str, Any], outputs: dict[str, Any]) -> dict[str, list[Any]]:
        """One chat record to fine-tune on: the messages this adapter sends for ``inputs``, then ``outputs``
        as the JSON answer it parses.

        DSPy's ``JSONAdapter`` leaves this method unimplemented (``NotImplementedError``), which stops
        ``dspy.BootstrapFinetune`` (and the ``w`` of ``dspy.BetterTogether``) under a JSON adapter. It is
        ``ChatAdapter``'s method (the adapter's messages plus its assistant message), so the records are the
        ones :func:`autoprompt.export.compile_training_data` writes.
        """
        return dspy.ChatAdapter.format_finetune_data(self, signature, demos, inputs, outputs)


def adapter_named(name: str | None) -> dspy.JSONAdapter:
    """The adapter a prompt document names (``None``: autoprompt's), to render what was scored."""
    if name in (None, ADAPTER_NAME):
        return CompactJSONAdapter()
    if name == "JSONAdapter":  # prompt documents written before CompactJSONAdapter
        return dspy.JSONAdapter()
    raise ValueError(f"unknown adapter {name!r}: autoprompt renders with {ADAPTER_NAME!r} or 'JSONAdapter'")
