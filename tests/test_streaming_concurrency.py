"""Several streams on ONE loaded model at once, as the live demo serves its visitors: each stream's events must
be the ones it gets alone, and nothing may raise.

The model is shared, so anything a call attaches to the model's modules (forward hooks) is seen by every
thread's forward: the tests below hold one thread inside such a call while another runs the model, and run
whole demo pipelines (regions, then a stream) in parallel threads against the same inputs run one by one.
"""
import threading

import numpy as np
import pytest

from vattr_bench.amortized import capture_options
from vattr_bench.benchmarks import synthetic_sample
from vattr_bench.methods.amortized import Amortized
from vattr_bench.regions import make_regions
from vattr_bench.streaming import one_blas_thread, stream_attributions

FAMILIES = ["general", "math", "document", "code"]
MAX_NEW_TOKENS = 32  # a few spans each: enough to interleave, small enough for 2 cores


@pytest.fixture(scope="module")
def estimator(tiny):
    """The demo's estimator (vattr-tiny's shipped default; its features read the final norm's input too)."""
    return Amortized().load_for(tiny, "feature-ward", "knockout")


def _demo_pipeline(model, estimator, family: str, seed: int):
    """What `DemoSession.stream` runs per visitor: prepare, feature-ward regions (a forward with a hook on the
    decoder's input), then the stream. Returns the regions' token matrix and the events."""
    sample = synthetic_sample(family, seed)
    prepared = model.prepare(sample.image, sample.prompt)
    regions, _ = make_regions("feature-ward", model, prepared, k=16)
    return regions.token_matrix, stream_attributions(model, prepared, regions, estimator, MAX_NEW_TOKENS)


def _in_threads(fn, n: int) -> tuple[list, list[BaseException]]:
    """fn(i) in n threads started together; their results and whatever they raised."""
    results, errors = [None] * n, []
    start = threading.Barrier(n)

    def run(i):
        try:
            start.wait()
            results[i] = fn(i)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a stream did not finish"
    return results, errors


@pytest.mark.slow
def test_concurrent_demo_streams_on_one_model_equal_each_stream_alone(tiny, estimator):
    """Six visitors at once (different images and prompts): no stream raises, and each one's regions, spans
    and scores equal its own run alone. Before the hooks were scoped to their caller's thread, another
    thread's decode step went through a visitor's region hook (IndexError: index 34 is out of bounds for
    dimension 0 with size 1) and every stream's 1/rms rows mixed in the others' (scores off by up to 3)."""
    cases = [(FAMILIES[i % len(FAMILIES)], i) for i in range(6)]
    alone = [_demo_pipeline(tiny, estimator, *case) for case in cases]
    together, errors = _in_threads(lambda i: _demo_pipeline(tiny, estimator, *cases[i]), len(cases))
    assert not errors, f"{len(errors)} concurrent streams raised, the first: {errors[0]!r}"
    for (family, seed), (matrix, events), (matrix_c, events_c) in zip(cases, alone, together):
        np.testing.assert_array_equal(matrix_c, matrix, err_msg=f"{family}/{seed}: regions differ")
        assert [(e.start, e.end, e.text) for e in events_c] == [(e.start, e.end, e.text) for e in events], family
        assert len(events) >= 2
        np.testing.assert_allclose(np.stack([e.scores for e in events_c]), np.stack([e.scores for e in events]),
                                   rtol=0, atol=1e-6, err_msg=f"{family}/{seed}: scores differ")


def _held_open_in_a_thread(enter):
    """Run the context manager ``enter()`` in a thread of its own and hold it open until the returned
    ``release`` is called; returns (what it yielded, release)."""
    opened, release, done = threading.Event(), threading.Event(), []

    def hold():
        with enter() as value:
            done.append(value)
            opened.set()
            release.wait(timeout=120)

    thread = threading.Thread(target=hold)
    thread.start()
    assert opened.wait(timeout=120), "the context did not open"

    def close():
        release.set()
        thread.join(timeout=120)

    return done[0], close


def test_a_capture_open_in_one_thread_records_nothing_of_another_threads_forwards(tiny, estimator):
    """Deterministic: thread A holds a capture open (norm scale on, as the demo's estimator needs) while this
    thread generates with another prompt: A's capture must receive no attention rows and no residuals."""
    prompts = [synthetic_sample(f, 1) for f in ("general", "math")]
    held_input, other_input = (tiny.prepare(s.image, s.prompt) for s in prompts)
    capture, close = _held_open_in_a_thread(
        lambda: tiny.capture_visual_attention(held_input, capture_options(estimator.meta)))
    try:
        assert capture.norm_eps is not None  # the residual path is the one under test
        alone = tiny.generate_ids(other_input, 8)
        assert capture.take_pending() == [], "another thread's forwards were recorded into this capture"
    finally:
        close()
    assert capture.n_rows == 0
    assert tiny.generate_ids(other_input, 8) == alone


def test_a_region_hook_open_in_one_thread_does_not_touch_another_threads_forwards(tiny):
    """Deterministic: thread A holds the decoder-input hook open (what `visual_features` reads the visual rows
    with) while this thread decodes: the decode step must neither raise (it once indexed a (1, 1, D) step
    at the visual positions) nor reach A's list, and A's own forward still reads its rows."""
    held_input, other_input = (tiny.prepare(s.image, s.prompt) for s in
                               (synthetic_sample("document", 2), synthetic_sample("code", 3)))
    read = []
    _, close = _held_open_in_a_thread(lambda: tiny._visual_rows_hook(held_input, capture=read))
    try:
        tiny.generate_ids(other_input, 4)
        assert read == []
    finally:
        close()
    np.testing.assert_array_equal(tiny.visual_features(held_input), tiny.visual_features(held_input))
    assert tiny.visual_features(held_input).shape == (held_input.n_visual_tokens, tiny.model.config.text_config.hidden_size)


def test_one_blas_thread_nested_across_threads_restores_the_limit_once_the_last_stream_ends():
    """The BLAS limit is process-wide: two streams that overlap (A enters, B enters, A leaves, B leaves) must
    keep it at one thread until B leaves, and leave it as it was before A — not stuck at B's one thread."""
    from threadpoolctl import threadpool_info

    def blas_threads():
        return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]

    before = blas_threads()
    if not before or max(before) == 1:
        pytest.skip("no multi-threaded BLAS threadpool here: a limit of one thread cannot be told apart")
    a, b = one_blas_thread(), one_blas_thread()
    a.__enter__()
    b.__enter__()
    a.__exit__(None, None, None)
    assert all(n == 1 for n in blas_threads()), "the limit ended while a stream still ran"
    b.__exit__(None, None, None)
    assert blas_threads() == before
