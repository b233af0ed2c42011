"""Max-pooling MIL: an instance classifier whose per-class scores are max-pooled over the bag.

The bag score of class c is the highest instance score of class c (the bag is as
positive as its most positive instance), trained with cross-entropy on the bag label.
With ``negative_class=True`` class 0 is the negative class (see
:mod:`clusiam_fast.evaluation.mil.bags`): bag probability of class 1 = sigmoid(max_i s(x_i)).

Example::

    head = MaxPoolMIL(512, num_classes=2)
    out = head(x, mask)              # x (B, N, 512), mask (B, N)
    loss = head.loss(out, labels)    # labels (B,) long
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .bags import MILOutput, check_bags, masked_max, prepend_negative, use_negative_class


class MaxPoolMIL(nn.Module):
    """Linear (or small MLP) instance classifier + masked max over instances.

    Args:
        in_dim: feature size F.
        num_classes: C >= 2.
        hidden: optional hidden width of a one-hidden-layer MLP instance classifier.
        dropout: dropout on the input features (training only).
        negative_class: class 0 is the negative class with a fixed zero logit (default False).
    """

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        hidden: int | None = None,
        dropout: float = 0.0,
        negative_class: bool = False,
    ) -> None:
        super().__init__()
        self.negative_class = use_negative_class(num_classes, negative_class)
        self.num_classes = num_classes
        scored = num_classes - int(self.negative_class)
        layers: list[nn.Module] = [nn.Dropout(dropout)] if dropout > 0 else []
        if hidden:
            layers += [nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, scored)]
        else:
            layers += [nn.Linear(in_dim, scored)]
        self.instance_classifier = nn.Sequential(*layers)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> MILOutput:
        mask = check_bags(x, mask)
        scores = self.instance_classifier(x)  # (B, N, C')
        max_logits, critical = masked_max(scores, mask)
        if self.negative_class:
            scores, max_logits = prepend_negative(scores), prepend_negative(max_logits)
            critical = prepend_negative(critical, -1)
        return MILOutput(logits=max_logits, instance_logits=scores, max_logits=max_logits, critical=critical)

    def loss(self, out: MILOutput, labels: Tensor) -> Tensor:
        """Cross-entropy of the max-pooled bag logits."""
        return F.cross_entropy(out.logits.float(), labels)
