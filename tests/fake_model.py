"""A model whose ablation effects are known exactly: span s loses W[s, n] of log-prob when visual token n
is knocked out, additively. Just enough of the adapter contract for the harness and metrics."""
from types import SimpleNamespace

import numpy as np
from PIL import Image

from vattr_bench.types import Regions, Span, Trace


class AdditiveModel:
    def __init__(self, weights: np.ndarray, span_lengths):
        self.W = weights  # (n_spans, N)
        ends = np.cumsum(span_lengths)
        self.spans = [Span(int(e - n), int(e), f"span {i}") for i, (e, n) in enumerate(zip(ends, span_lengths))]
        self.T = int(ends[-1])
        self.trace = Trace(list(range(self.T)), "", self.spans, np.full(self.T, -0.1), "")
        self.prepared = SimpleNamespace(n_visual_tokens=weights.shape[1], image=Image.new("RGB", (8, 8)))

    def token_logprobs(self, prepared, trace_ids, image=None, knockout=None):
        masks = np.atleast_2d(np.zeros(self.W.shape[1], bool) if knockout is None else knockout)
        out = np.tile(self.trace.logprobs, (len(masks), 1))
        for s, span in enumerate(self.spans):
            loss = masks.astype(float) @ self.W[s]  # (B,)
            out[:, span.start:span.end] -= loss[:, None] / (span.end - span.start)
        return out if np.ndim(knockout) == 2 else out[0]


def one_token_per_region(n: int) -> Regions:
    """Region k = visual token k (pixel masks unused by knockout)."""
    return Regions(np.zeros((n, 8, 8), bool), np.eye(n, dtype=bool), "test", {})
