"""CompactJSONAdapter: DSPy's JSONAdapter without a long output type repeated after every input."""

from __future__ import annotations

import typing

import dspy
import pytest

import autoprompt
from autoprompt import CompactJSONAdapter
from autoprompt.export import prompt_document, render_messages

from .conftest import TASKS

CHOICE = "card_payment_not_recognised"  # one of Banking77's 77 intents


@pytest.mark.parametrize("name", ["sentiment", "iris"])
def test_short_output_types_render_exactly_as_dspy_renders_them(name):
    task = autoprompt.load_task(TASKS / f"{name}.py")
    examples = task.examples("train", limit=3)
    demos, query = examples[:2], examples[2].inputs()
    assert (CompactJSONAdapter().format(task.signature, demos, dict(query))
            == dspy.JSONAdapter().format(task.signature, demos, dict(query)))


def test_a_long_output_type_is_stated_in_the_system_message_and_not_after_every_input():
    task = autoprompt.load_task(TASKS / "banking77.py")
    query = {"text": "I lost my card yesterday, what do I do?"}
    ours = CompactJSONAdapter().format(task.signature, [], query)
    theirs = dspy.JSONAdapter().format(task.signature, [], query)
    assert ours[0] == theirs[0] and CHOICE in ours[0]["content"]  # the system message: DSPy's, every intent
    assert CHOICE in theirs[-1]["content"] and CHOICE not in ours[-1]["content"]
    assert ours[-1]["content"].endswith("`intent` (one of the values listed for it above).")
    assert len(theirs[-1]["content"]) - len(ours[-1]["content"]) > 1500


def test_only_the_long_type_is_shortened_and_the_threshold_is_a_parameter():
    many = typing.Literal[tuple(f"intent_{i}" for i in range(60))]
    sig = dspy.Signature({"text": (str, dspy.InputField()), "intent": (many, dspy.OutputField()),
                          "urgent": (bool, dspy.OutputField()), "note": (str, dspy.OutputField())})
    text = CompactJSONAdapter().user_message_output_requirements(sig)
    assert text == ("Respond with a JSON object in the following order of fields: `intent` (one of the values "
                    "listed for it above), then `urgent` (must be formatted as a valid Python bool), then `note`.")
    roomy = CompactJSONAdapter(max_type_chars=10_000)
    assert roomy.user_message_output_requirements(sig) == dspy.JSONAdapter().user_message_output_requirements(sig)


def test_fields_beside_a_long_type_keep_dspys_wording_tool_calls_included():
    many = typing.Literal[tuple(f"intent_{i}" for i in range(60))]
    sig = dspy.Signature({"text": (str, dspy.InputField()), "intent": (many, dspy.OutputField()),
                          "calls": (dspy.ToolCalls, dspy.OutputField())})
    theirs = dspy.JSONAdapter().user_message_output_requirements(sig)
    ours = CompactJSONAdapter().user_message_output_requirements(sig)
    tool_wording = theirs[theirs.index("`calls`"):]
    assert '"tool_calls"' in tool_wording and ours.endswith(tool_wording)
    assert ours.startswith("Respond with a JSON object in the following order of fields: `intent` (one of the values")


def test_prompt_documents_name_their_adapter_and_render_with_it():
    task = autoprompt.load_task(TASKS / "banking77.py")
    document = prompt_document(task.make_program(), task=task)
    assert document["adapter"] == "CompactJSONAdapter"
    query = {"text": "where is my card?"}
    assert render_messages(document, query) == CompactJSONAdapter().format(task.signature, [], query)
    older = {**document, "adapter": "JSONAdapter"}  # a prompt exported before CompactJSONAdapter
    assert render_messages(older, query) == dspy.JSONAdapter().format(task.signature, [], query)
    with pytest.raises(autoprompt.ExportError, match="'adapter'.*'ChatAdapter'"):
        render_messages({**document, "adapter": "ChatAdapter"}, query)


def test_the_embedded_model_still_answers_one_of_the_declared_intents(lm):
    from autoprompt.evaluate import evaluate_program

    task = autoprompt.load_task(TASKS / "banking77.py")
    with dspy.context(lm=lm, adapter=CompactJSONAdapter()):
        ev = evaluate_program(task.make_program(), task, "test", limit=4, progress=False)
    assert ev.n == 4 and ev.parse_failures == 0 and ev.errors == 0
    choices = set(typing.get_args(task.signature.output_fields["intent"].annotation))
    assert all(record["predicted"] in choices for record in ev.records)


def test_dspy_bootstrap_finetune_builds_the_records_autoprompt_exports():
    """DSPy's JSONAdapter raises NotImplementedError in format_finetune_data, which stopped the `w` of
    dspy.BetterTogether under a JSON adapter; CompactJSONAdapter's gives the export's records."""
    from dspy.teleprompt.bootstrap_finetune import build_call_data_from_trace

    from autoprompt.export import compile_training_data

    task = autoprompt.load_task(TASKS / "iris.py")
    program = task.make_program()
    data = compile_training_data(program, task, answers="gold", balance=False, limit=4, val_fraction=0,
                                 progress=False)
    (predictor,) = program.predictors()
    examples = task.examples("train", limit=4)
    assert len(data.train) == len(examples) == 4
    for record, example in zip(data.train, examples):
        outputs = {k: example[k] for k in task.signature.output_fields}
        built = build_call_data_from_trace(trace=[(predictor, dict(example.inputs()), outputs)], pred_ind=0,
                                           adapter=CompactJSONAdapter(), exclude_demos=True)
        assert built == {"messages": record["messages"]}
        answer = dspy.JSONAdapter().format_assistant_message_content(task.signature, outputs)
        assert record["messages"][-1] == {"role": "assistant", "content": answer}
    with pytest.raises(NotImplementedError):  # DSPy's own; when DSPy implements it, this override can go
        dspy.JSONAdapter().format_finetune_data(task.signature, [], dict(examples[0].inputs()), outputs)
