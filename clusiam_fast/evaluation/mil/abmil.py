"""ABMIL: gated attention-based deep MIL (Ilse, Tomczak & Welling, ICML 2018).

Each instance is embedded, h_k = ReLU(W x_k) (size L), and scored by the gated attention
of the paper's eq. (9)::

    a_k = softmax_k( w^T (tanh(V h_k) * sigmoid(U h_k)) )        V, U: D x L,  w: D

The bag embedding z = sum_k a_k h_k goes through a linear classifier into C logits; the
loss is cross-entropy. Sizes and dropout are CLAM's defaults for its single-branch
gated-attention model (CLAM_SB, Lu et al. 2021, ``size_arg="small"``): L = 512,
D = 256, dropout 0.25 after the embedding and in both attention branches (the paper's
MNIST set-up used L = 500, D = 128).

Unlike CLAM this is batched over padded bags (masks): padded instances get exactly zero
attention. :class:`MILOutput` fields: ``attention`` is (B, N, 1) (one attention branch,
shared by the classes), ``critical`` the most attended instance (the same index for
every class; -1 for a negative class), ``instance_logits`` the classifier applied to each instance embedding and
``max_logits`` their masked max (diagnostics; the prediction uses ``logits``).

Example::

    head = ABMIL(512, num_classes=2)
    out = head(x, mask)                  # out.logits (B, 2), out.attention (B, N, 1)
    head.loss(out, labels).backward()
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .bags import MILOutput, check_bags, masked_max, masked_softmax, prepend_negative, use_negative_class


class ABMIL(nn.Module):
    """Instance embedding + gated attention pooling + linear bag classifier.

    Args:
        in_dim: feature size F.
        num_classes: C >= 2.
        hidden: embedding size L (512, CLAM's default).
        attention_dim: attention size D (256, CLAM's default).
        dropout: dropout after the embedding and in the attention branches (0.25, CLAM's).
        gated: the gated attention of the paper (default); False gives its plain tanh attention.
        negative_class: class 0 is the negative class with a fixed zero logit (default False).
    """

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        hidden: int = 512,
        attention_dim: int = 256,
        dropout: float = 0.25,
        gated: bool = True,
        negative_class: bool = False,
    ) -> None:
        super().__init__()
        self.negative_class = use_negative_class(num_classes, negative_class)
        self.num_classes = num_classes
        scored = num_classes - int(self.negative_class)
        drop = (lambda: nn.Dropout(dropout)) if dropout > 0 else nn.Identity
        self.embed = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), drop())
        self.attention_v = nn.Sequential(nn.Linear(hidden, attention_dim), nn.Tanh(), drop())  # V
        self.attention_u = nn.Sequential(nn.Linear(hidden, attention_dim), nn.Sigmoid(), drop()) if gated else None  # U
        self.attention_w = nn.Linear(attention_dim, 1)  # w
        self.classifier = nn.Linear(hidden, scored)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> MILOutput:
        mask = check_bags(x, mask)
        h = self.embed(x)  # (B, N, L)
        gate = self.attention_v(h)
        if self.attention_u is not None:
            gate = gate * self.attention_u(h)
        attention = masked_softmax(self.attention_w(gate), mask)  # (B, N, 1), 0 on padding
        bag = (attention * h).sum(dim=1)  # (B, L)
        logits = self.classifier(bag)  # (B, C')
        instance_logits = self.classifier(h)  # (B, N, C')
        max_logits, _ = masked_max(instance_logits, mask)
        top = attention.squeeze(-1).masked_fill(~mask, -1.0).argmax(dim=1)  # (B,)
        critical = top[:, None].expand(-1, self.num_classes).contiguous()
        if self.negative_class:
            logits, instance_logits, max_logits = (prepend_negative(t) for t in (logits, instance_logits, max_logits))
            critical[:, 0] = -1
        return MILOutput(
            logits=logits,
            instance_logits=instance_logits,
            max_logits=max_logits,
            critical=critical,
            attention=attention,
            embedding=bag[:, None, :],
        )

    def loss(self, out: MILOutput, labels: Tensor) -> Tensor:
        """Cross-entropy of the attention-pooled bag logits."""
        return F.cross_entropy(out.logits.float(), labels)
