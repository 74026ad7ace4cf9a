"""What cuDNN's attention hands back on this GPU, against the explicit lse and sdpa's own output: the facts
the capture's cuDNN branch (`models.capture.backend`) relies on — the statistics' layout and unit,
and the output with statistics on being the output sdpa gives without. Needs a CUDA GPU (`gpu_check.sh`).

    python experiments/cudnn_lse_probe.py
"""
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend

from vattr_bench.models.capture.backend import explicit_lse


def main():
    if not torch.cuda.is_available():
        sys.exit("cudnn_lse_probe.py needs a CUDA GPU (this torch sees none)")
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}, {torch.cuda.get_device_name()}\n")
    print("| dtype | queries | keys | head dim | sdpa picks | lse shape | max abs lse − explicit | max abs output − sdpa |")
    print("|---|---|---|---|---|---|---|---|")
    for dtype in (torch.bfloat16, torch.float16):
        for q_len, kv_len in ((1, 300), (300, 300), (1, 1000), (1000, 1000)):
            causal = q_len > 1  # a prompt pass, or one decode step over the cache
            for d in (8, 64, 128):
                q, k, v = (torch.randn(1, 16, n, d, device="cuda", dtype=dtype) for n in (q_len, kv_len, kv_len))
                scale = d ** -0.5
                picks = SDPBackend(torch._fused_sdp_choice(q, k, v, None, 0.0, causal, scale=scale)).name
                row = f"| {str(dtype).removeprefix('torch.')} | {q_len} | {kv_len} | {d} | {picks} |"
                try:
                    out, lse = torch.ops.aten._scaled_dot_product_cudnn_attention(
                        q, k, v, None, True, 0.0, causal, False, scale=scale)[:2]
                except RuntimeError as e:
                    print(f"{row} cuDNN refused: {str(e).splitlines()[0][:80]} | | |")
                    continue
                explicit = explicit_lse(q, k, None, scale)
                reference = F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
                print(f"{row} {tuple(lse.shape)} | {(lse.reshape(explicit.shape).float() - explicit).abs().max().item():.2e} "
                      f"| {(out.float() - reference.float()).abs().max().item():.2e} |")


if __name__ == "__main__":
    main()
