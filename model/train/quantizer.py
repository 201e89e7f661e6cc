"""Gumbel-softmax product quantizer (wav2vec 2.0, section 2.2).

G codebooks (groups) of V entries each; a frame picks one entry per group and the
concatenation of the G picked vectors is its quantized representation. Training
uses the straight-through Gumbel-softmax (hard one-hot forward, soft gradient);
the temperature is annealed by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class QuantizerOutput:
    quantized: Tensor  # [N, code_dim]
    indices: Tensor  # [N, G] picked entry per group
    prob_perplexity: Tensor  # scalar: perplexity of the batch-averaged softmax, summed over groups
    code_perplexity: Tensor  # scalar: perplexity of the hard picks, summed over groups


class GumbelProductQuantizer(nn.Module):
    """Maps frames ``[N, in_dim]`` to quantized vectors ``[N, code_dim]``."""

    def __init__(
        self, in_dim: int, groups: int, entries: int, code_dim: int, init_std: float = 1.0
    ) -> None:
        super().__init__()
        if code_dim % groups:
            raise ValueError(f"code_dim {code_dim} must be divisible by groups {groups}")
        self.groups = groups
        self.entries = entries
        self.code_dim = code_dim
        self.to_logits = nn.Linear(in_dim, groups * entries)
        self.codebook = nn.Parameter(torch.empty(groups, entries, code_dim // groups))
        nn.init.uniform_(self.codebook)
        # wav2vec 2.0 initialises the logit projection with std 1 (every entry wins
        # somewhere from the first step); a smaller std keeps the softmax soft for longer.
        nn.init.normal_(self.to_logits.weight, mean=0.0, std=init_std)
        nn.init.zeros_(self.to_logits.bias)

    @property
    def num_codes(self) -> int:
        return self.groups * self.entries

    def forward(self, x: Tensor, temperature: float) -> QuantizerOutput:
        n = x.shape[0]
        logits = self.to_logits(x).float().view(n, self.groups, self.entries)
        if self.training:
            one_hot = F.gumbel_softmax(logits, tau=temperature, hard=True, dim=-1)
        else:
            one_hot = F.one_hot(logits.argmax(-1), self.entries).to(logits.dtype)
        # [N, G, V] x [G, V, d] -> [N, G, d] -> [N, G*d]
        quantized = torch.einsum("ngv,gvd->ngd", one_hot, self.codebook.float()).reshape(n, -1)
        avg_probs = logits.softmax(-1).mean(0)  # [G, V]
        prob_perplexity = torch.exp(-(avg_probs * torch.log(avg_probs + 1e-7)).sum(-1)).sum()
        indices = one_hot.argmax(-1)  # the picks actually used (Gumbel-perturbed in training)
        hard = one_hot.detach().float().mean(0)
        code_perplexity = torch.exp(-(hard * torch.log(hard + 1e-7)).sum(-1)).sum()
        return QuantizerOutput(quantized, indices, prob_perplexity, code_perplexity.detach())

    def diversity_loss(self, out: QuantizerOutput) -> Tensor:
        """(GV - perplexity) / GV: 0 when every entry is used equally on average."""
        return (self.num_codes - out.prob_perplexity) / self.num_codes
