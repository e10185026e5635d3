"""Generation: greedy search, beam search and sampling, all on the decoder's KV cache.

The encoder runs once per source (`model.encode`), the cross-attention keys and values of H' are
computed once (`decoder.start`), and each step feeds only the newest token (`decoder.step`): the
self-attention cache grows by one position a step. Beam search follows the textbook algorithm
(Xiao & Zhu, Foundations of LLMs, ch. 5) with a GNMT length penalty (Wu et al. 2016, eq. 14).
Left out: coverage penalties, constrained decoding and early stopping heuristics.

Shape legend: B sources, K beams, V target vocabulary, L tokens generated so far.
"""

import torch

from minibert.data import pad
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


@torch.no_grad()
def generate(model: Seq2Seq, src_ids: torch.Tensor, bos: int, eos: int, max_len: int,
             sample: bool = False, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             generator: torch.Generator | None = None) -> list[list[int]]:
    """Greedy search (sample=False) or sampling. src_ids (B, S) -> B token lists without BOS/EOS."""
    memory, memory_mask = model.encode(src_ids)  # (B, S, C), (B, 1, 1, S)
    b = src_ids.size(0)
    cache = model.decoder.start(memory, memory_mask, max_len)
    pad = model.decoder.config.pad_token_id
    token = torch.full((b, 1), bos, dtype=torch.long, device=src_ids.device)  # (B, 1)
    finished = torch.zeros(b, dtype=torch.bool, device=src_ids.device)  # (B,)
    out = []
    for _ in range(max_len - 1):
        logits, cache, _ = model.decoder.step(token, cache)  # (B, 1, V)
        logits = logits[:, -1].float()  # (B, V)
        if sample:
            probs = filter_logits(logits / temperature, top_k, top_p).softmax(dim=-1)  # (B, V)
            token = torch.multinomial(probs, 1, generator=generator)  # (B, 1)
        else:
            token = logits.argmax(dim=-1, keepdim=True)  # (B, 1)
        # A finished sentence keeps emitting padding, which strip() never reaches.
        token = token.masked_fill(finished[:, None], pad)
        out.append(token)
        finished |= token[:, 0] == eos
        if finished.all():
            break
    ids = torch.cat(out, dim=1).tolist()  # (B, L)
    return [strip(row, eos) for row in ids]


@torch.no_grad()
def beam_search(model: Seq2Seq, src_ids: torch.Tensor, bos: int, eos: int, max_len: int,
                beam: int = 4, length_penalty: float = 1.0, nbest: int = 1,
                ) -> list[list[tuple[list[int], float]]]:
    """Batched beam search. src_ids (B, S) -> for each source, the `nbest` best hypotheses as
    (tokens without BOS/EOS, score), best first. score = log p(y|x) / lp(|y|), with the GNMT
    penalty lp(n) = ((5 + n) / 6) ** length_penalty (0 turns it off)."""
    if not 1 <= nbest <= beam:
        raise ValueError(f"nbest must be between 1 and beam ({beam}), got {nbest}")
    b, k, device = src_ids.size(0), beam, src_ids.device
    pad = model.decoder.config.pad_token_id

    # Encode each source once, then give each of its K beams a view of the same memory: the
    # cache's reorder copies rows 0,0,..,0,1,1,..,1,... (K of each) of the cross-attention K/V.
    memory, memory_mask = model.encode(src_ids)  # (B, S, C)
    cache = model.decoder.start(memory, memory_mask, max_len)
    cache.reorder(torch.arange(b, device=device).repeat_interleave(k))  # rows: B*K

    tokens = torch.full((b * k, 1), bos, dtype=torch.long, device=device)  # (B*K, L)
    # Sum of log-probabilities of each beam. Only beam 0 starts alive; the others start at -inf,
    # so the first step does not pick the same token K times from K identical beams.
    scores = torch.full((b, k), float("-inf"), device=device)  # (B, K)
    scores[:, 0] = 0.0
    finished = torch.zeros(b * k, dtype=torch.bool, device=device)  # (B*K,)
    lengths = torch.zeros(b * k, device=device)  # tokens generated, EOS included

    for _ in range(max_len - 1):
        logits, cache, _ = model.decoder.step(tokens[:, -1:], cache)  # (B*K, 1, V)
        logp = logits[:, -1].float().log_softmax(dim=-1)  # (B*K, V)
        v = logp.size(-1)
        # A finished beam may only be extended by padding, at no cost: its score is final,
        # and it keeps its place in the beam, competing with the unfinished ones.
        logp[finished] = float("-inf")
        logp[finished, pad] = 0.0
        # Every beam times every token gives K*V candidates per source; keep the K best.
        candidates = scores[:, :, None] + logp.view(b, k, v)  # (B, K, V)
        scores, flat = candidates.view(b, k * v).topk(k, dim=-1)  # (B, K) each
        parent = flat // v  # which beam each survivor extends, (B, K)
        token = flat % v  # with which token, (B, K)
        # Rows of the (B*K) batch that the survivors come from; reorder everything by them.
        rows = (torch.arange(b, device=device)[:, None] * k + parent).view(-1)  # (B*K,)
        cache.reorder(rows, memory=False)  # survivors stay with their own source's H'
        was_finished = finished[rows]
        tokens = torch.cat([tokens[rows], token.view(-1, 1)], dim=1)  # (B*K, L+1)
        lengths = lengths[rows] + (~was_finished).float()
        finished = was_finished | (token.view(-1) == eos)
        if finished.all():
            break

    # Rank the K final beams of each source by length-normalised score.
    normalised = scores / ((5.0 + lengths.view(b, k)) / 6.0) ** length_penalty  # (B, K)
    order = normalised.argsort(dim=-1, descending=True)  # (B, K)
    results = []
    for i in range(b):
        hyps = []
        for j in order[i, :nbest].tolist():
            ids = tokens[i * k + j, 1:].tolist()
            hyps.append((strip(ids, eos), normalised[i, j].item()))
        results.append(hyps)
    return results


def translate(model: Seq2Seq, src_tok, tgt_tok, lines: list[str], beam: int = 1, max_len: int = 128,
              batch_size: int = 64, nbest: int = 1, length_penalty: float = 1.0, **sampling) -> list[list[str]]:
    """Translate text lines; for each line, its `nbest` translations (1 unless beam search).

    Lines are sorted by length so each batch pads little, then put back in input order. An
    empty line translates to an empty line. `sampling` (sample, temperature, top_k, top_p,
    generator) is passed to `generate` when beam == 1.
    """
    device = next(model.parameters()).device
    bos, eos = tgt_tok.token_to_id("[BOS]"), tgt_tok.token_to_id("[EOS]")
    pad_id = model.encoder.config.pad_token_id
    max_len = min(max_len, model.decoder.config.max_position_embeddings)
    encoded = [src_tok.encode(line).ids for line in lines]
    order = sorted(range(len(lines)), key=lambda i: len(encoded[i]))
    out: list[list[str]] = [[""] for _ in lines]
    for start in range(0, len(order), batch_size):
        rows = [i for i in order[start:start + batch_size] if lines[i].strip()]
        if not rows:
            continue
        src = pad([encoded[i] for i in rows], pad_id).to(device)  # (B, S)
        # A translation is rarely over twice the source's length; the cap stops an undertrained
        # model's repetition loops from costing max_len steps for every batch.
        batch_max_len = min(max_len, 2 * src.size(1) + 10)
        if beam > 1:
            hyps = [[ids for ids, _ in h] for h in beam_search(model, src, bos, eos, batch_max_len, beam,
                                                                     length_penalty, nbest)]
        else:
            hyps = [[ids] for ids in generate(model, src, bos, eos, batch_max_len, **sampling)]
        for i, h in zip(rows, hyps):
            out[i] = [tgt_tok.decode(ids) for ids in h]
    return out
