"""One decoder layer's attention call with and without the capture's fused kernel, for a grouped-query
head layout: sdpa as transformers runs it (grouped K/V, enable_gqa), the capture's call
(`models.capture.backend.fused_with_lse`: output and lse), and that call with K/V repeated per query head first,
as the capture did before grouped K/V went to the kernel as they are (a copy of the cache ×groups).

    python experiments/capture_call_cost.py [--heads 28 --kv-heads 4 --head-dim 128] [--keys 1024,4096] [--device cpu]

Defaults: Qwen2.5-VL-7B's layout. One query (a decode step) over the given numbers of keys, float32 on the
CPU (bf16 on CUDA); best of 5 passes of 20 calls.
"""
import argparse
import timeit

import torch
import torch.nn.functional as F
from transformers.integrations.sdpa_attention import repeat_kv

from vattr_bench.models.capture.backend import fused_with_lse


def best_ms(call, device: str) -> float:
    """Best of 5 batches of 20 calls, ms a call (a batch ends by waiting for the GPU)."""
    def batch():
        for _ in range(20):
            call()
        if device == "cuda":
            torch.cuda.synchronize()

    batch()
    return min(timeit.repeat(batch, number=1, repeat=5)) / 20 * 1e3


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--heads", type=int, default=28)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--keys", default="1024,4096")
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    torch.set_grad_enabled(False)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if a.device == "cuda" else torch.float32
    groups, scale = a.heads // a.kv_heads, a.head_dim ** -0.5
    print(f"{a.heads} query / {a.kv_heads} kv heads, head dim {a.head_dim}, {dtype} on {a.device}; ms per layer call\n")
    print("| keys | sdpa | capture | capture, K/V repeated first | the capture's lse from the kernel |\n|---|---|---|---|---|")
    for n in map(int, a.keys.split(",")):
        q = torch.randn(1, a.heads, 1, a.head_dim, dtype=dtype, device=a.device)
        k, v = (torch.randn(1, a.kv_heads, n, a.head_dim, dtype=dtype, device=a.device) for _ in range(2))
        # each lambda is timed at once, inside this iteration: it reads this iteration's q, k, v
        sdpa = best_ms(lambda: F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=True), a.device)  # noqa: B023
        capture = best_ms(lambda: fused_with_lse(q, k, v, scale), a.device)  # noqa: B023
        repeated = best_ms(lambda: fused_with_lse(q, repeat_kv(k, groups), repeat_kv(v, groups), scale),  # noqa: B023
                           a.device)
        # None: no fused kernel took the call (the capture would add an explicit q·Kᵀ; the timing above is not it)
        fused = fused_with_lse(q, k, v, scale) is not None
        print(f"| {n} | {sdpa:.2f} | {capture:.2f} | {repeated:.2f} | {'yes' if fused else 'NO: explicit lse'} |")


if __name__ == "__main__":
    main()
