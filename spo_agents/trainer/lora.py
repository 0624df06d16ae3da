"""LoRA through peft: train adapters, push merged weights to the inference copy.

The backend holds a plain (unwrapped) copy of the model, so after each step the adapters are
merged into the base weights, the merged tensors are read out under the plain model's names,
and the adapters are unmerged again. peft adds `base_model.model.` in front of every name and
`.base_layer` inside wrapped modules; `lora_*` tensors are the adapters themselves.
"""

from __future__ import annotations

import pydantic
import torch


class LoraSettings(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")

    r: int = pydantic.Field(16, ge=1, description="adapter rank")
    alpha: float = pydantic.Field(32.0, gt=0, description="LoRA scaling numerator (lora_alpha)")
    dropout: float = pydantic.Field(0.0, ge=0, lt=1, description="dropout on the adapter input")
    target_modules: list[str] = pydantic.Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="module names that get adapters")


def wrap_with_lora(model: torch.nn.Module, settings: LoraSettings) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model  # optional extra `lora`

    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=settings.target_modules, task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def _plain_name(name: str) -> str:
    return name.removeprefix("base_model.model.").replace(".base_layer", "")


@torch.no_grad()
def merged_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Weights of the model as a plain (non-peft) model would name them, adapters merged in."""
    if not hasattr(model, "merge_adapter"):
        return {name: tensor.detach() for name, tensor in model.state_dict().items()}
    model.merge_adapter()
    try:
        return {_plain_name(name): tensor.detach().clone() for name, tensor in model.state_dict().items()
                if "lora_" not in name}
    finally:
        model.unmerge_adapter()
