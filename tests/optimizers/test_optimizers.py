"""One suite for every built-in optimizer, on the embedded model and the small sentiment set."""

from __future__ import annotations

import dspy
import pytest

from autoprompt.optimizers import OPTIMIZERS, BaseOptimizer, Context, get_optimizer
from autoprompt.usage import Budget, Meter

SMALL_OPTIONS = {
    "labeled": {"k": 2},
    "bootstrap": {"max_bootstrapped_demos": 2, "max_labeled_demos": 2},
    "random-search": {"num_candidate_programs": 1, "max_bootstrapped_demos": 2, "max_labeled_demos": 2},
    "mipro": {"auto": None, "num_candidates": 2, "num_trials": 2, "max_bootstrapped_demos": 1,
              "max_labeled_demos": 1, "minibatch_size": 4},
    "optuna": {"n_trials": 3, "n_instructions": 1, "n_demo_sets": 2, "max_demos": 2, "minibatches": (3,)},
    "gepa": {"max_metric_calls": 24, "reflection_minibatch_size": 2},
    "simba": {"bsize": 4, "num_candidates": 2, "max_steps": 1, "max_demos": 1},
}


def make_context(task, tmp_path, budget=None, seed=0):
    return Context(trainset=task.examples("train")[:12], devset=task.examples("dev")[:6], seed=seed,
                   run_dir=tmp_path, meter=Meter(budget), progress=False)


def run(optimizer, task, context, lm, instruction=None):
    program = task.make_program()
    if instruction:  # a new instruction: no answer is in DSPy's cache yet
        predictor = program.predictors()[0]
        predictor.signature = predictor.signature.with_instructions(instruction)
    context.meter.enforcing = True
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter(), usage_tracker=context.meter):
        compiled = optimizer.compile(program, task, context)
    return program, compiled


def test_every_optimizer_has_small_options():
    assert sorted(SMALL_OPTIONS) == sorted(OPTIMIZERS)


@pytest.mark.parametrize("name", [n for n in sorted(OPTIMIZERS) if n != "mipro"])
def test_optimizer_returns_a_new_program_of_the_same_shape(name, lm, small_task, tmp_path):
    optimizer = get_optimizer(name, **SMALL_OPTIONS[name])
    program, compiled = run(optimizer, small_task, make_context(small_task, tmp_path), lm)
    assert isinstance(compiled, dspy.Module) and compiled is not program
    assert [n for n, _ in compiled.named_predictors()] == [n for n, _ in program.named_predictors()]
    assert program.predictors()[0].demos == []  # the input program is left as it was
    for demo in compiled.predictors()[0].demos:
        assert demo["label"] in ("positive", "negative")


@pytest.mark.parametrize("name", ["bootstrap", "random-search", "optuna"])
def test_optimizer_stops_at_the_call_budget(name, lm, small_task, tmp_path):
    optimizer = get_optimizer(name, **SMALL_OPTIONS[name])
    context = make_context(small_task, tmp_path, Budget(max_calls=5), seed=11)
    run(optimizer, small_task, context, lm, instruction=f"Sentiment of the review ({name} budget test).")
    assert 0 < context.meter.calls <= 5


def test_mipro_runs_or_fails_with_advice(lm, small_task, tmp_path):
    """DSPy's MIPROv2 on a small budget (in the default suite): it compiles a program within the cap, or a weak
    proposer fails and the error says what to do."""
    from autoprompt import AutopromptError

    optimizer = get_optimizer("mipro", **SMALL_OPTIONS["mipro"])
    context = make_context(small_task, tmp_path, Budget(max_calls=150))
    try:
        _, compiled = run(optimizer, small_task, context, lm)
    except AutopromptError as exc:
        assert "proposer_lm" in str(exc) or "budget" in str(exc).lower(), exc
    else:
        assert isinstance(compiled, dspy.Module)
    assert 0 < context.meter.calls <= 150


def test_get_optimizer_errors():
    with pytest.raises(TypeError, match="Invalid optimizer argument: 'nope'"):
        get_optimizer("nope")
    with pytest.raises(TypeError, match="optimizer 'labeled'"):
        get_optimizer("labeled", bogus=1)
    assert isinstance(get_optimizer(), BaseOptimizer) and get_optimizer().name == "optuna"


def test_dspy_optimizers_stop_past_their_lm_error_budget(small_task, tmp_path):
    """A server that does not answer: DSPy's optimizer counts the failed calls and the run ends with one LMError
    past max_errors, instead of "optimizing" on scores of 0 (nothing listens on port 9)."""
    from autoprompt import LMError

    dead = dspy.LM("hosted_vllm/m", api_base="http://127.0.0.1:9/v1", api_key="none", num_retries=0, cache=False)
    optimizer = get_optimizer("bootstrap", max_bootstrapped_demos=2, max_labeled_demos=0, max_errors=5)
    with pytest.raises(LMError, match=r"BootstrapFewShot: \d+ LM calls failed \(more than max_errors=5\)"):
        run(optimizer, small_task, make_context(small_task, tmp_path), dead)


def test_gepa_reflects_with_the_tasks_feedback_and_keeps_its_state_in_the_run(lm, small_task, tmp_path):
    """GEPA by name: its metric gives the reflection LM the task's feedback text, its budget is its own
    max_metric_calls (6/7 of the run's LM calls by default), and its state is in <run_dir>/gepa (resumable)."""
    seen = []

    def feedback(example, prediction):
        seen.append(example.label)
        return f"the review is {example.label}"

    small_task.feedback = feedback
    optimizer = get_optimizer("gepa", reflection_minibatch_size=2)
    context = make_context(small_task, tmp_path, Budget(max_calls=35))
    assert optimizer.metric_calls(context) == 30
    _, compiled = run(optimizer, small_task, context, lm)
    assert isinstance(compiled, dspy.Module) and seen, "GEPA never asked for the task's feedback"
    assert any((tmp_path / "gepa").iterdir()), "GEPA wrote no state into the run directory"
    assert 0 < context.meter.calls <= 35


def test_seedless_dspy_optimizers_take_the_seed_as_the_order_of_their_trainset(small_task, tmp_path):
    """DSPy's BootstrapFewShot and BootstrapFewShotWithRandomSearch draw with a fixed Random(0): the run's seed
    orders their trainset, so seeds differ; seed 0 is DSPy's optimizer called directly (pure logic: DummyLM)."""
    from dspy.utils.dummies import DummyLM

    lm = DummyLM([{"label": "positive"}] * 200, adapter=dspy.JSONAdapter())
    demos: dict[int, list[list[str]]] = {}
    for seed in (0, 0, 1):
        optimizer = get_optimizer("bootstrap", max_bootstrapped_demos=0, max_labeled_demos=3)
        _, compiled = run(optimizer, small_task, make_context(small_task, tmp_path, seed=seed), lm)
        demos.setdefault(seed, []).append([d.text for d in compiled.predictors()[0].demos])
    assert len(demos[0][0]) == 3
    assert demos[0][0] == demos[0][1] != demos[1][0]
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
        direct = dspy.BootstrapFewShot(metric=small_task.dspy_metric, max_bootstrapped_demos=0, max_labeled_demos=3
                                       ).compile(small_task.make_program(), trainset=small_task.examples("train")[:12])
    assert [d.text for d in direct.predictors()[0].demos] == demos[0][0]
