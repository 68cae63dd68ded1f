"""One run store: the class that owns a run directory, writing it and reading it back.

Every file of a run goes through a :class:`RunStore`: :func:`autoprompt.optimize`,
:func:`autoprompt.better_together` (one store per run, a child store per step), ``report``,
``worker`` and ``export``. It

- creates the folder (``<runs_root>/<name>-<time>-s<seed>`` or the one given) and refuses to
  overwrite a run, or opens an existing one for ``resume``/``report`` (it must hold ``config.json``);
- writes atomically (a temp file, then a rename: a kill never leaves half a file) and redacts every
  registered secret value on the way (:mod:`autoprompt._secrets`);
- stamps JSON documents with their ``format`` and ``format_version`` and checks both on every read,
  with one error naming the file and what to do;
- keeps the log (``run.log``, redacted), the per-example answers (``evaluations/*.jsonl``), and
  reloads the run's task and LM from its config.

Layouts (see :func:`autoprompt.optimize` and :func:`autoprompt.better_together`)::

    optimize:         config.json scores.json program.json prompt.json evaluations/ study.db run.log
    better-together:  config.json results.json table.md run.log steps/<strategy>/(step.json ...)
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

from autoprompt._exceptions import RunError
from autoprompt._secrets import RedactingFilter, redact, redact_obj, secrets_from_env

__all__ = ["FORMATS", "RunStore", "atomic_write", "dump_json"]

logger = logging.getLogger(__name__)

#: the config ``format`` and the ``format_version`` this autoprompt reads and writes, per kind of run
FORMATS = {"optimize": ("autoprompt.run", 1), "better-together": ("autoprompt.better-together", 2),
           "decide": ("autoprompt.decide", 1)}


def dump_json(document: Any) -> str:
    """Deterministic JSON text (sorted keys, 2-space indent, UTF-8 kept, newline at the end)."""
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n"


def atomic_write(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a temp file and a rename, every registered secret redacted."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(redact(text), encoding="utf-8")
    tmp.replace(path)
    return path


class RunStore:
    """A run directory of one ``kind`` (``"optimize"`` or ``"better-together"``).

    Use :meth:`create` for a new run and :meth:`open` for an existing one; :meth:`child` gives a
    store for a sub-folder (a BetterTogether step) that shares the run's format.

    Example:
        >>> store = RunStore.create("optimize", path=tmp / "run")          # doctest: +SKIP
        >>> store.write_json("scores.json", {"scores": {}})                # stamped, atomic, redacted
        >>> RunStore.open(tmp / "run").read_json("scores.json")["format_version"]
        1
    """

    def __init__(self, path: str | os.PathLike, kind: str = "optimize") -> None:
        if kind not in FORMATS:
            raise ValueError(f"kind must be one of {sorted(FORMATS)}, got {kind!r}")
        self.path = Path(path)
        self.kind = kind
        self.format, self.version = FORMATS[kind]

    # -- creating and opening ------------------------------------------------------------------------
    @classmethod
    def create(cls, kind: str, *, path: str | os.PathLike | None = None, runs_root: str | os.PathLike = "runs",
               name: str = "run", seed: int = 0) -> "RunStore":
        """A new run directory: ``path`` (which must not hold a run yet), or a fresh
        ``<runs_root>/<name>-<time>-s<seed>`` (suffixed when taken)."""
        secrets_from_env()  # the environment's credentials never land in a run file
        if path is not None:
            folder = Path(path)
            if (folder / "config.json").exists():
                raise RunError(f"{folder} already holds a run; resume it (resume=True, CLI: --resume) or pass a "
                               "new directory")
            folder.mkdir(parents=True, exist_ok=True)
            return cls(folder, kind)
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        base = Path(runs_root) / f"{name}-{stamp}-s{seed}"
        folder, i = base, 1
        while folder.exists():
            i += 1
            folder = base.with_name(f"{base.name}-{i}")
        folder.mkdir(parents=True)
        return cls(folder, kind)

    @classmethod
    def open(cls, path: str | os.PathLike | None, kind: str | None = None) -> "RunStore":
        """An existing run directory; its kind is read from its config when not given (and checked when given)."""
        if path is None:
            raise RunError("resuming needs the run's folder: pass run_dir= (CLI: --run-dir)")
        secrets_from_env()  # the environment's credentials never land in a run file
        if not (Path(path) / "config.json").is_file():
            raise RunError(f"{path} is not a run directory: it has no config.json (pass the folder "
                           f"{'an autoprompt ' + kind if kind else 'an autoprompt'} run wrote)")
        raw = _read(Path(path) / "config.json")
        found = next((k for k, (fmt, _) in FORMATS.items() if raw.get("format", "autoprompt.run") == fmt), None)
        if found is None:
            raise RunError(f"{path}/config.json is not an autoprompt run (format {raw.get('format')!r})")
        if kind is not None and found != kind:
            raise RunError(f"{path} is a {found} run, not a {kind} run")
        store = cls(path, found)
        store._check(raw, "config.json")
        return store

    def child(self, relative: str | os.PathLike) -> "RunStore":
        """The store of a sub-folder (created), e.g. a BetterTogether step's ``steps/p-w``."""
        sub = RunStore(self.path / relative, self.kind)
        sub.path.mkdir(parents=True, exist_ok=True)
        return sub

    # -- files ---------------------------------------------------------------------------------------
    def file(self, name: str) -> Path:
        return self.path / name

    def exists(self, name: str) -> bool:
        return (self.path / name).is_file()

    def write_json(self, name: str, document: dict[str, Any], *, stamp: bool = True, sub: str | None = None) -> Path:
        """Write a JSON document, stamped with the run's format (``<format>.<sub>`` for a part with its own
        shape, e.g. a BetterTogether ``step``) and version; ``stamp=False``: a document with its own format."""
        if stamp:
            document = {**document, "format": self._format(sub), "format_version": self.version}
        target = self.path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write(target, dump_json(redact_obj(document)))

    def read_json(self, name: str, *, check: bool = True, sub: str | None = None) -> dict[str, Any]:
        """A JSON document of the run, its format (see :meth:`write_json`) and version checked
        (``check=False``: as it is)."""
        path = self.path / name
        if not path.is_file():
            raise RunError(f"{path} does not exist: the run did not get that far (resume it, or use another run)")
        document = _read(path)
        if check:
            self._check(document, name, sub)
        return document

    def write_text(self, name: str, text: str) -> Path:
        target = self.path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write(target, text)

    def write_jsonl(self, name: str, records: Iterable[dict[str, Any]]) -> Path:
        lines = [json.dumps(redact_obj(r), sort_keys=True, default=str, ensure_ascii=False) for r in records]
        return self.write_text(name, "".join(line + "\n" for line in lines))

    def save_program(self, program: Any, name: str = "program.json") -> Path:
        """A DSPy program in DSPy's own JSON format, written atomically and redacted like every other file."""
        target = self.path / name
        tmp = target.with_name(f".{target.stem}.tmp.json")  # DSPy picks its format by the suffix
        try:
            program.save(str(tmp))
            return atomic_write(target, tmp.read_text(encoding="utf-8"))
        finally:
            tmp.unlink(missing_ok=True)

    def write_evaluation(self, name: str, evaluation: Any) -> Path:
        """The per-example answers of one scored (program, split) as ``evaluations/<name>.jsonl``."""
        return self.write_jsonl(f"evaluations/{name}.jsonl", evaluation.records)

    def read_evaluation(self, name: str) -> list[dict[str, Any]]:
        """The per-example answers :meth:`write_evaluation` wrote (``[]`` when there are none)."""
        path = self.path / "evaluations" / f"{name}.jsonl"
        if not path.is_file():
            return []
        try:
            return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except json.JSONDecodeError as exc:
            raise RunError(f"{path} is damaged ({exc.msg} at line {exc.lineno}); delete the step's folder and "
                           "resume to score it again") from None

    def _format(self, sub: str | None) -> str:
        return f"{self.format}.{sub}" if sub else self.format

    def _check(self, document: dict[str, Any], name: str, sub: str | None = None) -> None:
        # the first optimize runs stamped a version only
        fmt = document.get("format", "autoprompt.run" if self.kind == "optimize" and not sub else None)
        version = document.get("format_version")
        if fmt != self._format(sub) or version != self.version:
            raise RunError(f"{self.path / name} has format {fmt!r} version {version!r}; this autoprompt reads "
                           f"{self._format(sub)!r} version {self.version}: start a new run (or use the "
                           "autoprompt version that wrote it)")

    # -- config, log, reloading ----------------------------------------------------------------------
    @property
    def config(self) -> dict[str, Any]:
        return self.read_json("config.json")

    def check_resume(self, config: dict[str, Any], keys: Iterable[str], recorded: dict[str, Any] | None = None) -> None:
        """A resumed run must be the same run: ``keys`` of its config equal those of ``config``
        (compared as written, secrets redacted); a moved task file only warns. ``recorded`` replaces some
        keys of the run's config for the comparison (e.g. with options added since, at their defaults)."""
        old = {**self.config, **(recorded or {})}
        new = json.loads(dump_json(redact_obj(config)))
        old_source, new_source = old.get("task", {}).get("source"), new.get("task", {}).get("source")
        if old_source != new_source:
            logger.warning("resuming %s: its task file was %s, now %s", self.path, old_source, new_source)
            old = {**old, "task": {**old.get("task", {}), "source": new_source}}
        for key in keys:
            if old.get(key) != new.get(key):
                raise RunError(f"cannot resume {self.path}: its {key} was {old.get(key)!r}, now {new.get(key)!r}; "
                               "resume with the same options or start a new run")

    @contextlib.contextmanager
    def log(self) -> Iterator[None]:
        """Append autoprompt's INFO log, secrets redacted, to ``run.log`` inside the block."""
        handler = logging.FileHandler(self.path / "run.log", encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler.setLevel(logging.INFO)
        handler.addFilter(RedactingFilter())
        root = logging.getLogger("autoprompt")
        previous = root.level
        if root.level == logging.NOTSET or root.level > logging.INFO:
            root.setLevel(logging.INFO)
        root.addHandler(handler)
        try:
            yield
        finally:
            root.removeHandler(handler)
            root.setLevel(previous)
            handler.close()

    def load_task(self) -> Any:
        """The run's task, reloaded from the task file and options its config records."""
        from autoprompt.task import load_task

        task = self.config["task"]
        return load_task(task["source"], **task.get("options", {}))

    def lm_spec(self, override: Any = None, *, redacted: bool = False) -> Any:
        """The run's LM as an :class:`autoprompt.lms.LMSpec` (``override`` wins; needed when the run's LM
        was an object or its server URL carried a secret, neither of which is saved; ``redacted=True``
        returns such a spec as recorded instead of refusing it)."""
        from autoprompt.lms import LMSpec

        if override is not None:
            return LMSpec.parse(override)
        config = self.config
        record = config.get("lm") if self.kind == "better-together" else config.get("lm_spec")
        if isinstance(record, dict):
            spec = LMSpec.from_dict(record)
        elif isinstance(record, str):  # the first optimize runs recorded the lm= string
            spec = LMSpec.parse(record)
        else:
            raise RunError(f"the LM of {self.path} was given as an object, which is not saved; name it (CLI: --lm)")
        if spec.api_base and "***" in spec.api_base and not redacted:
            raise RunError(f"the server URL of {self.path}'s LM carried a secret, which is never saved: pass the "
                           "LM again (CLI: --lm, --api-base)")
        return spec

    def __repr__(self) -> str:
        return f"RunStore({str(self.path)!r}, kind={self.kind!r})"


def _read(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunError(f"{path} cannot be read as JSON ({exc}); the run folder is damaged: start a new run") from exc
    if not isinstance(document, dict):
        raise RunError(f"{path} is not a JSON object; the run folder is damaged: start a new run")
    return document
