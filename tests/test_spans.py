from vattr_bench.models.spans import SpanSplitter, split_spans

WORDS = ["<think>", "</think>", "bar", "one", "is", "3", ".", "two", "5", "8", "\n", "hmm"]


def decode(ids):
    return " ".join(WORDS[i] for i in ids)


def ids(text):
    return [WORDS.index(w) for w in text.split(" ")]


def test_sentences_and_answer_become_spans_without_markers():
    trace = ids("<think> bar one is 3 . bar two is 5 . </think> 8")
    spans = split_spans(trace, decode)
    assert [s.text for s in spans] == ["bar one is 3 .", "bar two is 5 .", "8"]
    assert [s.is_answer for s in spans] == [False, False, True]
    assert (spans[0].start, spans[0].end) == (1, 6)
    assert (spans[2].start, spans[2].end) == (12, 13)


def test_streaming_closes_each_span_on_its_last_token():
    trace = ids("<think> bar one is 3 . hmm </think> 8")
    splitter = SpanSplitter(decode)
    closed_at = {}
    for pos, t in enumerate(trace):
        span = splitter.feed(t)
        if span:
            closed_at[span.text] = pos
    last = splitter.finish()
    assert closed_at == {"bar one is 3 .": 5, "hmm": 7}  # an unpunctuated thought closes at </think>
    assert last.text == "8" and last.is_answer


def test_prompt_opened_thinking_and_unclosed_trace():
    # e.g. Qwen3-VL-Thinking: `<think>` sits in the prompt, so the trace starts inside it
    spans = split_spans(ids("bar one is 3 \n bar two"), decode)
    assert [s.text for s in spans] == ["bar one is 3", "bar two"]
    assert not any(s.is_answer for s in spans)  # thinking never closed: no answer span
