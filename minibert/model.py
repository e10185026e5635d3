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
        self.unfrozen_top = 0  # with a frozen encoder: BERT's top layers that still train

    # -------------------------------------------------------------------------
    # the forward pass, in the textbook's three steps

    def encode(self, src_ids: torch.Tensor, cached: torch.Tensor | None = None,
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """src_ids (B, S) int64 WordPiece ids, right-padded with BERT's pad id.

        Returns the memory H' (B, S, C_dec) and its mask (B, 1, 1, S) bool, True = real token:
        the one mask form, from here to `attention.attend`. cached (B, S, C_enc): the output of
        BERT's first `cached_layers` layers for these ids, when already known. Frozen layers'
        outputs never change, so train.py computes them once; only the layers above run here.
        """
        if src_ids.dim() != 2:
            raise ValueError(f"src_ids must be (B, S), got shape {tuple(src_ids.shape)}")
        memory_mask = padding_mask(src_ids, self.encoder.config.pad_token_id)  # (B, 1, 1, S)
        if cached is None:
            h = self.encoder(src_ids, memory_mask)  # H: (B, S, C_enc)
        else:
            h = self.encoder.run_layers(cached, memory_mask, start=self.cached_layers)  # H: (B, S, C_enc)
        return self.adapter(h), memory_mask  # H': (B, S, C_dec)

    def forward(self, src_ids: torch.Tensor, tgt_in: torch.Tensor, tgt_out: torch.Tensor,
                label_smoothing: float = 0.0, cached: torch.Tensor | None = None) -> torch.Tensor:
        """The training loss: mean token cross-entropy of the teacher-forced pass. src_ids (B, S);
        tgt_in (B, T) = [BOS] y_1 .. y_{T-1}; tgt_out (B, T) = y_1 .. y_T, right-padded with the
        decoder's pad id. cached: see `encode`.

        Only the real target positions are computed: padding (often a third of a batch) would be
        scored only to be ignored, and the V-wide output layer is the decoder's largest matmul.
        """
        self.check_targets(src_ids, tgt_in)
        memory, memory_mask = self.encode(src_ids, cached)
        real = tgt_out != self.decoder.config.pad_token_id  # (B, T), a prefix of each row
        h = self.decoder.hidden(tgt_in, memory, memory_mask, real=real)  # (N, C)
        logits = self.decoder.project(h)  # (N, V) for the N real target tokens
        return F.cross_entropy(logits.float(), tgt_out[real], label_smoothing=label_smoothing)

    def logits(self, src_ids: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits (B, T, V) of the next token at every position of tgt_in (B, T)."""
        self.check_targets(src_ids, tgt_in)
        return self.decoder(tgt_in, *self.encode(src_ids))

    def check_targets(self, src_ids: torch.Tensor, tgt_in: torch.Tensor) -> None:
        if tgt_in.dim() != 2 or tgt_in.size(0) != src_ids.size(0):
            raise ValueError(f"tgt_in must be (B, T) with B = {src_ids.size(0)}, got {tuple(tgt_in.shape)}")

    def cross_attention(self, src_ids: torch.Tensor, tgt_in: torch.Tensor) -> list[torch.Tensor]:
        """Cross-attention probabilities of every decoder layer, each (B, H, T, S), for pictures."""
        return self.decoder.cross_attention_probs(tgt_in, *self.encode(src_ids))

    # -------------------------------------------------------------------------
    # training helpers: freezing the encoder and the optimiser's parameter groups

    def freeze_encoder(self, frozen: bool = True, unfrozen_top: int = 0) -> None:
        """A frozen encoder gets no gradients and stays in eval mode (no dropout), so its outputs
        for a sentence never change and can be computed once and reused. unfrozen_top: BERT's top
        layers that still train (at a small rate); the frozen layers below them are cached."""
        if not 0 <= unfrozen_top <= len(self.encoder.layers):
            raise ValueError(f"unfrozen_top must be between 0 and the encoder's {len(self.encoder.layers)} layers, "
                             f"got {unfrozen_top}")
        self.encoder_frozen, self.unfrozen_top = frozen, unfrozen_top if frozen else 0
        self.encoder.requires_grad_(not frozen)
        for layer in self.encoder.layers[len(self.encoder.layers) - self.unfrozen_top:]:
            layer.requires_grad_(True)
        self.train(self.training)

    @property
    def cached_layers(self) -> int:
        """How many of BERT's bottom layers are frozen, so that their output may be cached."""
        return len(self.encoder.layers) - self.unfrozen_top if self.encoder_frozen else 0

    def train(self, mode: bool = True) -> "Seq2Seq":
        super().train(mode)
        if self.encoder_frozen:
            self.encoder.eval()
            for layer in self.encoder.layers[self.cached_layers:]:
                layer.train(mode)
        return self

    def param_groups(self, weight_decay: float, encoder_lr_scale: float) -> list[dict]:
        """AdamW groups: matrices decay, biases and LayerNorms do not (as in BERT); the
        encoder's groups carry a smaller learning-rate scale, and a frozen encoder's frozen
        layers are in none."""
        groups = []
        parts = [(self.adapter, 1.0), (self.decoder, 1.0), (self.encoder, encoder_lr_scale)]
        for module, lr_scale in parts:
            params = [p for p in module.parameters() if p.requires_grad]
            decay = [p for p in params if p.dim() >= 2]
            no_decay = [p for p in params if p.dim() < 2]
            groups.append({"params": decay, "weight_decay": weight_decay, "lr_scale": lr_scale})
            groups.append({"params": no_decay, "weight_decay": 0.0, "lr_scale": lr_scale})
        return [g for g in groups if g["params"]]
