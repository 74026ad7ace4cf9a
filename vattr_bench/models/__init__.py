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


def load_model(name_or_path: str, device: str = "cpu", dtype: str | None = None, device_map=None,
               max_memory: dict | None = None, offload_folder: str | None = None, random_init: bool = False,
               seed: int = 0) -> VisionLanguageModel:
    """`vattr-tiny`, a folder saved with `save_pretrained`, or a hub id already in the local HF cache.

    ``device_map`` (instead of ``device``): accelerate's big-model placement through `from_pretrained` —
    "auto" / "balanced" / "balanced_low_0" / "sequential" spread the model over the visible GPUs (then the
    CPU, then ``offload_folder`` on disk), within ``max_memory`` ({0: "20GiB", "cpu": "60GiB"}) where
    given; a dict maps module names to devices ("cpu", 0, "cuda:1", "disk"). ``random_init``: the
    architecture in the folder's config.json with seeded random weights (for timing; no weights read)."""
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
        source = _hub_source(name_or_path)  # the id itself where the hub answers, else its cached snapshot
    check_device(device)
    if device_map is not None:
        check_device_map(device_map)
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype!r}: choose from {', '.join(DTYPES)} (default: the checkpoint's own)")
    torch_dtype = getattr(torch, dtype) if dtype else "auto"
    try:
        processor = load_processor(source, AutoConfig.from_pretrained(source).model_type)
        if random_init:
            from .random_init import random_init_model

            if device_map is not None:
                raise ValueError("--random-init builds the model on one --device; --device-map places a checkpoint's weights")
            model = random_init_model(source, torch_dtype, seed)
        else:
            placement = {} if device_map is None else {"device_map": device_map, "max_memory": max_memory,
                                                       "offload_folder": offload_folder}
            model = AutoModelForImageTextToText.from_pretrained(source, dtype=torch_dtype, **placement)
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
    name = f"{name_or_path} (random weights, seed {seed})" if random_init else name_or_path
    # a model placed by device_map stays where accelerate put it (its hooks move activations between devices)
    return HFVisionLanguageModel(model if device_map is not None else model.to(device), processor, name)


DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")


def check_device_map(device_map) -> None:
    """Fail before loading on a placement accelerate does not take, or without accelerate installed."""
    import importlib.util

    if importlib.util.find_spec("accelerate") is None:
        raise ValueError("--device-map needs accelerate: pip install accelerate")
    if isinstance(device_map, str) and device_map not in DEVICE_MAP_STRATEGIES:
        raise ValueError(f"--device-map {device_map!r}: choose from {', '.join(DEVICE_MAP_STRATEGIES)}, or give a "
                         "JSON object of module name → device")
    if not isinstance(device_map, (str, dict)):
        raise ValueError(f"device_map must be a strategy name or a dict of module name → device, got {device_map!r}")


def parse_max_memory(text: str | None) -> dict | None:
    """--max-memory "0=20GiB,1=20GiB,cpu=60GiB" → {0: "20GiB", 1: "20GiB", "cpu": "60GiB"}."""
    if not text:
        return None
    limits = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"--max-memory {text!r}: give device=size pairs, e.g. 0=20GiB,1=20GiB,cpu=60GiB")
        key = key.strip()
        limits[int(key) if key.isdigit() else key] = value.strip()
    return limits


# Seconds the hub has to answer one request before a hub id is looked for in the local cache alone: without
# this an unreachable hub costs huggingface_hub's retries (five per file, backing off to 8 s), about a minute.
HUB_PROBE_TIMEOUT_S = float(os.environ.get("VATTR_HUB_TIMEOUT", "5"))


def _hub_source(repo_id: str) -> str:
    """Where a hub id loads from: the id itself when the hub answers (transformers then downloads what the
    cache lacks, as it always does), else — HF_HUB_OFFLINE set, or no answer within HUB_PROBE_TIMEOUT_S —
    its snapshot folder in the local cache, or a UserError saying how to get it."""
    from huggingface_hub import constants, snapshot_download

    from ..errors import UserError

    offline = constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}
    if not offline and _hub_answers(constants.ENDPOINT, HUB_PROBE_TIMEOUT_S):
        return repo_id
    try:
        return snapshot_download(repo_id, local_files_only=True)
    except (OSError, ValueError) as e:  # not cached (LocalEntryNotFoundError), or not a valid id (HFValidationError)
        why = ("HF_HUB_OFFLINE is set" if offline else
               f"the hub ({constants.ENDPOINT}) did not answer within {HUB_PROBE_TIMEOUT_S:g} s (VATTR_HUB_TIMEOUT)")
        known = ", ".join(["vattr-tiny", *PAPER_MODELS])
        raise UserError(
            f"cannot load model {repo_id!r}: it is not a built-in name or a folder, its weights are not in the "
            f"local Hugging Face cache, and {why}. Download it where there is network (`hf download {repo_id} "
            f"--local-dir DIR`) and pass --model DIR. Known models: {known}") from e


def _hub_answers(endpoint: str, timeout_s: float) -> bool:
    """One request to the hub, no retries: does it answer at all within ``timeout_s``?"""
    from huggingface_hub.utils import get_session

    try:
        get_session().head(endpoint, timeout=timeout_s)
    except Exception:  # no name resolution, refused, timed out, TLS, a proxy's refusal: no hub to download from
        return False
    return True


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
