"""The encoder-decoder translator: BERT gives H, the adapter gives H', the decoder gives y.

Follows Xiao & Zhu, Foundations of LLMs, sec. 1.4 (a pre-trained BERT as the encoder of a
sequence-to-sequence model, with a new decoder and an optional adapter between them). `encode`
runs once per source sentence; the decoder's input is the target tokens so far, and it reads H'
only through cross-attention. Generation (greedy, beam, sampling) lives in `decoding.py`.
Left out: sharing embeddings between encoder and decoder (their vocabularies differ).

Shape legend: B batch, S source length, T target length, C width, V target vocabulary.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from minibert.attention import padding_mask
from minibert.bert import BertModel
from minibert.decoder import TransformerDecoder


class Seq2Seq(nn.Module):
    def __init__(self, encoder: BertModel, adapter: nn.Module, decoder: TransformerDecoder):
        super().__init__()
        self.encoder = encoder
        self.adapter = adapter
        self.decoder = decoder
        self.encoder_frozen = False

    # -------------------------------------------------------------------------
    # the forward pass, in the textbook's three steps

    def encode(self, src_ids: torch.Tensor, encoder_out: torch.Tensor | None = None, fused: bool = True,
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """src_ids (B, S) int64 WordPiece ids, right-padded with BERT's pad id.

        Returns the memory H' (B, S, C_dec) and its mask (B, 1, 1, S) bool, True = real token.
        encoder_out: BERT's H (B, S, C_enc) for these ids when already known (a frozen
        encoder's outputs never change, so train.py computes them once); then BERT is skipped.
        """
        if src_ids.dim() != 2:
            raise ValueError(f"src_ids must be (B, S), got shape {tuple(src_ids.shape)}")
        memory_mask = padding_mask(src_ids, self.encoder.config.pad_token_id)  # (B, 1, 1, S)
        h = encoder_out
        if h is None:
            h = self.encoder(src_ids, memory_mask[:, 0, 0], fused=fused)  # H: (B, S, C_enc)
        return self.adapter(h), memory_mask  # H': (B, S, C_dec)

    def forward(self, src_ids: torch.Tensor, tgt_in: torch.Tensor, tgt_out: torch.Tensor | None = None,
                label_smoothing: float = 0.0, encoder_out: torch.Tensor | None = None, fused: bool = True,
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Teacher-forced pass. src_ids (B, S); tgt_in (B, T) = [BOS] y_1 .. y_{T-1};
        tgt_out (B, T) = y_1 .. y_T, padded with the decoder's pad id.

        Without tgt_out: (logits (B, T, V), None). With tgt_out (training): (None, the mean token
        cross-entropy over non-padding targets). The decoder then computes the real target
        positions only: padding (often a third of a batch) would be scored only to be ignored,
        and the V-wide output layer is the decoder's largest matmul. encoder_out: see `encode`.
        """
        if tgt_in.dim() != 2 or tgt_in.size(0) != src_ids.size(0):
            raise ValueError(f"tgt_in must be (B, T) with B = {src_ids.size(0)}, got {tuple(tgt_in.shape)}")
        memory, memory_mask = self.encode(src_ids, encoder_out, fused=fused)
        if tgt_out is None:
            return self.decoder(tgt_in, memory, memory_mask, fused=fused), None  # (B, T, V)
        real = tgt_out != self.decoder.config.pad_token_id  # (B, T), a prefix of each row
        h = self.decoder.hidden(tgt_in, memory, memory_mask, fused=fused, real=real)  # (N, C)
        logits = self.decoder.project(h)  # (N, V) for the N real target tokens
        loss = F.cross_entropy(logits.float(), tgt_out[real], label_smoothing=label_smoothing)
        return None, loss

    def loss(self, logits: torch.Tensor, tgt_out: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
        """Mean cross-entropy of logits (B, T, V) against tgt_out (B, T); padding is ignored."""
        return F.cross_entropy(logits.flatten(0, 1).float(), tgt_out.flatten(),  # (B*T, V), (B*T,)
                               ignore_index=self.decoder.config.pad_token_id,
                               label_smoothing=label_smoothing)

    def cross_attention(self, src_ids: torch.Tensor, tgt_in: torch.Tensor) -> list[torch.Tensor]:
        """Cross-attention probabilities of every decoder layer, each (B, H, T, S), for pictures."""
        memory, memory_mask = self.encode(src_ids)
        cache = self.decoder.start(memory, memory_mask, max_len=tgt_in.size(1))
        _, _, probs = self.decoder.step(tgt_in, cache, fused=False)
        return probs

    # -------------------------------------------------------------------------
    # training helpers: freezing the encoder and the optimiser's parameter groups

    def freeze_encoder(self, frozen: bool = True) -> None:
        """A frozen encoder gets no gradients and stays in eval mode (no dropout), so its
        outputs for a sentence never change and can be computed once and reused."""
        self.encoder_frozen = frozen
        self.encoder.requires_grad_(not frozen)
        self.train(self.training)

    def train(self, mode: bool = True) -> "Seq2Seq":
        super().train(mode)
        if self.encoder_frozen:
            self.encoder.eval()
        return self

    def param_groups(self, weight_decay: float, encoder_lr_scale: float) -> list[dict]:
        """AdamW groups: matrices decay, biases and LayerNorms do not (as in BERT); the
        encoder's groups carry a smaller learning-rate scale, and a frozen encoder has none."""
        groups = []
        parts = [(self.adapter, 1.0), (self.decoder, 1.0)]
        if not self.encoder_frozen:
            parts.append((self.encoder, encoder_lr_scale))
        for module, lr_scale in parts:
            params = [p for p in module.parameters() if p.requires_grad]
            decay = [p for p in params if p.dim() >= 2]
            no_decay = [p for p in params if p.dim() < 2]
            groups.append({"params": decay, "weight_decay": weight_decay, "lr_scale": lr_scale})
            groups.append({"params": no_decay, "weight_decay": 0.0, "lr_scale": lr_scale})
        return [g for g in groups if g["params"]]
