"""Exported prompts: the JSON loads back with the same score; the rendered messages, sent to the
LM without DSPy, get the same answers as the program; files are versioned and deterministic."""

from __future__ import annotations

import json

import dspy
import pytest

import autoprompt
from autoprompt import ExportError
from autoprompt.evaluate import evaluate_program
from autoprompt.export import EXPORTERS, export_prompt, prompt_document, read_prompt, render_messages
from autoprompt.lms import LlamaCppEngine


@pytest.fixture
def optimized(small_task):
    """A program with a non-default instruction and balanced labelled demos."""
    program = small_task.make_program()
    predictor = program.predictors()[0]
    predictor.signature = predictor.signature.with_instructions("Is the review positive or negative?")
    train = small_task.examples("train")
    pos = [e for e in train if e.label == "positive"][:2]
    neg = [e for e in train if e.label == "negative"][:2]
    predictor.demos = [pos[0], neg[0], pos[1], neg[1]]
    return program


def test_json_round_trip_scores_the_same(lm, small_task, optimized, tmp_path):
    document = prompt_document(optimized, task=small_task, meta={"seed": 0})
    path = export_prompt(document, tmp_path / "prompt.json", format="json")
    reloaded = autoprompt.load_prompt(path, small_task)
    assert reloaded.predictors()[0].signature.instructions == "Is the review positive or negative?"
    assert len(reloaded.predictors()[0].demos) == 4
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
        before = evaluate_program(optimized, small_task, "dev", progress=False)
        after = evaluate_program(reloaded, small_task, "dev", progress=False)
    assert after.score == before.score
    assert [r["predicted"] for r in after.records] == [r["predicted"] for r in before.records]


def test_rendered_messages_sent_without_dspy_get_the_same_answers(lm, small_task, optimized, tmp_path):
    """The fix for hand-copied DSPy prompts losing accuracy: the exported messages are the prompt."""
    path = export_prompt(prompt_document(optimized, task=small_task), tmp_path / "p.messages.json", format="messages")
    exported = json.loads(path.read_text())
    entry = exported["predictors"][0]
    schema = entry["response_format"]["json_schema"]["schema"]
    engine = LlamaCppEngine()  # a separate llama.cpp instance; no DSPy below this line
    agree = 0
    examples = small_task.examples("test")[:8]
    for example in examples:
        messages = [
            {"role": m["role"], "content": m["content"].replace("{{text}}", example.text)} for m in entry["messages"]
        ]
        raw = engine.chat(messages, response_format={"type": "json_object", "schema": schema}, max_tokens=128)
        answer = json.loads(raw["choices"][0]["message"]["content"])["label"]
        with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
            expected = optimized(text=example.text).label
        agree += answer == expected
    assert agree == len(examples)


def test_per_input_demos_rendered_and_sent_without_dspy_get_the_same_answers(lm, small_task, tmp_path):
    """A prompt whose demos are retrieved per input: the json export reloads to the same answers, and the
    messages ``render_messages`` builds for each input, sent raw to llama.cpp, get the program's answers."""
    from autoprompt._retrieval import Retriever, attach

    program = small_task.make_program()
    pool = [{"text": e.text, "label": e.label} for e in small_task.examples("train")]
    attach(program.predictors()[0], Retriever(pool, ["text"], k=3))
    path = export_prompt(prompt_document(program, task=small_task), tmp_path / "prompt.json", format="json")
    document = read_prompt(path)
    reloaded = autoprompt.load_prompt(path, small_task)
    schema = json.loads(export_prompt(document, tmp_path / "m.json", format="messages").read_text())[
        "predictors"][0]["response_format"]["json_schema"]["schema"]
    engine = LlamaCppEngine()
    examples = small_task.examples("test")[:6]
    for example in examples:
        messages = render_messages(document, {"text": example.text})
        assert len(messages) == 2 + 2 * 3
        raw = engine.chat(messages, response_format={"type": "json_object", "schema": schema}, max_tokens=128)
        answer = json.loads(raw["choices"][0]["message"]["content"])["label"]
        with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
            assert program(text=example.text).label == answer
            assert reloaded(text=example.text).label == answer


def test_render_messages_fills_inputs(small_task, optimized):
    document = prompt_document(optimized, task=small_task)
    filled = render_messages(document, {"text": "what a film"})
    templated = render_messages(document)
    assert filled[-1]["content"] == templated[-1]["content"].replace("{{text}}", "what a film")
    assert len(filled) == 1 + 2 * 4 + 1  # system, 4 demo pairs, the question
    with pytest.raises(ExportError, match="inputs \\['text'\\] are missing"):
        render_messages(document, {})


def test_text_format_holds_instruction_and_demos(small_task, optimized, tmp_path):
    path = export_prompt(prompt_document(optimized, task=small_task), tmp_path / "p.txt", format="text")
    text = path.read_text()
    assert "Is the review positive or negative?" in text
    assert "{{text}}" in text
    for demo in optimized.predictors()[0].demos:
        assert demo.text in text


def test_files_are_versioned_and_deterministic(small_task, optimized, tmp_path):
    document = prompt_document(optimized, task=small_task, meta={"seed": 3})
    for name in EXPORTERS:
        a = export_prompt(document, tmp_path / f"a-{name}", format=name).read_bytes()
        b = export_prompt(document, tmp_path / f"b-{name}", format=name).read_bytes()
        assert a == b
    data = json.loads((tmp_path / "a-json").read_text())
    assert data["format_version"] == 1 and data["autoprompt_version"] == autoprompt.__version__
    assert data["task"] == "sentiment" and data["seed"] == 3
    assert data["predictors"][0]["fields"]["outputs"][0]["choices"] == ["positive", "negative"]


def test_bad_prompt_files(small_task, optimized, tmp_path):
    document = prompt_document(optimized, task=small_task)
    with pytest.raises(ExportError, match="format_version 99 is not supported"):
        read_prompt({**document, "format_version": 99})
    with pytest.raises(ExportError, match="not an autoprompt prompt file"):
        read_prompt({"hello": 1})
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ExportError, match="bad.json: not valid JSON"):
        read_prompt(bad)
    other = autoprompt.Task(name="other", program="question -> answer", train=[{"question": "q", "answer": "a"}],
                            dev=[{"question": "q", "answer": "a"}])
    with pytest.raises(ExportError, match="fields"):
        autoprompt.load_prompt(document, other)
    with pytest.raises(ExportError, match="format must be one of"):
        export_prompt(document, tmp_path / "x", format="yaml")
