"""Generation: greedy search, beam search and sampling, all on the decoder's KV cache.

The encoder runs once per source (`model.encode`), the cross-attention keys and values of H' are
computed once (`decoder.start`), and each step feeds only the newest token (`decoder.step`): the
self-attention cache grows by one position a step. Beam search follows the textbook algorithm
(Xiao & Zhu, Foundations of LLMs, ch. 5) with a GNMT length penalty (Wu et al. 2016, eq. 14).
Left out: coverage penalties, constrained decoding and early stopping heuristics.

Shape legend: B sources, K beams, V target vocabulary, L tokens generated so far.
"""

import math

import torch

from minibert.data import batches_by_length, pad
from minibert.model import Seq2Seq


def strip(ids: list[int], eos: int) -> list[int]:
    """Tokens up to (not including) the first EOS."""
    return ids[:ids.index(eos)] if eos in ids else ids


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Keep the top_k most likely tokens and the smallest set whose probability reaches top_p;
    the rest get -inf. logits (B, V) -> (B, V). top_k=0 and top_p=1 keep everything."""
    if top_k > 0:
        kth = logits.topk(min(top_k, logits.size(-1)), dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)  # (B, V)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)  # (B, V)
        # Drop a token when the tokens before it already reach top_p (the first always stays).
        drop_sorted = cum - sorted_logits.softmax(dim=-1) >= top_p  # (B, V)
        drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def length_caps(max_len: int | list[int], b: int, device: torch.device) -> torch.Tensor:
    """The most tokens, [BOS] and [EOS] included, of each of b sentences: (B,) int64."""
    caps = torch.as_tensor(max_len, device=device).expand(b) if isinstance(max_len, int) else \
        torch.as_tensor(max_len, device=device)
    if caps.shape != (b,) or (caps < 2).any():
        raise ValueError(f"max_len must be an int or {b} ints, each at least 2, got {max_len}")
    return caps


@torch.inference_mode()
def generate(model: Seq2Seq, src_ids: torch.Tensor, bos: int, eos: int, max_len: int | list[int],
             sample: bool = False, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             generator: torch.Generator | None = None) -> list[list[int]]:
    """Greedy search (sample=False) or sampling. src_ids (B, S) -> B token lists without BOS/EOS.
    max_len: the most tokens per sentence, [BOS] and [EOS] included; one for all, or one each."""
    b, device = src_ids.size(0), src_ids.device
    caps = length_caps(max_len, b, device)  # (B,)
    memory, memory_mask = model.encode(src_ids)  # (B, S, C), (B, 1, 1, S)
    cache = model.decoder.start(memory, memory_mask, int(caps.max()))
    rows = torch.arange(b, device=device)  # the source of each row still being decoded
    token = torch.full((b, 1), bos, dtype=torch.long, device=device)  # (B', 1)
    out: list[list[int]] = [[] for _ in range(b)]
    for step in range(int(caps.max()) - 1):
        logits, cache = model.decoder.step(token, cache)  # (B', 1, V)
        logits = logits[:, -1].float()  # (B', V)
        if sample:
            probs = filter_logits(logits / temperature, top_k, top_p).softmax(dim=-1)  # (B', V)
            token = torch.multinomial(probs, 1, generator=generator)  # (B', 1)
        else:
            token = logits.argmax(dim=-1, keepdim=True)  # (B', 1)
        for i, t in zip(rows.tolist(), token[:, 0].tolist()):
            out[i].append(t)
        # A sentence is done at EOS or at its length cap (step + 1 tokens made, [BOS] not counted).
        done = (token[:, 0] == eos) | (step + 2 >= caps[rows])  # (B',)
        if done.all():
            break
        if done.any():  # drop finished sentences, so later steps compute only the unfinished ones
            keep = (~done).nonzero()[:, 0]  # (B'',)
            cache.reorder(keep)
            rows, token = rows[keep], token[keep]
    return [strip(ids, eos) for ids in out]


def rank(tokens: torch.Tensor, scores: torch.Tensor, lengths: torch.Tensor, eos: int, nbest: int,
         length_penalty: float) -> list[tuple[list[int], float]]:
    """The nbest of one source's K final beams, tokens (K, L) with [BOS] first, by the GNMT
    length-normalised score: log p(y|x) / ((5 + |y|) / 6) ** length_penalty."""
    normalised = scores / ((5.0 + lengths) / 6.0) ** length_penalty  # (K,)
    order = normalised.argsort(descending=True)[:nbest].tolist()
    return [(strip(tokens[j, 1:].tolist(), eos), normalised[j].item()) for j in order]


@torch.inference_mode()
def beam_search(model: Seq2Seq, src_ids: torch.Tensor, bos: int, eos: int, max_len: int | list[int],
                beam: int = 4, length_penalty: float = 1.0, nbest: int = 1,
                ) -> list[list[tuple[list[int], float]]]:
    """Batched beam search. src_ids (B, S) -> for each source, the `nbest` best hypotheses as
    (tokens without BOS/EOS, score), best first (see `rank`; length_penalty 0 turns it off).
    max_len: as for `generate`; a source's beams all end at its cap, keeping the scores they have."""
    if not 1 <= nbest <= beam:
        raise ValueError(f"nbest must be between 1 and beam ({beam}), got {nbest}")
    b, k, device = src_ids.size(0), beam, src_ids.device
    caps = length_caps(max_len, b, device).repeat_interleave(k)  # (B*K,)
    pad = model.decoder.config.pad_token_id

    # Encode each source once, then give each of its K beams a view of the same memory: the
    # cache's reorder copies rows 0,0,..,0,1,1,..,1,... (K of each) of the cross-attention K/V.
    memory, memory_mask = model.encode(src_ids)  # (B, S, C)
    cache = model.decoder.start(memory, memory_mask, int(caps.max()))
    cache.reorder(torch.arange(b, device=device).repeat_interleave(k))  # rows: B*K

    tokens = torch.full((b * k, 1), bos, dtype=torch.long, device=device)  # (B*K, L)
    # Sum of log-probabilities of each beam. Only beam 0 starts alive; the others start at -inf,
    # so the first step does not pick the same token K times from K identical beams.
    scores = torch.full((b, k), float("-inf"), device=device)  # (B, K)
    scores[:, 0] = 0.0
    finished = torch.zeros(b * k, dtype=torch.bool, device=device)  # (B*K,)
    lengths = torch.zeros(b * k, device=device)  # tokens generated, EOS included
    alive, results = list(range(b)), {}  # the sources still searching; the ranked beams of the others

    for step in range(int(caps.max()) - 1):
        logits, cache = model.decoder.step(tokens[:, -1:], cache)  # (B*K, 1, V)
        logp = logits[:, -1].float().log_softmax(dim=-1)  # (B*K, V)
        v = logp.size(-1)
        # A finished beam may only be extended by padding, at no cost: its score is final,
        # and it keeps its place in the beam, competing with the unfinished ones.
        logp[finished] = float("-inf")
        logp[finished, pad] = 0.0
        # Every beam times every token gives K*V candidates per source; keep the K best.
        candidates = scores[:, :, None] + logp.view(-1, k, v)  # (B, K, V)
        scores, flat = candidates.view(-1, k * v).topk(k, dim=-1)  # (B, K) each
        # Rows of the (B*K) batch that the survivors come from, and the tokens they add.
        rows = (torch.arange(len(alive), device=device)[:, None] * k + flat // v).view(-1)  # (B*K,)
        cache.reorder(rows, memory=False)  # survivors stay with their own source's H'
        was_finished = finished[rows]
        tokens = torch.cat([tokens[rows], (flat % v).view(-1, 1)], dim=1)  # (B*K, L+1)
        lengths = lengths[rows] + (~was_finished).float()
        finished = was_finished | (tokens[:, -1] == eos) | (step + 2 >= caps)
        # A source whose K beams have all finished is ranked now and leaves the batch, so later
        # steps compute only the sources still searching.
        source_done = finished.view(-1, k).all(dim=1)  # (B,)
        for j in source_done.nonzero()[:, 0].tolist():
            results[alive[j]] = rank(tokens[j * k:(j + 1) * k], scores[j], lengths[j * k:(j + 1) * k], eos, nbest,
                                     length_penalty)
        if source_done.all():  # at the latest when the last step reaches every source's cap
            break
        if source_done.any():
            keep = (~source_done).nonzero()[:, 0]  # (B',)
            rows = (keep[:, None] * k + torch.arange(k, device=device)).view(-1)  # (B'*K,)
            cache.reorder(rows)
            tokens, scores, lengths, finished, caps = tokens[rows], scores[keep], lengths[rows], finished[rows], caps[rows]
            alive = [alive[j] for j in keep.tolist()]
    return [results[i] for i in range(b)]


def translate(model: Seq2Seq, src_tok, tgt_tok, lines: list[str], beam: int = 1, max_len: int = 128,
              batch_size: int = 64, nbest: int = 1, length_penalty: float = 1.0, **sampling) -> list[list[str]]:
    """Translate text lines; for each line, its `nbest` translations (1 unless beam search).

    Lines are sorted by length so each batch pads little, then put back in input order. An
    empty line translates to an empty line. `sampling` (sample, temperature, top_k, top_p,
    generator) is passed to `generate` when beam == 1.
    """
    device = next(model.parameters()).device
    bos, eos = tgt_tok.token_to_id("[BOS]"), tgt_tok.token_to_id("[EOS]")
    max_len = min(max_len, model.decoder.config.max_position_embeddings)
    encoded = [e.ids for e in src_tok.encode_batch(lines)]
    todo = [i for i, line in enumerate(lines) if line.strip()]
    out: list[list[str]] = [[""] for _ in lines]
    for batch in batches_by_length([len(encoded[i]) for i in todo], math.inf, batch_size):
        rows = [todo[j] for j in batch]
        src = pad([encoded[i] for i in rows], model.encoder.config.pad_token_id).to(device)  # (B, S)
        # A translation is rarely over twice its source's length; the cap, one per sentence, stops
        # an undertrained model's repetition loops from costing max_len steps.
        caps = [min(max_len, 2 * len(encoded[i]) + 10) for i in rows]
        if beam > 1:
            hyps = [[ids for ids, _ in h] for h in beam_search(model, src, bos, eos, caps, beam, length_penalty, nbest)]
        else:
            hyps = [[ids] for ids in generate(model, src, bos, eos, caps, **sampling)]
        for i, h in zip(rows, hyps):
            out[i] = [tgt_tok.decode(ids) for ids in h]
    return out
