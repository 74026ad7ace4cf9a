"""Split a generated trace into spans (sentences), token by token.

One incremental splitter serves both the offline split of a finished trace and, later, streaming,
where a span must be recognised the moment its last token is generated.

Rules (docs/methodology.md): inside the thinking part a span ends at a token whose text ends a sentence
('.', '!', '?') or holds a newline; `</think>` closes the thinking part, and everything after it is the
answer span. The marker tokens themselves belong to no span. A model whose prompt already opened
`<think>` (e.g. Qwen3-VL-Thinking) starts inside the thinking part, so generation starts there too.
"""
from __future__ import annotations

from ..types import THINK_CLOSE, THINK_OPEN, Span

SENTENCE_ENDS = (".", "!", "?")


class SpanSplitter:
    def __init__(self, decode):
        """``decode(list_of_ids) -> str`` is the tokenizer's decode."""
        self._decode = decode
        self._ids: list[int] = []
        self._start: int | None = None
        self._in_answer = False
        self.spans: list[Span] = []

    def _close(self, end: int, is_answer: bool = False) -> Span | None:
        start, self._start = self._start, None
        if start is None or end <= start:
            return None
        text = self._decode(self._ids[start:end]).strip()
        if not text:
            return None
        span = Span(start, end, text, is_answer)
        self.spans.append(span)
        return span

    def feed(self, token_id: int) -> Span | None:
        """Add the next generated token; return the span it closes, if any."""
        pos = len(self._ids)
        self._ids.append(token_id)
        piece = self._decode([token_id])
        marker = piece.strip()
        if marker == THINK_OPEN:
            return None
        if marker == THINK_CLOSE and not self._in_answer:
            self._in_answer = True
            return self._close(pos)
        if self._start is None:
            if not piece.strip():  # whitespace between sentences starts no span
                return None
            self._start = pos
        if not self._in_answer and (marker.endswith(SENTENCE_ENDS) or "\n" in piece):
            return self._close(pos + 1)
        return None

    def finish(self) -> Span | None:
        """The trace ended: close what is open (the answer, or an unfinished thought)."""
        return self._close(len(self._ids), is_answer=self._in_answer)


def split_spans(token_ids: list[int], decode) -> list[Span]:
    splitter = SpanSplitter(decode)
    for t in token_ids:
        splitter.feed(t)
    splitter.finish()
    return splitter.spans
