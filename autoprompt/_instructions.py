"""Instructions written from a signature alone, without an LM: the same task said several ways.

Used by the Optuna search as LM-free instruction candidates (``OptunaSearch(n_templates=)``: a 135M
proposer mostly echoes its input) and by :func:`autoprompt.decide` to measure wording sensitivity.
"""

from __future__ import annotations

from typing import Any, Sequence

__all__ = ["paraphrases"]


def paraphrases(signature: Any, choices: Sequence[str] | None) -> list[str]:
    """Rewordings of a signature's instruction, made from the signature alone (no LM): the same task
    said five ways. The first is the instruction itself.

    Example:
        >>> import dspy
        >>> class S(dspy.Signature):
        ...     '''Classify the sentiment of a review.'''
        ...     text: str = dspy.InputField()
        ...     label: str = dspy.OutputField()
        >>> paraphrases(S, ["negative", "positive"])[2]
        'Given the text, answer with the label: negative or positive.'
    """
    doc = (signature.instructions or "").strip()
    inputs = ", ".join(signature.input_fields)
    outputs = ", ".join(signature.output_fields)
    options = ""
    if choices:
        shown = [str(c) for c in choices[:12]]
        options = (", ".join(shown[:-1]) + f" or {shown[-1]}") if len(shown) > 1 else shown[0]
        if len(choices) > 12:
            options = ", ".join(shown) + ", ... (one of the allowed values)"
    answer = f": {options}" if options else ""
    out = [
        doc,
        f"{doc} Answer with the {outputs} only.",
        f"Given the {inputs}, answer with the {outputs}{answer}.",
        f"Task: {(doc[0].lower() + doc[1:]).rstrip('.') if doc else 'answer'}. Read the {inputs} carefully before "
        "answering.",
        f"You are a careful annotator. Read the {inputs} and decide the {outputs}{answer}.",
    ]
    seen: list[str] = []
    for text in out:
        if text and text not in seen:
            seen.append(text)
    return seen
