"""DSMIL: dual-stream multiple-instance learning (Li, Li & Eliceiri, CVPR 2021).

Stream 1 (max pooling): an instance classifier scores every instance; per class c the
highest-scoring instance is the *critical instance* m_c and its score is the stream's
bag score. Stream 2 (attention): each instance i gets a query q_i = Q(h_i) and the
attention of class c is softmax_i(<q_i, q_{m_c}> / sqrt(d)); the bag embedding
b_c = sum_i A_ic V(h_i) goes through a 1-D convolution over (class, feature) to give
the stream's bag logits. Loss (the paper's): 0.5 * CE(stream 2) + 0.5 * CE(stream 1);
the bag score is the mean of the two streams' logits.

Unlike the reference code this is batched over padded bags (masks), and uses an
argmax, not a sort, to find critical instances. Classes: every class is scored and
the losses are softmax cross-entropy over C; with ``negative_class=True`` class 0 is
the negative class with a fixed zero logit (for two classes: the reference code's
one-output BCE set-up as a two-way softmax); see :mod:`clusiam_fast.evaluation.mil.bags`.

Example::

    head = DSMIL(512, num_classes=2)
    out = head(x, mask)          # out.logits, out.attention (B, N, C), out.embedding (B, C, F)
    head.loss(out, labels).backward()
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .bags import MILOutput, check_bags, masked_max, masked_softmax, prepend_negative, use_negative_class


class DSMIL(nn.Module):
    """Instance classifier + critical-instance attention bag classifier.

    Args:
        in_dim: feature size F.
        num_classes: C >= 2.
        query_dim: size of the queries (128 in the paper).
        nonlinear_query: Q is Linear-ReLU-Linear-Tanh (paper default) instead of Linear.
        passing_v: V is Dropout-Linear-ReLU instead of the identity (paper default: identity).
        dropout_v: dropout inside V when ``passing_v``.
        dropout: dropout on the input features (training only).
        negative_class: class 0 is the negative class with a fixed zero logit (default False).
    """

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        query_dim: int = 128,
        nonlinear_query: bool = True,
        passing_v: bool = False,
        dropout_v: float = 0.0,
        dropout: float = 0.0,
        negative_class: bool = False,
    ) -> None:
        super().__init__()
        self.negative_class = use_negative_class(num_classes, negative_class)
        self.num_classes = num_classes
        scored = num_classes - int(self.negative_class)
        self.input_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.instance_classifier = nn.Linear(in_dim, scored)
        if nonlinear_query:
            self.query = nn.Sequential(
                nn.Linear(in_dim, query_dim), nn.ReLU(inplace=True), nn.Linear(query_dim, query_dim), nn.Tanh()
            )
        else:
            self.query = nn.Linear(in_dim, query_dim)
        self.value = (
            nn.Sequential(nn.Dropout(dropout_v), nn.Linear(in_dim, in_dim), nn.ReLU(inplace=True))
            if passing_v
            else nn.Identity()
        )
        # One logit per class from the whole (C, F) bag embedding, as DSMIL's Conv1d.
        self.bag_classifier = nn.Conv1d(scored, scored, kernel_size=in_dim)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> MILOutput:
        mask = check_bags(x, mask)
        x = self.input_dropout(x)
        instance_logits = self.instance_classifier(x)  # (B, N, C') scored classes
        max_logits, critical = masked_max(instance_logits, mask)  # (B, C')

        queries = self.query(x)  # (B, N, D)
        values = self.value(x)  # (B, N, F)
        critical_q = queries.gather(1, critical.unsqueeze(-1).expand(-1, -1, queries.shape[-1]))  # (B, C', D)
        scores = torch.bmm(queries, critical_q.transpose(1, 2)) / math.sqrt(queries.shape[-1])  # (B, N, C')
        attention = masked_softmax(scores, mask)
        embedding = torch.bmm(attention.transpose(1, 2), values)  # (B, C', F)
        bag_logits = self.bag_classifier(embedding).squeeze(-1)  # (B, C')
        if self.negative_class:
            instance_logits, max_logits, bag_logits = (
                prepend_negative(t) for t in (instance_logits, max_logits, bag_logits)
            )
            attention, critical = prepend_negative(attention), prepend_negative(critical, -1)

        return MILOutput(
            logits=0.5 * (max_logits + bag_logits),
            instance_logits=instance_logits,
            max_logits=max_logits,
            critical=critical,
            bag_logits=bag_logits,
            attention=attention,
            embedding=embedding,
        )

    def loss(self, out: MILOutput, labels: Tensor) -> Tensor:
        """The paper's dual-stream loss: mean of the two streams' bag losses."""
        assert out.bag_logits is not None
        return 0.5 * F.cross_entropy(out.bag_logits.float(), labels) + 0.5 * F.cross_entropy(
            out.max_logits.float(), labels
        )
