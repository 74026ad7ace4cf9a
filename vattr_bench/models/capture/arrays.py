"""Array helpers the capture shares: numpy views of torch tensors, grouped-query products, concatenation that
stays off torch's OpenMP pool on the streaming worker's thread."""
from __future__ import annotations

import numpy as np
import torch


def grouped_matmul(a, b):
    """a (…, H, n, e) @ b (…, H_kv, e, m) -> (…, H, n, m), query head h reading kv head h // (H / H_kv) as
    repeat_kv lays them out: each kv head meets its group of query heads in one product, where repeating b
    per query head would copy it ×groups. Without grouping, just a @ b: no reshape calls on the streaming
    worker's per-span path."""
    if a.shape[-3] == b.shape[-3]:
        return a @ b
    return (a.reshape(*b.shape[:-2], -1, a.shape[-1]) @ b).reshape(*a.shape[:-1], b.shape[-1])


def permute(x, *axes):
    return x.transpose(*axes) if isinstance(x, np.ndarray) else x.permute(*axes)


# at::internal::GRAIN_SIZE: a CPU op on fewer elements runs in the calling thread, never in an OpenMP region
_TORCH_GRAIN = 32768


def cat_numpy(tensors: list[torch.Tensor]) -> np.ndarray:
    """float32 numpy of the tensors concatenated along dim 2. This runs in the streaming worker, where a big
    torch op on the CPU would start a second OpenMP pool competing with generation for the cores: so a
    small CPU concatenation is torch's (serial there, ~5× faster than numpy's for a vattr-tiny span), a big
    one numpy's; on a GPU, the device's, then one copy."""
    if tensors[0].device.type == "cpu" and tensors[0].numel() * len(tensors) >= _TORCH_GRAIN:
        return np.concatenate([to_numpy(t) for t in tensors], axis=2)
    return to_numpy(torch.cat(tensors, dim=2))


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """float32 numpy: a view of a float32 CPU tensor without grad — the per-decode-step case, so tried
    first and without torch ops — else a converted copy (grad, bf16, GPU); numpy passes through."""
    if isinstance(t, np.ndarray):
        return t
    if t.dtype == torch.float32:
        try:
            return t.numpy()
        except (RuntimeError, TypeError):  # needs grad, or not on the CPU
            pass
    return t.detach().float().cpu().numpy()

