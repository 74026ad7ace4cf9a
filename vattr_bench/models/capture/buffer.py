"""The capture buffer: each recorded query row with its log-sum-exp, and the visual keys (and values) of the
prompt, read back span by span as attention weights (and logit rows, value norms, 1/rms scales)."""
from __future__ import annotations

import numpy as np
import torch

from .arrays import cat_numpy, grouped_matmul, permute, to_numpy
from .readouts import LogitReadout, visual_value_norms

Array = "np.ndarray | torch.Tensor"  # a capture's reads: numpy on the host, torch on its device (``on_device``)
RESIDUAL = "residual"  # `record_residual`'s entries among the pending records (a layer index elsewhere)


class VisualAttentionCapture:
    """Rows of the decoder's attention to the visual keys, for query positions ≥ ``first_row``: row r is
    the query at position first_row + r (with the default first_row, the one that predicts trace token r).

    ``layer_of`` maps each decoder attention module to its layer index; other attention modules (the
    vision tower's) pass straight through. Inside the forward pass a layer only keeps a reference to its
    query and lse tensors (fresh tensors, never written again); `flush` moves what has accumulated into
    float32 numpy buffers, a run of decode steps with one concatenation and one numpy conversion each for
    queries and lse. Converting per layer and step instead cost ~30 µs a call inside generation on the
    CPU, ~120 µs per vattr-tiny decode step (measured in place, one-off). Reading a span's rows is then a
    slice. Rows count (``n_rows``) once flushed: in streaming the producer hands each span's records over
    (`take_pending`) and the worker flushes them; otherwise the capture context flushes when it exits.

    ``on_device`` (a model on an accelerator): the buffers, visual keys and values and the logit table stay
    torch tensors on the device the rows were recorded on, and reads (`rows`, `weights`, `logit_values`)
    return such tensors, so the per-span work runs there and only a span's (K,) scores come to the host
    (`SpanAttributor`). Off, everything is float32 numpy on the host: the CPU's path, and on a GPU one
    device-to-host copy per run of steps. `attention` returns numpy either way.

    ``heads`` (layer-major indices into the L·H heads; an estimator that uses only those, `select_heads`):
    the per-span reads `weights` and `logit_values` cover those heads only and return (m, …) arrays, one
    row per head in the given order, where all heads give (L, H, …). Rows are still recorded for every head
    (the flush copies whole calls); what shrinks is the products, exponentials and logit rows per span, and
    with a readout of those heads (the adapter's, `logit_readout(heads=…)`) a new token's head directions.

    ``norm_eps`` (direct-logit features): the model's final RMSNorm's epsilon. The adapter hands the norm's
    input (the residual stream after the last layer) to `record_residual` at every forward, and the flush
    keeps each row's 1/rms — the scale the final norm puts on everything a head writes (`token_scales`).
    """

    INITIAL_ROWS = 256  # buffer rows at first; doubled whenever the rows not released (`release`) outgrow them
    INITIAL_LOGIT_SLOTS = 64  # `logit_values` table slots (distinct tokens) at first; doubled likewise
    # at most this much logit table a capture: a slot is L·H·N floats (16 KB on vattr-tiny, whose whole vocabulary
    # fits; ~3 MB for a 7 B model's 784 heads over 1,000 visual tokens, where 80 tokens fill it)
    LOGIT_TABLE_BYTES = 256 * 2**20

    def __init__(self, layer_of: dict[int, int], visual_positions: np.ndarray, first_row: int,
                 value_grams: list[np.ndarray] | None = None, readout: LogitReadout | None = None,
                 on_device: bool = False, heads=None, norm_eps: float | None = None):
        """``value_grams``: per layer, the (H, d, d) W_O^hᵀW_O^h of `o_proj_gram`, for ‖W_O^h v_n‖ (the
        value-weighted features' factor, `value_norms`); ``readout``: what `logit_values` reads the visual
        values with (the logit-weighted features). Given either, the capture also keeps the visual values."""
        self.on_device = on_device
        self._device: torch.device | None = None  # where the rows were recorded (the prompt's first call)
        self.layer_of = layer_of
        self.num_layers = len(layer_of)
        positions = np.asarray(visual_positions, dtype=np.int64)
        # one image's tokens are one run of positions: sliced (a view) rather than gathered, in the prompt pass
        run = len(positions) > 0 and np.array_equal(positions, np.arange(positions[0], positions[0] + len(positions)))
        self._visual = slice(int(positions[0]), int(positions[0]) + len(positions)) if run \
            else torch.as_tensor(positions, dtype=torch.long)
        self.first_row = first_row
        self.scale: list[float] = [1.0] * self.num_layers
        # per layer, from its first call (the prompt): visual keys, visual values (or None), query heads per kv head
        self._prompt: list[tuple[torch.Tensor, torch.Tensor | None, int] | None] = [None] * self.num_layers
        self._value_grams = None if value_grams is None else np.stack(value_grams)  # (L, H, d, d)
        self.readout = readout
        self._keep_values = value_grams is not None or readout is not None
        # (L, H, capacity, d + 1): each row's query and, as its last column, its lse — so that one product
        # with the visual keys and a last row of -1/scale (`_visual_keys_t`) gives q·k − lse/scale
        self._rows: np.ndarray | None = None
        self.n_rows = 0  # rows flushed in every layer so far
        self._row0 = 0  # the row that buffer row 0 holds (rows before it were released and dropped)
        self._released = 0  # rows before this will not be read again (`release`)
        self._pending: list[tuple] = []  # (layer, key length, query, lse), and (RESIDUAL, first position, residual)
        self.norm_eps = norm_eps
        self._inverse_rms: np.ndarray | None = None  # (capacity,) 1/rms of each buffer row's residual, with norm_eps
        self._last_key_length = 0  # the last recorded call's: a residual's forward ends at that position
        self._keys_t: np.ndarray | None = None  # (L, H, d + 1, N), built at the first read
        self._values: np.ndarray | None = None  # (L, H, N, d), built at the first read
        self._value_norms: np.ndarray | None = None  # (L, H, N), built at the first read
        self._values_t: np.ndarray | None = None  # (L·H, d, N), for the logit rows, built at their first read
        self._logit_table: np.ndarray | None = None  # (L·H, capacity, N): `logit_values` rows, one slot per token
        self._logit_slot: dict[int, int] = {}  # token id -> its slot in the table
        self.heads = None if heads is None else np.asarray(heads, dtype=np.int64)
        if self.heads is not None and (self.heads.ndim != 1 or len(self.heads) == 0):
            raise ValueError(f"heads: a non-empty list of head indices, got {heads!r}")
        self._head_reads = None  # with `heads`: (row index, K_vis, scale, values' kv index), at the first read
        self._values_heads = None  # with `heads`: (F, d, N) their kv heads' visual values, at the first logit rows

    # -- called from inside the attention backend --------------------------------------------------
    def record(self, layer: int, query: torch.Tensor, key: torch.Tensor, lse: torch.Tensor, scale: float,
               value: torch.Tensor | None = None) -> None:
        """Keep references only: this runs inside every forward pass. The prompt's visual keys (and values)
        are cut out once, as torch tensors; turning them into numpy, repeating grouped heads and the value
        norms wait for the first read (the streaming worker, off the generating thread)."""
        if self._prompt[layer] is None:  # the layer's first call: the prompt, visual tokens included
            values = self._visual_rows(value) if self._keep_values else None
            self._prompt[layer] = (self._visual_rows(key), values, query.shape[1] // key.shape[1])
            self.scale[layer] = scale
            self._device = query.device
        self._pending.append((layer, key.shape[2], query, lse))
        self._last_key_length = key.shape[2]

    def record_residual(self, residual: torch.Tensor) -> None:
        """The final norm's (1, s, hidden) input of the forward whose attention calls were just recorded: a
        reference only, as `record`; the flush turns it into 1/rms per row."""
        self._pending.append((RESIDUAL, self._last_key_length - residual.shape[1], residual))

    def _visual_rows(self, t: torch.Tensor) -> torch.Tensor:
        """(1, H_kv, N, d) rows of the visual positions, copied (a cache may reuse its buffer later)."""
        if isinstance(self._visual, slice):
            return t[:, :, self._visual].clone()
        return t.index_select(2, self._visual.to(t.device))

    def take_pending(self) -> list:
        """Hand over what `record` has kept since the last call (cheap: the producer's side of a flush);
        `flush(pending)` writes it, in whichever thread reads the rows."""
        pending, self._pending = self._pending, []
        return pending

    def flush(self, pending: list | None = None) -> None:
        """Write recorded calls' rows into the buffers: ``pending`` from `take_pending`, else everything
        recorded so far. One thread writes at a time (streaming: the worker; otherwise the caller)."""
        pending = self.take_pending() if pending is None else pending
        residuals = []
        if self.norm_eps is not None:  # the residuals apart: the attention calls' runs are read by position
            residuals = [c for c in pending if c[0] is RESIDUAL]
            pending = [c for c in pending if c[0] is not RESIDUAL]
        L, i = self.num_layers, 0
        while i < len(pending):
            steps = _decode_steps(pending, i, L)
            if steps:  # a run of decode steps: L calls of one query each, at consecutive positions
                chunk = pending[i:i + steps * L]
                r0 = chunk[0][1] - 1 - self.first_row
                if r0 >= 0:
                    queries = self._cat([c[2] for c in chunk])[0]  # (H, steps·L, d), step-major
                    lse = self._cat([c[3] for c in chunk])[0]
                    H, d = queries.shape[0], queries.shape[-1]
                    self._write(slice(None), r0, permute(queries.reshape(H, steps, L, d), 2, 0, 1, 3),
                                permute(lse.reshape(H, steps, L), 2, 0, 1))
                    i += steps * L
                    continue
            layer, kv_len, query, lse = pending[i]
            q_len = query.shape[2]
            first = kv_len - q_len  # absolute position of this call's first query (batch 1, no padding)
            lo = max(self.first_row - first, 0)
            if lo < q_len:
                self._write(layer, first + lo - self.first_row, self._array(query)[0, :, lo:], self._array(lse)[0, :, lo:])
            i += 1
        if residuals:
            self._write_inverse_rms(residuals)

    def _write_inverse_rms(self, residuals: list) -> None:
        """1/sqrt(mean(x²) + eps) of each recorded residual row at or after first_row (its attention rows,
        written first, made the room); a run of consecutive forwards (decode steps) in one pass."""
        i = 0
        while i < len(residuals):
            j = i + 1
            while j < len(residuals) and residuals[j][1] == residuals[j - 1][1] + residuals[j - 1][2].shape[1]:
                j += 1
            first = residuals[i][1]
            x = residuals[i][2] if j == i + 1 else torch.cat([c[2] for c in residuals[i:j]], dim=1)
            lo = max(self.first_row - first, 0)
            if lo < x.shape[1]:
                x = self._array(x[0, lo:])  # (r, hidden)
                r0 = first + lo - self.first_row
                held, b0 = self._inverse_rms, r0 - self._row0
                if held is None or b0 < 0 or b0 + x.shape[0] > len(held):
                    raise RuntimeError(f"attention capture: residual rows {r0}… have no attention rows")
                mean_square = (x * x).mean(-1) + self.norm_eps
                held[b0:b0 + x.shape[0]] = \
                    mean_square.rsqrt() if self.on_device else 1 / np.sqrt(mean_square)
            i = j

    def _write(self, layers, r0: int, queries: Array, lse: Array) -> None:
        """Rows r0… of ``layers`` (one index, or a slice of all); n_rows moves once the last layer has them."""
        r1 = r0 + queries.shape[-2]
        if r0 < self._released:
            raise RuntimeError(f"attention capture: rows before {self._released} were released; cannot write row {r0}")
        if self._rows is None or r1 - self._row0 > self._rows.shape[2]:
            self._grow(r1, queries.shape[-3], queries.shape[-1])
        self._rows[layers, :, r0 - self._row0:r1 - self._row0, :-1] = queries
        self._rows[layers, :, r0 - self._row0:r1 - self._row0, -1] = lse
        if layers == slice(None) or layers == self.num_layers - 1:
            self.n_rows = max(self.n_rows, r1)

    def _grow(self, rows: int, heads: int, dim: int) -> None:
        """Room for rows up to ``rows``: the rows not released move to the front of a new buffer, the same
        size where releasing made room, else doubled. Rows are written once and copied before the swap, so
        a reader holding the old buffer still reads every row recorded before it."""
        held = 0 if self._rows is None else self._rows.shape[2]
        needed = rows - self._released
        capacity = held if needed <= held else max(self.INITIAL_ROWS, needed, 2 * held)
        buffer = self._empty((self.num_layers, heads, capacity, dim + 1))
        if self._rows is not None:
            kept = self._rows[:, :, self._released - self._row0:]
            buffer[:, :, :kept.shape[2]] = kept
        if self.norm_eps is not None:
            inverse_rms = self._empty((capacity,))
            if self._inverse_rms is not None:
                kept = self._inverse_rms[self._released - self._row0:]
                inverse_rms[:len(kept)] = kept
            self._inverse_rms = inverse_rms
        self._rows, self._row0 = buffer, self._released

    def release(self, upto: int) -> None:
        """Rows before ``upto`` will not be read again (the streaming worker, after each span): the next time
        the buffer is full they are dropped instead of it doubling, so a stream holds the rows of the spans
        in flight, not of the whole trace — with Qwen2.5-VL-7B's 28 layers × 28 heads of dim 128, 0.4 MB a
        token in float32, 7× its bf16 KV cache. Reading them afterwards raises."""
        self._released = max(self._released, min(upto, self.n_rows))

    # -- read out ------------------------------------------------------------------------------------
    def rows(self, first: int = 0, last: int | None = None) -> tuple[Array, Array]:
        """(L, H, r, d) queries and (L, H, r) lse of flushed rows [first, last) — views, no weights yet."""
        rows = self._row_range(first, last)
        return rows[..., :-1], rows[..., -1]

    def _row_range(self, first: int, last: int | None) -> Array:
        return self._rows[:, :, self._buffer_slice(first, last)]

    def _buffer_slice(self, first: int, last: int | None) -> slice:
        """Buffer positions of flushed rows [first, last) (last clamped to the rows flushed), checked: some
        rows, none released. The row buffers and the 1/rms buffer share the positions."""
        last = self.n_rows if last is None else min(last, self.n_rows)
        if first >= last:
            raise ValueError(f"no captured rows in [{first}, {last}); {self.n_rows} flushed")
        if first < self._released:
            raise ValueError(f"captured rows before {self._released} were released (`release`); asked from {first}")
        return slice(first - self._row0, last - self._row0)

    def token_scales(self, first: int = 0, last: int | None = None) -> Array:
        """(r,) 1/rms of the residual the final norm reads at flushed rows [first, last) (with ``norm_eps``):
        what the norm multiplies each head's direct write by before the unembedding."""
        if self.norm_eps is None:
            raise RuntimeError("no token scales: open the capture with norm_scale=True")
        return self._inverse_rms[self._buffer_slice(first, last)]

    def weights(self, first: int = 0, last: int | None = None) -> Array:
        """(L, H, r, N) (or (m, r, N) for `heads`) attention weights of flushed rows [first, last) to the
        visual tokens, exp((q·k − lse/scale)·scale): one product of each row and its lse with the visual keys
        and their row of −1/scale, one multiply, one exp — as exact as the product, scale and lse subtraction
        it replaced (6–14e-6 from the same rows in float64 either way, one sample per family, one-off). On
        the host numpy only: the streaming worker calls this from its own thread, where torch ops would
        start a second OpenMP pool competing with generation for the cores."""
        rows = self._row_range(first, last)
        if self.heads is None:
            scores = grouped_matmul(rows, self._visual_keys_t())
            # the scale after the product, not folded into K_vis: folded, a generated and a teacher-forced
            # capture of the same trace differed by 1.5e-5 on a weight near 1 (scores reach tens)
            scores *= self._scale
        else:  # the heads read only: their rows gathered, each against its own kv head's keys
            index, keys, scale, _ = self._heads_read()
            scores = rows.reshape(-1, *rows.shape[2:])[index] @ keys
            scores *= scale
        return scores.exp_() if self.on_device else np.exp(scores, out=scores)

    def _heads_read(self):
        """With `heads`: their index (as this capture's kind), their kv heads' K_vis (m, d + 1, N) and scale
        (m, 1, 1), and the kv index of each (for the values), built once: m rows of K_vis are copied, as
        many as the heads read (the all-heads path shares each kv head's among its group instead)."""
        if self._head_reads is None:
            keys_t = self._visual_keys_t()  # (L, H_kv, d + 1, N)
            L, kv_heads = keys_t.shape[:2]
            H = kv_heads * self.query_groups
            if self.heads.min() < 0 or self.heads.max() >= L * H:
                raise ValueError(f"heads {self.heads.tolist()} outside the model's {L}×{H} = {L * H}")
            layer, head = np.divmod(self.heads, H)
            kv = layer * kv_heads + head // self.query_groups
            index, kv_index = (torch.as_tensor(i, device=self._device) for i in (self.heads, kv)) if self.on_device \
                else (self.heads, kv)
            keys = keys_t.reshape(L * kv_heads, *keys_t.shape[2:])[kv_index]
            scale = self._array(np.asarray(self.scale, dtype=np.float32)[layer].reshape(-1, 1, 1))
            self._head_reads = index, keys, scale, kv_index
        return self._head_reads

    def clear_reads(self) -> None:
        """Forget what reads built from the prompt (K_vis, values, value norms, logit rows); the next read
        builds it again. `perf` times a stream's whole worker work with it."""
        self._keys_t = self._values = self._value_norms = self._values_t = self._logit_table = None
        self._head_reads = self._values_heads = None
        self._logit_slot = {}

    def _prompt_rows(self) -> list[tuple[torch.Tensor, torch.Tensor | None, int]]:
        if any(p is None for p in self._prompt):
            raise RuntimeError("the prompt has not been through every decoder layer inside this capture")
        return self._prompt

    def _visual_keys_t(self) -> Array:
        """K_vis as (L, H_kv, d + 1, N) — one per kv head: grouped query heads share it (`weights`), where
        repeating it per query head would hold ×groups the memory — with a last row of −1/scale that meets
        each row's lse; built once: the visual keys never change."""
        if self._keys_t is None:
            keys = [self._array(k)[0] for k, _, _ in self._prompt_rows()]  # (H_kv, N, d) each
            kv_heads, N, d = keys[0].shape
            self._keys_t = self._empty((len(keys), kv_heads, d + 1, N))
            for layer, k in enumerate(keys):  # one copy, straight into the transposed layout
                self._keys_t[layer, :, :d] = k.swapaxes(-1, -2)
                self._keys_t[layer, :, d] = -1.0 / self.scale[layer]
            self._scale = self._array(np.asarray(self.scale, dtype=np.float32).reshape(-1, 1, 1, 1))
        return self._keys_t

    def visual_values(self) -> Array:
        """The visual tokens' values as (L, H_kv, N, d), one per kv head, built once."""
        if self._values is None:
            if not self._keep_values:
                raise RuntimeError("no visual values kept: open the capture with value_norms or logit_readout")
            values = [self._array(v)[0] for _, v, _ in self._prompt_rows()]
            self._values = np.stack(values) if isinstance(values[0], np.ndarray) else torch.stack(values)
        return self._values

    @property
    def query_groups(self) -> int:
        """Query heads per kv head (1 without grouped-query attention)."""
        return self._prompt_rows()[0][2]

    @property
    def value_norms(self) -> np.ndarray:
        """(L, H, N) ‖W_O^h v_n‖, once the prompt has been through every layer (computed at the first read,
        all layers in one batched product: per layer it took ~270 µs a stream on vattr-tiny, one-off timing)."""
        if self._value_grams is None:
            raise RuntimeError("no value norms: open the capture with value_norms=True and run the prompt through it")
        if self._value_norms is None:  # per query head: each has its own W_O^h (values repeated for this once)
            values = np.repeat(to_numpy(self.visual_values()), self.query_groups, axis=1)
            self._value_norms = visual_value_norms(self._value_grams, values)
        return self._value_norms

    def logit_values(self, token_ids) -> Array:
        """(L, H, n, N) (or (m, n, N) for `heads`) u_tᵀ W_O^h v_n: how far head h, reading visual token n,
        pushes the logit of token y_t (u_t: y_t's unembedding row times the final norm's gain — the direct
        path, the norm's scale left out) for the tokens ``token_ids`` that a run of rows predicts. On the
        host numpy only, as `weights`.

        A token's row depends on the prompt only, so each is computed once per capture, all of a call's new
        tokens in one product, into a table gathered from per call (one `np.take`, contiguous). The table
        holds at most LOGIT_TABLE_BYTES; past it, the rows of tokens not in it are computed for each call."""
        if self.readout is None:
            raise RuntimeError("no logit readout: open the capture with logit_readout=True")
        token_ids = list(token_ids)
        new = [t for t in dict.fromkeys(token_ids) if t not in self._logit_slot]
        if new:
            self._add_logit_rows(new)
        try:
            slots = [self._logit_slot[t] for t in token_ids]
        except KeyError:  # the table is full
            rows = self._logit_rows_some_not_kept(token_ids)
        else:
            rows = np.take(self._logit_table, slots, axis=1) if isinstance(self._logit_table, np.ndarray) \
                else self._logit_table[:, slots]  # (L·H, n, N), or (m, n, N) for `heads`
        return rows if self.heads is not None else rows.reshape(self.num_layers, -1, *rows.shape[1:])

    def _logit_rows(self, token_ids: list, out=None) -> Array:
        """(L·H, m, N) rows of ``token_ids`` ((F, m, N) for `heads`), into ``out`` where given."""
        if self._values_t is None:
            values = self.visual_values()  # (L, H_kv, N, d)
            self._values_t = values.reshape(-1, *values.shape[2:]).swapaxes(-1, -2)
            self._values_t = self._values_t.contiguous() if self.on_device else np.ascontiguousarray(self._values_t)
        d = self._values_t.shape[1]  # (L·H_kv, d, N)
        directions = self._array(self.readout.head_directions(token_ids))  # (m, L·H·d), or (m, F·d) for `heads`
        per_head = directions.reshape(len(token_ids), -1, d).swapaxes(0, 1)  # (L·H or F, m, d)
        values_t = self._values_t
        if self.heads is not None:  # the heads read only, each against its own kv head's values
            index, _, _, kv_index = self._heads_read()
            if per_head.shape[0] != len(self.heads):  # a readout of every head (`logit_readout(heads=…)` gives just these)
                per_head = per_head[index]
            if self._values_heads is None:  # gathered once: for a big model's heads it is megabytes
                self._values_heads = self._values_t[kv_index]
            values_t = self._values_heads
        if out is not None and per_head.shape[0] == values_t.shape[0] and not self.on_device:
            return np.matmul(per_head, values_t, out=out)  # straight into the table's slots
        rows = grouped_matmul(per_head, values_t)
        if out is None:
            return rows
        out[...] = rows
        return out

    def _add_logit_rows(self, token_ids: list) -> None:
        """Table slots for as many of ``token_ids`` as LOGIT_TABLE_BYTES leaves room for."""
        values = self.visual_values()  # (L, H_kv, N, d)
        LH, N = values.shape[0] * values.shape[1] * self.query_groups, values.shape[2]
        LH = LH if self.heads is None else len(self.heads)
        max_slots = max(self.LOGIT_TABLE_BYTES // (LH * N * 4), 1)  # float32 slots
        first = len(self._logit_slot)
        token_ids = token_ids[:max_slots - first]
        if not token_ids:
            return
        if self._logit_table is None or first + len(token_ids) > self._logit_table.shape[1]:
            held = 0 if self._logit_table is None else self._logit_table.shape[1]
            capacity = min(max(self.INITIAL_LOGIT_SLOTS, first + len(token_ids), 2 * held), max_slots)
            table = self._empty((LH, capacity, N))
            if first:
                table[:, :first] = self._logit_table[:, :first]
            self._logit_table = table
        self._logit_rows(token_ids, out=self._logit_table[:, first:first + len(token_ids)])
        self._logit_slot.update({t: first + i for i, t in enumerate(token_ids)})

    def _logit_rows_some_not_kept(self, token_ids: list) -> Array:
        """(L·H, n, N) rows of ``token_ids`` when some are not in the (full) table: those computed here."""
        kept = [i for i, t in enumerate(token_ids) if t in self._logit_slot]
        others = [i for i, t in enumerate(token_ids) if t not in self._logit_slot]
        computed_ids = list(dict.fromkeys(token_ids[i] for i in others))
        computed = self._logit_rows(computed_ids)
        rows = self._empty((computed.shape[0], len(token_ids), computed.shape[2]))
        if kept:
            rows[:, kept] = self._logit_table[:, [self._logit_slot[token_ids[i]] for i in kept]]
        position = {t: j for j, t in enumerate(computed_ids)}
        rows[:, others] = computed[:, [position[token_ids[i]] for i in others]]
        return rows

    def attention(self, n_rows: int | None = None) -> np.ndarray:
        """(L, H, T, N) weights for the first ``n_rows`` captured rows (all by default), as numpy ((m, T, N)
        for `heads`)."""
        return to_numpy(self.weights(0, n_rows))

    # -- the buffers' kind: float32 numpy on the host, or float32 torch on the rows' device ------------
    def _array(self, t):
        """A recorded tensor (or a host array) as this capture's kind."""
        if not self.on_device:
            return to_numpy(t) if isinstance(t, torch.Tensor) else t
        if isinstance(t, np.ndarray):
            return torch.from_numpy(t).to(self._device)
        return t.detach().float()

    def _cat(self, tensors: list[torch.Tensor]):
        return torch.cat(tensors, dim=2).float() if self.on_device else cat_numpy(tensors)

    def _empty(self, shape: tuple):
        return torch.empty(shape, dtype=torch.float32, device=self._device) if self.on_device else np.empty(shape, np.float32)



def _decode_steps(pending: list, i: int, num_layers: int) -> int:
    """How many whole decode steps start at pending[i]: calls of one query for layers 0…L-1 in order,
    each step's key one longer than the last's."""
    steps = 0
    while i + (steps + 1) * num_layers <= len(pending):
        kv = pending[i + steps * num_layers][1]
        if steps and kv != pending[i + (steps - 1) * num_layers][1] + 1:
            break
        for layer in range(num_layers):
            c = pending[i + steps * num_layers + layer]
            if c[0] != layer or c[1] != kv or c[2].shape[2] != 1:
                return steps
        steps += 1
    return steps

