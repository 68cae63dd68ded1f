"""Write a peft LoRA as a llama.cpp LoRA adapter (GGUF), so llama.cpp serves the fine-tuned model.

llama.cpp computes ``W x + (alpha / r) * B (A x)`` with ``A = lora_a`` and ``B = lora_b`` stored as
peft keeps them (``A``: r x in, ``B``: out x r; GGUF lists dimensions the other way round). The
query and key projections are stored permuted (rotary layout) in llama GGUF files, so LoRAs on
``q_proj``/``k_proj`` are refused here rather than written wrong.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from autoprompt._exceptions import FinetuneError

__all__ = ["GGUF_NAMES", "write_lora_adapter"]

# peft / transformers module name -> llama.cpp tensor name
GGUF_NAMES = {
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}

_MODULE = re.compile(r"layers\.(\d+)\.(self_attn\.\w+|mlp\.\w+)$")


def write_lora_adapter(peft_model: Any, path: str | Path, *, alpha: float, adapter_name: str = "default") -> Path:
    """Write the LoRA weights of ``peft_model`` (a llama-architecture peft model) to ``path``."""
    import gguf

    tensors: list[tuple[str, Any]] = []
    for name, module in peft_model.named_modules():
        lora_a = getattr(module, "lora_A", None)
        if lora_a is None or adapter_name not in lora_a:
            continue
        match = _MODULE.search(name)
        if match is None or match.group(2) not in GGUF_NAMES:
            raise FinetuneError(
                f"cannot write a llama.cpp adapter for LoRA module {name!r}: only {sorted(GGUF_NAMES)} are "
                "supported (q_proj/k_proj are stored permuted in GGUF); leave it out of target_modules"
            )
        base = f"blk.{match.group(1)}.{GGUF_NAMES[match.group(2)]}.weight"
        a = module.lora_A[adapter_name].weight.detach().float().cpu().numpy()
        b = module.lora_B[adapter_name].weight.detach().float().cpu().numpy()
        tensors += [(f"{base}.lora_a", a), (f"{base}.lora_b", b)]
    if not tensors:
        raise FinetuneError("the model has no LoRA weights to write")
    path = Path(path)
    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(alpha))
    for tensor_name, array in sorted(tensors):
        writer.add_tensor(tensor_name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
