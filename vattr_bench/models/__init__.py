"""Model loading: the built-in `vattr-tiny`, a local checkpoint folder, or a Hugging Face hub id."""
from __future__ import annotations

import os
from pathlib import Path

from .adapter import PreparedInput, VisionLanguageModel

TINY_CHECKPOINT = Path(__file__).parent / "tiny" / "checkpoint"
BUILTIN = {"vattr-tiny": TINY_CHECKPOINT}
# The seed paper's models: loadable by id (or local path) where their weights are available.
PAPER_MODELS = {
    "Qwen/Qwen3-VL-8B-Thinking": "qwen3_vl",
    "zai-org/GLM-4.1V-9B-Thinking": "glm4v",
    "XiaomiMiMo/MiMo-VL-7B-RL": "qwen2_5_vl",
    "nvidia/Cosmos-Reason1-7B": "qwen2_5_vl",
}


DTYPES = ("float32", "bfloat16", "float16")


def load_model(name_or_path: str, device: str = "cpu", dtype: str | None = None) -> VisionLanguageModel:
    """`vattr-tiny`, a folder saved with `save_pretrained`, or a hub id already in the local HF cache."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    from .hf import HFVisionLanguageModel, load_processor

    if name_or_path in BUILTIN:
        path = BUILTIN[name_or_path]
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"the {name_or_path} checkpoint is missing at {path}; rebuild it with "
                                    "`python -m vattr_bench.models.tiny.train`")
        source = str(path)
    elif Path(name_or_path).exists():
        if not (Path(name_or_path) / "config.json").is_file():
            raise FileNotFoundError(f"no model checkpoint (config.json) in {name_or_path}")
        source = name_or_path
    else:
        source = name_or_path  # a hub id: found only if its weights are in the local cache
    check_device(device)
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype!r}: choose from {', '.join(DTYPES)} (default: the checkpoint's own)")
    torch_dtype = getattr(torch, dtype) if dtype else "auto"
    try:
        processor = load_processor(source, AutoConfig.from_pretrained(source).model_type)
        model = AutoModelForImageTextToText.from_pretrained(source, dtype=torch_dtype)
    except (OSError, ValueError) as e:
        if Path(source).exists():
            raise ValueError(f"cannot load the checkpoint in {source}: {e}") from e
        known = ", ".join(["vattr-tiny", *PAPER_MODELS])
        raise ValueError(
            f"cannot load model {name_or_path!r}: it is not a built-in name or a folder, and its weights are "
            f"not in the local Hugging Face cache (HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '0')}). "
            f"Download it where there is network (`hf download {name_or_path}`) and pass the folder. "
            f"Known models: {known}"
        ) from e
    return HFVisionLanguageModel(model.to(device), processor, name_or_path)


def check_device(device: str) -> None:
    """Fail before loading on a device string torch cannot parse or an accelerator this machine lacks."""
    import torch

    try:
        parsed = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"--device {device!r} is not a device torch knows (cpu, cuda, cuda:1, mps, …): {e}") from None
    if parsed.type == "cpu":
        return
    module = getattr(torch, parsed.type, None)
    available = module is not None and hasattr(module, "is_available") and module.is_available()
    count = module.device_count() if available and hasattr(module, "device_count") else 1
    if not available or (parsed.index or 0) >= count:
        raise ValueError(f"--device {device!r}: no {parsed} device on this machine ({count if available else 0} "
                         f"{parsed.type} devices, torch {torch.__version__}); use --device cpu")


__all__ = ["load_model", "VisionLanguageModel", "PreparedInput", "BUILTIN", "PAPER_MODELS"]
