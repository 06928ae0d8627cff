"""Distillation loss terms: small objects the distiller weighs and sums.

A term sees the student's outputs, the teachers' (combined) outputs and the labels of one batch
and returns a scalar. Adding a kind of knowledge to transfer (hidden states, attention maps) is
one more term here plus the outputs it needs; the loop and the stages do not change.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Outputs:
    """What a loss term may look at for one batch (on the training device).

    hidden_states: the embeddings' output then every layer's (Hugging Face's output_hidden_states);
    attentions: every layer's attention probabilities [batch, heads, query, key]; qkv: every layer's
    query, key and value projections [batch, tokens, heads * head size] (captured by hooks); mask: 1
    for real tokens. They are filled only when a term asks for them (`LossTerm.needs`).
    """

    logits: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    mask: torch.Tensor | None = None
    qkv: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None  # per layer: query, key, value projections


class LossTerm:
    name: str = "term"
    needs: frozenset[str] = frozenset()  # "hidden_states", "attentions": computed live for both models

    def __call__(self, student: Outputs, teacher: Outputs | None, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class LogitKD(LossTerm):
    """Hinton et al. 2015: T^2 * KL(softmax(t/T) || softmax(s/T)).

    The T^2 factor keeps the soft-target gradients on the same scale as the hard-label ones when
    T changes.
    """

    name = "logit_kd"

    def __init__(self, temperature: float):
        self.temperature = temperature

    def __call__(self, student: Outputs, teacher: Outputs | None, labels: torch.Tensor) -> torch.Tensor:
        t = self.temperature
        return (t * t) * F.kl_div(F.log_softmax(student.logits.float() / t, dim=-1),
                                  F.log_softmax(teacher.logits.float() / t, dim=-1),
                                  reduction="batchmean", log_target=True)


class HardLabelCE(LossTerm):
    """Cross-entropy with the task labels; examples labelled -100 (teacher-labelled transfer data) are skipped."""

    name = "hard_label_ce"

    def __call__(self, student: Outputs, teacher: Outputs | None, labels: torch.Tensor) -> torch.Tensor:
        # the mean over gold labels; a batch of teacher-labelled examples only gives 0, not the NaN of an empty mean,
        # and without a host-device sync to find out
        total = F.cross_entropy(student.logits.float(), labels, ignore_index=-100, reduction="sum")
        return total / (labels >= 0).sum().clamp_min(1)


class _HiddenTerm(LossTerm):
    """Hidden states of the embeddings and every mapped layer; a narrower student's go through a learned linear
    projection to the teacher's width (TinyBERT's W_h, one per pair), trained with the student, never shipped."""

    needs = frozenset({"hidden_states"})

    def __init__(self, layer_map: list[int], projections: torch.nn.ModuleList | None = None):
        self.layer_map = layer_map
        self.projections = projections

    def pairs(self, student: Outputs, teacher: Outputs):
        for k, (s, t) in enumerate([(0, 0)] + [(i + 1, t + 1) for i, t in enumerate(self.layer_map)]):
            h = student.hidden_states[s].float()
            if self.projections is not None:
                h = self.projections[k](h)
            yield h, teacher.hidden_states[t].float()


class HiddenStateMSE(_HiddenTerm):
    """TinyBERT's hidden-state loss: MSE between each student layer's output and its mapped teacher layer's,
    plus the embeddings' outputs, over real (unpadded) tokens."""

    name = "hidden_mse"

    def __call__(self, student: Outputs, teacher: Outputs | None, labels: torch.Tensor) -> torch.Tensor:
        m = student.mask.unsqueeze(-1).float()
        total = [((s - t) ** 2 * m).sum() / (m.sum() * t.shape[-1]) for s, t in self.pairs(student, teacher)]
        return sum(total) / len(total)


class AttentionKL(LossTerm):
    """TinyBERT / MiniLM attention transfer: KL(teacher || student) of every head's attention distribution
    over keys, averaged over real query tokens and heads, for each mapped layer. Head counts must match."""

    name = "attention_kl"
    needs = frozenset({"attentions"})

    def __init__(self, layer_map: list[int]):
        self.layer_map = layer_map

    def __call__(self, student: Outputs, teacher: Outputs | None, labels: torch.Tensor) -> torch.Tensor:
        q = student.mask.float()[:, None, :, None]  # real query rows
        total = 0.0
        for i, t in enumerate(self.layer_map):
            s_att, t_att = student.attentions[i].float(), teacher.attentions[t].float()
            kl = (t_att * (torch.log(t_att.clamp_min(1e-9)) - torch.log(s_att.clamp_min(1e-9)))).sum(-1, keepdim=True)
            total = total + (kl * q).sum() / (q.sum() * s_att.shape[1])
        return total / len(self.layer_map)


class HiddenStateCosine(_HiddenTerm):
    """DistilBERT's cosine loss: 1 - cos(student, teacher) of each real token's hidden vector, for the embeddings'
    output and every mapped layer. It aligns directions only, so it tolerates a scale mismatch that MSE punishes."""

    name = "hidden_cosine"

    def __call__(self, student: Outputs, teacher: Outputs | None, labels: torch.Tensor) -> torch.Tensor:
        m = student.mask.float()
        total = [((1 - F.cosine_similarity(s, t, dim=-1)) * m).sum() / m.sum() for s, t in self.pairs(student, teacher)]
        return sum(total) / len(total)


class RelationKL(LossTerm):
    """MiniLM-v2's self-attention relation transfer: for each mapped layer, the query-query, key-key and
    value-value relations softmax(X_r X_r^T / sqrt(d_r)) of `relation_heads` relation heads, teacher || student KL
    over real tokens.

    The relation heads split the concatenated projections afresh, so the student's and the teacher's attention
    head counts (and a pruned student's uneven heads) need not match: only `relation_heads` must divide each
    layer's projection width.
    """

    name = "relation_kl"
    needs = frozenset({"qkv"})

    def __init__(self, layer_map: list[int], relation_heads: int):
        self.layer_map = layer_map
        self.relation_heads = relation_heads

    def _log_relations(self, x: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        b, n, width = x.shape
        r = x.float().view(b, n, self.relation_heads, width // self.relation_heads).transpose(1, 2)
        scores = r @ r.transpose(-1, -2) / math.sqrt(r.shape[-1])
        return torch.log_softmax(scores.masked_fill(~keys, torch.finfo(scores.dtype).min), dim=-1)

    def __call__(self, student: Outputs, teacher: Outputs | None, labels: torch.Tensor) -> torch.Tensor:
        keys = student.mask.bool()[:, None, None, :]
        rows = student.mask.float()[:, None, :, None]
        total = 0.0
        for i, t in enumerate(self.layer_map):
            for s_x, t_x in zip(student.qkv[i], teacher.qkv[t]):
                ls, lt = self._log_relations(s_x, keys), self._log_relations(t_x, keys)
                kl = (lt.exp() * (lt - ls)).masked_fill(~keys, 0.0).sum(-1, keepdim=True)
                total = total + (kl * rows).sum() / (rows.sum() * self.relation_heads)
        return total / (3 * len(self.layer_map))


def logit_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                  temperature: float, alpha: float) -> torch.Tensor:
    """alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE: the default distiller's objective."""
    s, t = Outputs(student_logits), Outputs(teacher_logits)
    loss = alpha * LogitKD(temperature)(s, t, labels)
    if alpha < 1.0:
        loss = loss + (1.0 - alpha) * HardLabelCE()(s, t, labels)
    return loss
