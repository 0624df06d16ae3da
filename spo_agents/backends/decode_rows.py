"""Per-row state of the decode batch as tensors: sampling, recording and stop checks for all
rows in a fixed number of tensor ops, whatever the number of rows.

Why: a Python loop over the rows at every step (append the token, check stop ids, decode a
tail for stop strings, check lengths) costs time in proportion to the batch, on the thread
that should be feeding the model. Here a step samples every row at once, writes tokens and
log-probs into [rows, max_new] buffers, and finds finished rows with tensor comparisons. Python
work per step is constant plus one check per *flagged* row: rows that finished, and rows whose
new token could complete a stop string (its text contains a stop string's last character or
an incomplete UTF-8 sequence; a vocabulary-sized table says which tokens can).

Sampling follows base.py's convention: log-probs are `log_softmax(logits / T)` over the full
vocabulary (T = 1 for greedy rows); top-k and top-p only restrict what is drawn. Rows with a
seed draw their uniform from their own generator; the others share one draw (inverse_cdf_sample).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

__all__ = ["RowTable", "filter_logits", "StopTable"]

_FIELDS = {"temperature": torch.float32, "greedy": torch.bool, "top_k": torch.long, "top_p": torch.float32,
           "limit": torch.long, "count": torch.long, "next_position": torch.long, "last_token": torch.long,
           "check_strings": torch.bool}


def filter_logits(scaled_B_V: torch.Tensor, top_k_B: torch.Tensor, top_p_B: torch.Tensor) -> torch.Tensor:
    """Apply each row's top-k and top-p to tempered logits (masked entries become -inf)."""
    if bool((top_k_B > 0).any()):
        k_max = min(int(top_k_B.max()), scaled_B_V.shape[-1])
        top_values_B_K = torch.topk(scaled_B_V, k_max, dim=-1).values
        kth_index_B = (top_k_B.clamp(min=1, max=k_max) - 1).unsqueeze(-1)
        kth_B = top_values_B_K.gather(-1, kth_index_B)
        kth_B = torch.where(top_k_B.unsqueeze(-1) > 0, kth_B, torch.full_like(kth_B, -float("inf")))
        scaled_B_V = scaled_B_V.masked_fill(scaled_B_V < kth_B, -float("inf"))
    if bool((top_p_B < 1.0).any()):
        sorted_B_V, order_B_V = torch.sort(scaled_B_V, dim=-1, descending=True)
        probs_B_V = sorted_B_V.softmax(dim=-1)
        mass_before_B_V = probs_B_V.cumsum(dim=-1) - probs_B_V
        remove_sorted_B_V = mass_before_B_V > top_p_B.to(probs_B_V.dtype).unsqueeze(-1)
        remove_B_V = torch.zeros_like(remove_sorted_B_V).scatter(-1, order_B_V, remove_sorted_B_V)
        scaled_B_V = scaled_B_V.masked_fill(remove_B_V, -float("inf"))
    return scaled_B_V


def inverse_cdf_sample(probs_B_V: torch.Tensor, uniform_B: torch.Tensor) -> torch.Tensor:
    """Row b's token: the first index whose cumulative probability exceeds uniform_B[b] (in
    [0, 1)) times the row's total; zero-probability tokens are never drawn.

    Why not torch.multinomial: on a CPU it spends about 1.3 ms on a 64 x 1,030 batch (a tenth
    of a small model's decode step); this is one cumulative sum and one binary search per row
    (0.05 ms). The sum runs in float64 so that large vocabularies keep each token's share."""
    cumulative_B_V = probs_B_V.to(torch.float64).cumsum(dim=-1)
    target_B1 = (uniform_B * cumulative_B_V[:, -1]).unsqueeze(-1)
    drawn_B = torch.searchsorted(cumulative_B_V, target_B1, right=True).squeeze(-1)
    return drawn_B.clamp_(max=probs_B_V.shape[-1] - 1)


class StopTable:
    """Which token ids could complete one of a set of stop strings (see the module docstring)."""

    def __init__(self, tokenizer: Any, vocab_size: int, device: torch.device):
        self.tokenizer, self.vocab_size, self.device = tokenizer, vocab_size, device
        self._texts: list[str] | None = None
        self._tables: dict[tuple[str, ...], torch.Tensor] = {}
        self.union = torch.zeros(vocab_size, dtype=torch.bool, device=device)

    def _token_texts(self) -> list[str]:
        if self._texts is None:
            known = len(self.tokenizer)
            self._texts = [self.tokenizer.decode([i], skip_special_tokens=False) if i < known else "\ufffd"
                           for i in range(self.vocab_size)]
        return self._texts

    def add(self, stop_strings: tuple[str, ...]) -> None:
        if not stop_strings or stop_strings in self._tables:
            return
        finals = {s[-1] for s in stop_strings}
        if any(c.isspace() for c in finals):  # decoders may drop a token's leading space: check all
            table = torch.ones(self.vocab_size, dtype=torch.bool)
        else:
            table = torch.tensor([("\ufffd" in t) or any(c in t for c in finals) for t in self._token_texts()])
        self._tables[stop_strings] = table
        self.union |= table.to(self.device)


class RowTable:
    """Settings, counters and outputs of up to `max_rows` rows (row i = slab row i)."""

    def __init__(self, max_rows: int, device: torch.device, max_new: int = 64):
        self.device = device
        for name, dtype in _FIELDS.items():
            setattr(self, name, torch.zeros(max_rows, dtype=dtype, device=device))
        self.stop_ids = torch.full((max_rows, 1), -1, dtype=torch.long, device=device)
        self.tokens = torch.zeros(max_rows, max_new, dtype=torch.long, device=device)
        self.logprobs = torch.zeros(max_rows, max_new, dtype=torch.float32, device=device)
        self.generators: dict[int, torch.Generator] = {}  # seeded rows only

    def set_row(self, row: int, params: Any, stop_ids: Sequence[int], limit: int, prompt_len: int,
                generator: torch.Generator | None) -> None:
        values = {"temperature": params.logprob_temperature, "greedy": params.greedy, "top_k": params.top_k,
                  "top_p": params.top_p, "limit": limit, "count": 0, "next_position": prompt_len,
                  "last_token": 0, "check_strings": bool(params.stop_strings)}
        for name, value in values.items():
            getattr(self, name)[row] = value
        if len(stop_ids) > self.stop_ids.shape[1]:
            extra = self.stop_ids.new_full((self.stop_ids.shape[0], len(stop_ids) - self.stop_ids.shape[1]), -1)
            self.stop_ids = torch.cat([self.stop_ids, extra], dim=1)
        self.stop_ids[row] = -1
        self.stop_ids[row, : len(stop_ids)] = torch.tensor(list(stop_ids), dtype=torch.long)
        if limit > self.tokens.shape[1]:
            grow = max(limit, 2 * self.tokens.shape[1]) - self.tokens.shape[1]
            self.tokens = torch.cat([self.tokens, self.tokens.new_zeros(self.tokens.shape[0], grow)], dim=1)
            self.logprobs = torch.cat([self.logprobs, self.logprobs.new_zeros(self.logprobs.shape[0], grow)], dim=1)
        self.generators.pop(row, None)
        if generator is not None:
            self.generators[row] = generator

    def move(self, moves: list[tuple[int, int]]) -> None:
        """Apply the slab's (source, destination) row moves to every per-row tensor."""
        if not moves:
            return
        src = torch.tensor([s for s, _ in moves], device=self.device)
        dst = torch.tensor([d for _, d in moves], device=self.device)
        for name in (*_FIELDS, "stop_ids", "tokens", "logprobs"):
            tensor = getattr(self, name)
            tensor.index_copy_(0, dst, tensor.index_select(0, src))
        generators = {}
        for source, destination in moves:
            if source in self.generators:
                generators[destination] = self.generators.pop(source)
        for destination in dst.tolist():
            self.generators.pop(destination, None)
        self.generators.update(generators)

    def sample(self, logits_B_V: torch.Tensor, start: int, shared: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """One token and its behaviour log-prob for rows start..start+B-1."""
        end = start + logits_B_V.shape[0]
        logits_B_V = logits_B_V.float()
        scaled_B_V = logits_B_V / self.temperature[start:end].unsqueeze(-1)
        logprobs_B_V = torch.log_softmax(scaled_B_V, dim=-1)
        tokens_B = logits_B_V.argmax(dim=-1)
        sampling_B = ~self.greedy[start:end]
        if bool(sampling_B.any()):
            probs_B_V = torch.softmax(filter_logits(scaled_B_V, self.top_k[start:end], self.top_p[start:end]), dim=-1)
            uniform_B = torch.rand(probs_B_V.shape[0], generator=shared, dtype=torch.float64,
                                   device=probs_B_V.device)
            for row, generator in self.generators.items():  # seeded rows: each from its own generator
                if start <= row < end and bool(sampling_B[row - start]):
                    uniform_B[row - start] = torch.rand(1, generator=generator, dtype=torch.float64,
                                                        device=probs_B_V.device)[0]
            tokens_B = torch.where(sampling_B, inverse_cdf_sample(probs_B_V, uniform_B), tokens_B)
        return tokens_B, logprobs_B_V.gather(-1, tokens_B.unsqueeze(-1)).squeeze(-1)

    def record(self, tokens_B: torch.Tensor, logprobs_B: torch.Tensor, start: int) -> None:
        end = start + tokens_B.shape[0]
        rows_B = torch.arange(start, end, device=self.device)
        count_B = self.count[start:end]
        self.tokens[rows_B, count_B] = tokens_B
        self.logprobs[rows_B, count_B] = logprobs_B
        self.count[start:end] += 1
        self.last_token[start:end] = tokens_B

    def flagged(self, tokens_B: torch.Tensor, start: int, stop_table: StopTable) -> list[int]:
        """Rows that may have finished: a stop id, the length limit, or a possible stop string."""
        end = start + tokens_B.shape[0]
        flags_B = (tokens_B.unsqueeze(-1) == self.stop_ids[start:end]).any(dim=-1)
        flags_B |= self.count[start:end] >= self.limit[start:end]
        flags_B |= self.check_strings[start:end] & stop_table.union[tokens_B]
        return (flags_B.nonzero().squeeze(-1) + start).tolist()

    def output(self, row: int) -> tuple[list[int], list[float]]:
        count = int(self.count[row])
        return self.tokens[row, :count].tolist(), self.logprobs[row, :count].tolist()
