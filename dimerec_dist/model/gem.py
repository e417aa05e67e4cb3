"""Guidance Extraction Modules: a user's history (B, N, d) -> K interest vectors (B, K, d).

Every variant takes the history's item embeddings and a boolean mask (True = a real
item). Histories are left-aligned: position 0 is the oldest item kept, padding follows
the last real item. Padded positions never contribute to the guidance.

Each variant also reads a whole chunk of a user's sequence in one pass (`sequence`):
the interests at every query position q are those the per-prefix forward computes on
that position's window, chunk[max(0, q - N + 1) .. q] (sequence_windows.py). What is
per item (ComiRec-SA's attention MLP, ComiRec-DR's maps) runs once per chunk position
instead of once per window it falls in.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dimerec_dist.config import ATTENTION_POSITIONS
from dimerec_dist.model.sequence_windows import QueryWindows


def tracing() -> bool:
    """True while torch.export or torch.compile captures the module: no data-dependent shapes then."""
    return torch.compiler.is_exporting() or torch.compiler.is_compiling()


def check_history(history: Tensor, mask: Tensor) -> Tensor:
    """Validate shapes and non-empty histories; return the length of each history (B,)."""
    if history.dim() != 3 or mask.shape != history.shape[:2]:
        raise ValueError(
            f"history must be (B, N, d) with a (B, N) mask, got {tuple(history.shape)} and {tuple(mask.shape)}"
        )
    lengths = mask.sum(dim=1)
    # A data-dependent check cannot be traced: an exported tower skips it (its caller, the
    # recommender, never passes an empty history).
    if not tracing() and bool((lengths == 0).any()):
        empty = torch.nonzero(lengths == 0).flatten()[:5].tolist()
        raise ValueError(f"empty history in batch rows {empty}: every sample needs at least one item")
    return lengths


def recency_positions(mask: Tensor) -> Tensor:
    """0 for the most recent real item, 1 for the one before, ...; padding gets 0 too.

    Counting from the most recent item gives a position the same meaning whatever the
    length of the history, which matters when long histories are cut to the last N.
    """
    lengths = mask.sum(dim=1, keepdim=True)
    index = torch.arange(mask.shape[1], device=mask.device).unsqueeze(0)
    return (lengths - 1 - index).clamp(min=0)


def scatter_masked(mask: Tensor, values: Tensor) -> Tensor:
    """(*mask.shape, ...): `values` (one row per True of `mask`) at their positions, zeros elsewhere,
    in the values' dtype (bf16 under autocast)."""
    out = values.new_zeros(*mask.shape, *values.shape[1:])
    out[mask] = values
    return out


def masked_softmax(scores: Tensor, mask: Tensor, dim: int) -> Tensor:
    """Softmax over `dim` where masked-out entries get exactly zero weight."""
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return torch.softmax(scores, dim=dim) * mask


class ComiRecSA(nn.Module):
    """ComiRec-SA (Cen et al. 2020): K attention heads over the history.

    A = softmax_positions(W2 tanh(W1 (H + P))), g = A^T H. The weighted sum uses H
    without the position embedding, as in ComiRec's own code.

    `positions`: "input" adds the recency embedding P to the items before W1 (ComiRec's);
    "bias" adds a learned bias per recency and head to the scores instead,
    A = softmax(W2 tanh(W1 H) + b[recency]). With "bias" an item's score does not depend
    on which window reads it, so a chunk scores each item once; with "input" every
    (window, item) pair goes through the MLP again.
    """

    def __init__(self, dim: int, num_interests: int, max_history: int, hidden_mult: int = 4, positions: str = "input"):
        super().__init__()
        if positions not in ATTENTION_POSITIONS:
            raise ValueError(f"unknown attention positions {positions!r} ({', '.join(ATTENTION_POSITIONS)})")
        self.num_interests = num_interests
        self.position_mode = positions
        if positions == "input":
            self.positions = nn.Embedding(max_history, dim)
            nn.init.normal_(self.positions.weight, std=0.02)
        else:
            self.position_bias = nn.Parameter(torch.zeros(max_history, num_interests))
        self.w1 = nn.Linear(dim, hidden_mult * dim)
        self.w2 = nn.Linear(hidden_mult * dim, num_interests)

    def attention(self, history: Tensor, mask: Tensor) -> Tensor:
        """(B, N, K) attention weights; zero on padding, each column sums to 1 over positions."""
        recency = recency_positions(mask)
        keyed = history + self.positions(recency) if self.position_mode == "input" else history
        if tracing():
            scores = self.w2(torch.tanh(self.w1(keyed)))
        else:
            # The MLP on real positions only: short histories padded to N (Beauty has about 9
            # items a user for N = 50) would otherwise spend most of the GEM's time on padding.
            scores = scatter_masked(mask, self.w2(torch.tanh(self.w1(keyed[mask]))))
        if self.position_mode == "bias":
            # F.embedding, not position_bias[recency]: indexing's backward adds with atomics on
            # several CPU threads, in no fixed order, and resume must be bitwise.
            scores = scores + F.embedding(recency, self.position_bias)
        return masked_softmax(scores, mask.unsqueeze(-1), dim=1)

    def forward(self, history: Tensor, mask: Tensor) -> Tensor:
        check_history(history, mask)
        return torch.einsum("bnk,bnd->bkd", self.attention(history, mask), history)

    def sequence(self, items: Tensor, mask: Tensor, windows: QueryWindows) -> Tensor:
        """(Q, K, d): the interests at every query of the chunks (B, S, d)."""
        if self.position_mode == "input":
            return self._sequence_input_positions(items, mask, windows)
        scores = scatter_masked(mask, self.w2(torch.tanh(self.w1(items[mask]))))  # once per item, whatever reads it
        band, recency = windows.band(items.shape[1])  # (B, Qc, S)
        # (B, K, Qc, S): an item's score plus its recency's bias, zero weight outside the window.
        b, queries, length = band.shape
        # Each (query, item) pair's bias, b[recency]: a gather from the bias broadcast over the queries,
        # whose backward sums per query row, in order (F.embedding's sorts ~S x Qc indices: slow here).
        bias = self.position_bias.T[None, :, None, :].expand(b, -1, queries, -1)  # B,K,Qc,N
        pair_bias = torch.gather(bias, 3, recency.unsqueeze(1).expand(-1, self.num_interests, -1, -1))
        logits = scores.transpose(1, 2).unsqueeze(2) + pair_bias
        weights = masked_softmax(logits, band.unsqueeze(1), dim=-1)
        return windows.select((weights @ items.unsqueeze(1)).transpose(1, 2))  # (B, Qc, K, d) -> (Q, K, d)

    def _sequence_input_positions(self, items: Tensor, mask: Tensor, windows: QueryWindows) -> Tensor:
        """ComiRec's input positions: W1 (h + P) = W1 h + W1 P, so W1 h runs once per item and only
        tanh and W2 run per (window, item) pair."""
        projected = scatter_masked(mask, F.linear(items[mask], self.w1.weight))
        index, valid, recency = windows.gather_index(items.shape[1])  # (Q, N) each: row * S + position
        pre = F.embedding(index, projected.flatten(0, 1)) + F.linear(
            self.positions(recency), self.w1.weight, self.w1.bias
        )
        scores = self.w2(torch.tanh(pre))  # (Q, N, K)
        weights = masked_softmax(scores, valid.unsqueeze(-1), dim=1)
        return torch.einsum("qnk,qnd->qkd", weights, F.embedding(index, items.flatten(0, 1)))


def squash(s: Tensor) -> Tensor:
    """Capsule non-linearity: keeps the direction, maps the norm into [0, 1)."""
    sq = (s * s).sum(-1, keepdim=True)
    return sq / (1 + sq) * s / (sq + 1e-9).sqrt()


class ComiRecDR(nn.Module):
    """ComiRec-DR / MIND-style dynamic routing: K capsules over the history.

    Each interest has its own bilinear map of the items; routing logits start at zero
    (deterministic) and are refined `iterations` times. As in ComiRec, the prediction
    vectors are detached in all but the last iteration so routing does not backprop.
    """

    def __init__(self, dim: int, num_interests: int, iterations: int = 3):
        super().__init__()
        self.num_interests = num_interests
        self.iterations = iterations
        self.maps = nn.Linear(dim, num_interests * dim, bias=False)

    def forward(self, history: Tensor, mask: Tensor) -> Tensor:
        check_history(history, mask)
        b, n, d = history.shape
        predictions = self.maps(history).view(b, n, self.num_interests, d).transpose(1, 2)  # B,K,N,d
        logits = history.new_zeros(b, self.num_interests, n)
        keep = mask.unsqueeze(1).to(history.dtype)  # B,1,N
        for it in range(self.iterations):
            last = it == self.iterations - 1
            u = predictions if last else predictions.detach()
            coupling = torch.softmax(logits, dim=1) * keep  # each item spreads over interests
            interests = squash(torch.einsum("bkn,bknd->bkd", coupling, u))
            if not last:
                logits = logits + torch.einsum("bknd,bkd->bkn", u, interests)
        return interests

    def sequence(self, items: Tensor, mask: Tensor, windows: QueryWindows) -> Tensor:
        """(Q, K, d): routing over every query's window at once; the maps run once per item."""
        b, s, d = items.shape
        predictions = self.maps(items).view(b, s, self.num_interests, d).transpose(1, 2)  # B,K,S,d
        band, _ = windows.band(s)
        keep = band.unsqueeze(1).to(items.dtype)  # B,1,Qc,S
        logits = items.new_zeros(b, self.num_interests, band.shape[1], s)
        for it in range(self.iterations):
            last = it == self.iterations - 1
            u = predictions if last else predictions.detach()
            coupling = torch.softmax(logits, dim=1) * keep
            interests = squash(coupling @ u)  # B,K,Qc,d
            if not last:
                logits = logits + interests @ u.transpose(-1, -2)
        return windows.select(interests.transpose(1, 2))


def gather_recent(history: Tensor, lengths: Tensor, count: int) -> Tensor:
    """The embeddings of the last `count` real items, most recent first (B, count, d).

    A history shorter than `count` repeats its oldest item in the missing slots, so every
    slot holds a real item.
    """
    back = torch.arange(count, device=history.device).unsqueeze(0)
    index = (lengths.unsqueeze(1) - 1 - back).clamp(min=0)
    return torch.gather(history, 1, index.unsqueeze(-1).expand(-1, -1, history.shape[-1]))


BUCKET_WIDTH = 8  # SASRec's length groups: histories of 1-8, 9-16, 17-32, ... items


class SASRecGEM(nn.Module):
    """SASRec (Kang & McAuley 2018) as a GEM: a causal transformer over the history.

    The output at position i summarises items 0..i; the K guidance vectors are the
    outputs at the K most recent positions (the user's state after each of the last
    K interactions).
    """

    def __init__(
        self, dim: int, num_interests: int, max_history: int, layers: int = 2, heads: int = 2, dropout: float = 0.1
    ):
        super().__init__()
        self.num_interests = num_interests
        self.positions = nn.Embedding(max_history, dim)
        layer = nn.TransformerEncoderLayer(
            dim, heads, dim_feedforward=dim, dropout=dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        nn.init.normal_(self.positions.weight, std=0.02)

    def forward(self, history: Tensor, mask: Tensor) -> Tensor:
        lengths = check_history(history, mask)
        n = history.shape[1]
        if tracing():
            return self.encode(history, mask, lengths)
        # Histories grouped by length, each group cut to its longest: a history's outputs depend
        # on its own items only (causal, padding masked), and a batch of mostly short histories
        # padded to N would spend most of the attention and feed-forward work on padding.
        out = None  # made at the first group, in its dtype (bf16 under autocast)
        shorter, width = 0, BUCKET_WIDTH
        while shorter < n:
            width = min(width, n)
            rows = ((lengths > shorter) & (lengths <= width)).nonzero().squeeze(1)
            if rows.numel():
                encoded = self.encode(history[rows, :width], mask[rows, :width], lengths[rows])
                if out is None:
                    out = encoded.new_empty(history.shape[0], *encoded.shape[1:])
                out[rows] = encoded
            shorter, width = width, 2 * width
        return out

    def encode(self, history: Tensor, mask: Tensor, lengths: Tensor) -> Tensor:
        # Causal order runs oldest -> newest, so the position code counts from the start.
        return gather_recent(self.encode_all(history, mask), lengths, self.num_interests)

    def sequence(self, items: Tensor, mask: Tensor, windows: QueryWindows) -> Tensor:
        """(Q, K, d): one causal pass over each chunk. Exact against the per-prefix forward on the
        window chunk[0 .. q] (positions count from the chunk's first item), which is every query's
        window when chunks span at most N history items (sequence_windows.chunk_span)."""
        n = self.positions.num_embeddings
        if int(windows.queries.max()) >= n:
            raise ValueError(f"a SASRec chunk reads more than max_history={n} items before a query")
        width = min(items.shape[1], n)  # a chunk's item N, if any, is only ever a target
        hidden = self.encode_all(items[:, :width], mask[:, :width])
        back = torch.arange(self.num_interests, device=items.device)
        index = (windows.queries.unsqueeze(-1) - back).clamp(min=0)  # B,Qc,K: the K latest, oldest repeated
        chosen = torch.gather(
            hidden.unsqueeze(1).expand(-1, index.shape[1], -1, -1),
            2,
            index.unsqueeze(-1).expand(-1, -1, -1, hidden.shape[-1]),
        )
        return windows.select(chosen)

    def encode_all(self, history: Tensor, mask: Tensor) -> Tensor:
        """The transformer's output at every position (B, N, d)."""
        n = history.shape[1]
        x = self.dropout(history + self.positions.weight[:n].unsqueeze(0)) * mask.unsqueeze(-1)
        causal = torch.triu(torch.ones(n, n, dtype=torch.bool, device=history.device), diagonal=1)
        return self.norm(self.encoder(x, mask=causal, src_key_padding_mask=~mask))


class MeanPoolGEM(nn.Module):
    """YouTube-DNN-like pooling: the mean of the history through an MLP with K output heads."""

    def __init__(self, dim: int, num_interests: int):
        super().__init__()
        self.num_interests = num_interests
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, num_interests * dim))

    def forward(self, history: Tensor, mask: Tensor) -> Tensor:
        lengths = check_history(history, mask)
        weights = mask.to(history.dtype).unsqueeze(-1)
        mean = (history * weights).sum(1) / lengths.unsqueeze(-1).to(history.dtype)
        return self.mlp(mean).view(history.shape[0], self.num_interests, history.shape[-1])

    def sequence(self, items: Tensor, mask: Tensor, windows: QueryWindows) -> Tensor:
        band, _ = windows.band(items.shape[1])
        weights = band.to(items.dtype)
        mean = (weights @ items) / weights.sum(-1, keepdim=True).clamp(min=1)  # B,Qc,d
        return self.mlp(windows.select(mean)).view(-1, self.num_interests, items.shape[-1])


class LastKGEM(nn.Module):
    """Rule-based guidance: the embeddings of the K most recent items; no parameters."""

    def __init__(self, num_interests: int):
        super().__init__()
        self.num_interests = num_interests

    def forward(self, history: Tensor, mask: Tensor) -> Tensor:
        return gather_recent(history, check_history(history, mask), self.num_interests)

    def sequence(self, items: Tensor, mask: Tensor, windows: QueryWindows) -> Tensor:
        back = torch.arange(self.num_interests, device=items.device)
        # The K latest of each window, its oldest repeated where it holds fewer.
        index = torch.maximum(windows.queries.unsqueeze(-1) - back, windows.starts.unsqueeze(-1))  # B,Qc,K
        rows = torch.arange(items.shape[0], device=items.device)[:, None, None]
        return windows.select(F.embedding(rows * items.shape[1] + index, items.flatten(0, 1)))


def build_gem(
    kind: str,
    dim: int,
    num_interests: int,
    max_history: int,
    *,
    hidden_mult: int = 4,
    attention_positions: str = "input",
    routing_iterations: int = 3,
    sasrec_layers: int = 2,
    sasrec_heads: int = 2,
    dropout: float = 0.1,
) -> nn.Module:
    if kind == "comirec_sa":
        return ComiRecSA(dim, num_interests, max_history, hidden_mult, attention_positions)
    if kind == "comirec_dr":
        return ComiRecDR(dim, num_interests, routing_iterations)
    if kind == "sasrec":
        return SASRecGEM(dim, num_interests, max_history, sasrec_layers, sasrec_heads, dropout)
    if kind == "mean":
        return MeanPoolGEM(dim, num_interests)
    if kind == "last_k":
        return LastKGEM(num_interests)
    raise ValueError(f"unknown GEM {kind!r}")


def hard_readout(guidance: Tensor, target: Tensor, cosine: bool = False) -> Tensor:
    """ComiRec's hard readout for L_gem: the interest with the largest inner product with the target.

    guidance (B, K, d), target (B, d) -> (B, d). With `cosine` the choice is made between
    unit interests (matching cosine logits), but the raw interest is returned. The argmax
    is not differentiated; the gradient flows into the chosen interest only.
    """
    keys = F.normalize(guidance, dim=-1) if cosine else guidance
    choice = torch.einsum("bkd,bd->bk", keys, target).argmax(dim=1)
    return guidance[torch.arange(guidance.shape[0], device=guidance.device), choice]


def interest_scores(guidance: Tensor, items: Tensor) -> Tensor:
    """Retrieval with a GEM alone: an item's score is its best inner product over the K interests."""
    return torch.einsum("bkd,md->bkm", guidance, items).amax(dim=1)


__all__ = [
    "ComiRecSA",
    "ComiRecDR",
    "SASRecGEM",
    "MeanPoolGEM",
    "LastKGEM",
    "build_gem",
    "hard_readout",
    "interest_scores",
    "check_history",
    "masked_softmax",
]
