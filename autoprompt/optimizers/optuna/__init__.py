"""autoprompt's own search: an Optuna study over instructions, demo sets, demo counts and decoding.

1. A candidate pool is built once and stored in the study (``study.user_attrs["pool"]``): per
   predictor, the original instruction plus instructions the proposer LM writes (a candidate it
   cannot produce is skipped and counted), and demo sets: labelled samples of the train split and
   demos bootstrapped from the program's own passing traces.
2. Each trial samples ``<predictor>.instruction``, ``<predictor>.n_demos``, where its demos come from
   (``<predictor>.retrieve``: per-input demos, or ``<predictor>.demo_set``), ``<predictor>.calibrate``
   (and ``temperature``, and the task's own ``search_space``) and is scored on growing minibatches of
   the dev split, reporting each as an intermediate value so that the pruner stops weak candidates.
   A new study's first trial is enqueued: per-input demos ordered by vote under the task's own instruction.
   With ``label_prior`` (on by default, where the pool can offer it), ``<predictor>.prior`` too: such a trial
   fits the neighbours' label prior on the label probabilities of its dev rows and reports a cross-fitted
   score (``_prior``); a second trial is enqueued: 4 fixed labelled demos and the prior.
3. The study lives in a storage URL (SQLite in the run directory by default), so a killed run
   resumes with every finished trial, and several workers can share it.

The package: ``_pool`` (the candidate pool), ``_trial`` (one trial: its program and score), ``_prior`` (the
label prior's fit), ``_study`` (:class:`OptunaSearch`). Readers of a run (report, worker, ``export --trial``) use the public hooks
:func:`load_pool` and :func:`program_of_trial`.
"""

from autoprompt.optimizers.optuna._pool import POOL_VERSION, build_pool, load_pool, stratified_sample
from autoprompt.optimizers.optuna._study import OptunaSearch, select_trial
from autoprompt.optimizers.optuna._trial import build_program, program_of_trial

__all__ = ["OptunaSearch", "POOL_VERSION", "build_pool", "build_program", "load_pool", "program_of_trial",
           "select_trial", "stratified_sample"]
