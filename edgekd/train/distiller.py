"""The distiller: teachers plus a weighted list of loss terms, trained by the one loop.

Distillation, pruning recovery and QAT all train through `distill_fit`, so every stage that
trains gets every loss term the distiller has. Teachers' outputs here are their logits on the
train split, computed once per run and cached (`Context.teacher_logits`); with several teachers
their soft targets are averaged by weight (in probability space).
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from ..configs import KDConfig
from ..models.hf import logits_of
from ..models.spec import hidden_width
from .context import Context
from .loop import fit
from ..models.students import last_layer_map, uniform_layer_map
from .losses import (AttentionKL, HardLabelCE, HiddenStateCosine, HiddenStateMSE, LogitKD, LossTerm, Outputs,
                     RelationKL)
from .predict import accuracy, predict_logits


@dataclass
class Teacher:
    """One teacher's cached logits on the train split (indexed by example) and its weight."""

    logits: np.ndarray
    weight: float = 1.0


class Distiller:
    def __init__(self, teachers: list[Teacher], terms: list[tuple[float, LossTerm]], live_teacher=None,
                 teacher_ids: np.ndarray | None = None):
        if not terms:
            raise ValueError("a distiller needs at least one loss term")
        self.teachers = teachers
        self._all_terms = list(terms)  # a schedule may bring a zero-weight term in later
        self.terms = [(w, t) for w, t in terms if w > 0]
        self.needs = frozenset().union(*(t.needs for _, t in self.terms))
        if self.needs and live_teacher is None:
            raise ValueError(f"loss terms needing {sorted(self.needs)} need the teacher model (live_teacher)")
        self.live_teacher = live_teacher  # run on each batch for what is too large to cache (hidden states, attentions)
        # a student with a tokenizer of its own that cuts the texts into the teacher's pieces: the live teacher reads
        # its batches through this map of ids (data/alignment.py)
        self.teacher_ids = None if teacher_ids is None else torch.from_numpy(teacher_ids)
        self.schedule: tuple[float, float, float, float] | None = None  # alpha start, end, temperature start, end
        # (student, teacher) query/key/value projections a relation term reads, found once, not on every step
        self.qkv_layers: tuple[list, list] | None = None

    @classmethod
    def from_config(cls, cfg: KDConfig, teacher_logits: "np.ndarray | list[Teacher]", teacher_model=None,
                    student: torch.nn.Module | None = None, teacher_ids: np.ndarray | None = None) -> "Distiller":
        """The recipe's distillation: alpha * T^2 * KL + (1 - alpha) * CE, plus the intermediate terms it weights.

        teacher_logits: the teacher's logits on the training examples, or several weighted teachers'.
        teacher_ids: where the student's tokenizer is not the teacher's but cuts the texts into its pieces, the map of
        the student's ids onto the teacher's (the live teacher reads the student's batches through it)."""
        terms: list[tuple[float, LossTerm]] = [(cfg.alpha, LogitKD(cfg.temperature)), (1.0 - cfg.alpha, HardLabelCE())]
        if needs_live_teacher(cfg):
            layer_map = intermediate_layer_map(cfg, student, teacher_model)
            projections = hidden_projections(student, teacher_model, len(layer_map) + 1) if cfg.hidden_weight else None
            kind = HiddenStateCosine if cfg.hidden_loss == "cosine" else HiddenStateMSE
            hidden = kind(layer_map, projections)
            terms += [(cfg.hidden_weight, hidden), (cfg.attention_weight, AttentionKL(layer_map))]
            if cfg.relation_weight:
                heads = relation_heads(cfg, student, teacher_model, layer_map)
                terms.append((cfg.relation_weight, RelationKL(layer_map, heads)))
        teachers = teacher_logits if isinstance(teacher_logits, list) else [Teacher(teacher_logits)]
        distiller = cls(teachers, terms, live_teacher=teacher_model if needs_live_teacher(cfg) else None,
                        teacher_ids=teacher_ids if needs_live_teacher(cfg) else None)
        if cfg.temperature_end is not None or cfg.alpha_end is not None:
            distiller.schedule = (cfg.alpha, cfg.alpha if cfg.alpha_end is None else cfg.alpha_end,
                                  cfg.temperature, cfg.temperature if cfg.temperature_end is None else cfg.temperature_end)
        if "qkv" in distiller.needs:
            distiller.qkv_layers = (qkv_projections(student), qkv_projections(teacher_model))
        return distiller

    def set_progress(self, progress: float) -> None:
        """Anneal alpha and the temperature linearly (fit's on_step); the logit and hard-label weights follow alpha."""
        if self.schedule is None:
            return
        a0, a1, t0, t1 = self.schedule
        alpha = a0 + (a1 - a0) * progress
        terms = []
        for w, term in self._all_terms:
            if isinstance(term, LogitKD):
                term.temperature, w = t0 + (t1 - t0) * progress, alpha
            elif isinstance(term, HardLabelCE):
                w = 1.0 - alpha
            terms.append((w, term))
        self.terms = [(w, t) for w, t in terms if w > 0]

    def teacher_outputs(self, idx: np.ndarray, device: torch.device) -> Outputs:
        if len(self.teachers) == 1:
            return Outputs(torch.from_numpy(self.teachers[0].logits[idx]).to(device))
        total = sum(t.weight for t in self.teachers)
        probs = sum(t.weight / total * torch.softmax(torch.from_numpy(t.logits[idx]), -1) for t in self.teachers)
        return Outputs(torch.log(probs.clamp_min(1e-12)).to(device))  # log of the averaged distribution

    def loss(self, module: torch.nn.Module, batch: dict, idx: np.ndarray, labels: torch.Tensor) -> torch.Tensor:
        teacher = self.teacher_outputs(idx, labels.device)
        if not self.needs:
            student = Outputs(logits_of(module, batch))
        else:
            flags = {"output_hidden_states": "hidden_states" in self.needs, "output_attentions": "attentions" in self.needs}
            s_layers, t_layers = self.qkv_layers or (None, None)
            with capture_qkv(s_layers) as s_qkv:
                out = module(**batch, **flags)
            with torch.no_grad(), capture_qkv(t_layers) as t_qkv:
                live = self.live_teacher(**self.teacher_batch(batch), **flags)
            mask = batch["attention_mask"]
            student = Outputs(out.logits, out.hidden_states, out.attentions, mask, s_qkv)
            teacher = Outputs(teacher.logits, live.hidden_states, live.attentions, mask, t_qkv)
        return sum(w * term(student, teacher, labels) for w, term in self.terms)

    def teacher_batch(self, batch: dict) -> dict:
        """The student's batch as the live teacher reads it: the same, or its ids mapped onto the teacher's."""
        if self.teacher_ids is None:
            return batch
        if self.teacher_ids.device != batch["input_ids"].device:
            self.teacher_ids = self.teacher_ids.to(batch["input_ids"].device)
        return {**batch, "input_ids": self.teacher_ids[batch["input_ids"]]}


# Where a narrower student carries its hidden-state projections while it trains (so that the engine's optimizer,
# checkpoints and DistributedDataParallel treat them as the student's parameters); removed before it is saved.
PROJECTIONS = "edgekd_kd_projections"


def hidden_projections(student, teacher, pairs: int) -> torch.nn.ModuleList | None:
    """Linear maps from the student's hidden width to the teacher's, attached to the student; None when equal."""
    d_s, d_t = hidden_width(student), hidden_width(teacher)  # the widths now: pruning may have narrowed the student
    if d_s == d_t:
        return None
    projections = torch.nn.ModuleList(torch.nn.Linear(d_s, d_t) for _ in range(pairs))
    setattr(student, PROJECTIONS, projections)
    return projections


def needs_live_teacher(cfg: KDConfig) -> bool:
    """Whether a weighted term needs the teacher's hidden states, attentions or projections (too large to cache)."""
    return bool(cfg.hidden_weight or cfg.attention_weight or cfg.relation_weight)


def qkv_projections(model: torch.nn.Module) -> list[tuple[torch.nn.Module, ...]]:
    """Each layer's query, key and value projections, in layer order (the self-attention modules the pruner knows)."""
    from ..models.spec import attention_projections

    return [tuple(found[0]) for m in model.modules() if (found := attention_projections(m))]


@contextmanager
def capture_qkv(layers: list[tuple[torch.nn.Module, ...]] | None):
    """Yields a list that, after a forward pass, holds each given layer's (query, key, value) projection outputs
    (None when `layers` is None: nothing to capture)."""
    if layers is None:
        yield None
        return
    captured: list[list] = [[None, None, None] for _ in layers]
    handles = [m.register_forward_hook(lambda _m, _in, out, i=i, j=j: captured[i].__setitem__(j, out))
               for i, trio in enumerate(layers) for j, m in enumerate(trio)]
    try:
        yield captured
    finally:
        for h in handles:
            h.remove()


def relation_heads(cfg: KDConfig, student, teacher, layer_map: list[int]) -> int:
    """cfg.relation_heads, checked; by default the teacher's head count, or the largest divisor of every mapped
    layer's projection width below it (a pruned student's layers have fewer heads, unevenly)."""
    from ..errors import EdgekdError

    s_layers, t_layers = qkv_projections(student), qkv_projections(teacher)
    if len(s_layers) != student.config.num_hidden_layers or len(t_layers) != teacher.config.num_hidden_layers:
        raise EdgekdError("relation_weight: edgekd finds the query/key/value projections of BERT-like (query, key, "
                          "value) and DistilBERT-like (q_lin, k_lin, v_lin) layers only; set relation_weight to 0.")
    widths = {m.out_features for trio in s_layers for m in trio} | \
             {m.out_features for t in layer_map for m in t_layers[t]}
    if cfg.relation_heads is not None:
        bad = sorted(w for w in widths if w % cfg.relation_heads)
        if bad:
            raise EdgekdError(f"relation_heads {cfg.relation_heads} does not divide the projection widths {bad}; choose "
                              f"a divisor of {math.gcd(*widths)}.")
        return cfg.relation_heads
    common = math.gcd(*widths)
    return max(d for d in range(1, teacher.config.num_attention_heads + 1) if common % d == 0)


def intermediate_layer_map(cfg: KDConfig, student, teacher) -> list[int]:
    """The recipe's layer_map, or the uniform one; checked against both models' depth, width and heads."""
    from ..errors import EdgekdError

    s_cfg, t_cfg = getattr(student, "config", None), getattr(teacher, "config", None)
    if s_cfg is None or t_cfg is None or not hasattr(t_cfg, "num_hidden_layers"):
        raise EdgekdError("hidden_weight / attention_weight / relation_weight: both the student and the teacher must be "
                          "transformers (a CNN student has no hidden states or attention maps to match); set them to 0.")
    n_s, n_t = s_cfg.num_hidden_layers, t_cfg.num_hidden_layers
    layer_map = (last_layer_map(n_s, n_t) if cfg.layer_map == "last" else
                 uniform_layer_map(n_s, n_t) if cfg.layer_map in (None, "uniform") else cfg.layer_map)
    if n_s > n_t:
        raise EdgekdError(f"layer_map: the student has {n_s} layers and the teacher {n_t}; intermediate-layer terms "
                          "map each student layer on a teacher layer: set them to 0.")
    if len(layer_map) != n_s or not all(0 <= t < n_t for t in layer_map):
        raise EdgekdError(f"layer_map {layer_map}: needs one teacher layer in 0..{n_t - 1} for each of the student's "
                          f"{n_s} layers.")
    if cfg.attention_weight:
        from ..models.spec import architecture_summary

        heads = architecture_summary(student).get("heads_per_layer", [])
        if any(h != t_cfg.num_attention_heads for h in heads):
            raise EdgekdError(f"attention_weight: the student has {heads} attention heads per layer and the teacher "
                              f"{t_cfg.num_attention_heads}; attention maps are matched head by head. Set attention_weight "
                              "to 0 and use relation_weight (MiniLM's relation transfer works across head counts).")
    return layer_map


def cross_tokenizer_refusal(key: str, difference: str) -> str:
    return (f"{key}: hidden_weight, attention_weight and relation_weight match the student's tokens with the "
            "teacher's, and the pretrained student reads the texts with a tokenizer of its own that cuts them "
            f"differently ({difference}); set them to 0 in {key} (the logit terms work across tokenizers), or choose "
            "a pretrained student whose tokenizer cuts texts into the teacher's pieces (the same vocabulary, whatever "
            "its special tokens and ids).")


def distill_fit(model: torch.nn.Module, cfg: KDConfig, ctx: Context, desc: str, work_key: str,
                layer_teacher: torch.nn.Module | None = None) -> dict:
    """Train `model` against the run's teacher with the recipe's loss; shared by distill, prune recovery and QAT.

    layer_teacher: the model whose hidden states, attentions and relations the intermediate terms match (default:
    the run's teacher; prune recovery may pass the unpruned student). The logit terms read the teacher either way."""
    train = ctx.encoded("train", cfg.max_train_examples)
    live, teacher_ids = None, None
    if needs_live_teacher(cfg) and layer_teacher is None and ctx.cross_tokenizer:
        teacher_ids, difference = ctx.teacher_id_map(cfg.max_train_examples)
        if teacher_ids is None:
            from ..errors import EdgekdError

            raise EdgekdError(cross_tokenizer_refusal(desc, difference))
    if needs_live_teacher(cfg):  # the teacher runs beside the student on every batch
        live = (layer_teacher or ctx.teacher_model()).to(ctx.runtime.device).eval()
        for p in live.parameters():
            p.requires_grad_(False)
    logits = ctx.teacher_logits("train", cfg.max_train_examples)
    report = None
    n_train = len(train)
    if cfg.transfer is not None:  # the train split plus teacher-labelled text (unlabelled files, augmentation)
        from ..data.alignment import lacks_a_piece
        from .transfer_set import build_transfer_set

        train, logits, report = build_transfer_set(cfg.transfer, ctx, train, logits, cfg.max_train_examples)
        if teacher_ids is not None and lacks_a_piece(teacher_ids, train.ids[n_train:]):
            from ..errors import EdgekdError

            raise EdgekdError(f"{desc}: the student's tokenizer cuts a transfer-set text into a piece the teacher's "
                              "vocabulary lacks, so the teacher cannot read it position by position for the "
                              "intermediate terms; set hidden_weight, attention_weight and relation_weight to 0 in "
                              f"{desc}, or leave augmentation and unlabelled text out of its transfer set.")
    teachers = [Teacher(logits)]
    for art, weight in ctx.extra_teachers:
        own = ctx.teacher_logits("train", cfg.max_train_examples, art)
        if len(train) > n_train:  # every teacher labels the transfer examples, each through its own tokenizer
            from .transfer_set import relabel

            own = np.concatenate([own, relabel(ctx, art, train.ids[n_train:])])
        teachers.append(Teacher(own, weight))
    distiller = Distiller.from_config(cfg, teachers, live, model, teacher_ids)
    select = None
    if cfg.select_on_dev and cfg.epochs > 1:  # one epoch leaves nothing to choose between
        dev = ctx.encoded("dev")

        def select(m: torch.nn.Module) -> float:
            return accuracy(predict_logits(m, dev, desc=f"{desc}: dev", runtime=ctx.runtime), dev.labels)
    try:
        out = fit(model, train, cfg, distiller.loss, seed=ctx.seed, desc=desc, work_dir=ctx.work_dir(work_key),
                  runtime=ctx.runtime, on_step=distiller.set_progress, select=select, patience=cfg.patience)
    finally:  # projections are trained, never shipped
        if hasattr(model, PROJECTIONS):
            delattr(model, PROJECTIONS)
    if teacher_ids is not None:
        out["live_teacher"] = ("read the student's batches through a map of ids onto its own: the two tokenizers cut "
                               "the train texts into the same pieces")
    return {**out, "transfer_set": report} if report is not None else out


def evaluate(model: torch.nn.Module, ctx: Context, desc: str, splits: tuple[str, ...] = ("dev", "test"),
             report_dir=None) -> dict:
    """Accuracy on dev and test, and argmax agreement with the teacher on test (model selection reads dev only).

    report_dir: also what transferred, from the same test predictions (read only, never for selection): ECE of
    model and teacher, per-class accuracy, and report_dir/disagreements-test.jsonl — every stage that trains a
    student reports it."""
    out = {}
    for split in splits:
        enc = ctx.encoded(split)
        logits = predict_logits(model, enc, desc=f"{desc} eval ({split})", runtime=ctx.runtime)
        out[f"{split}_accuracy"] = accuracy(logits, enc.labels)
        if split == "test":
            out["test_agreement"] = float((logits.argmax(-1) == ctx.teacher_logits("test").argmax(-1)).mean())
            if report_dir is not None:
                from .transfer import transfer_report

                out["transfer"] = transfer_report(logits, ctx.teacher_logits("test"), enc.labels, ctx.data.label_names,
                                                  ctx.data.test.texts,
                                                  report_dir / DISAGREEMENTS if ctx.runtime.is_main else None)
    return out


# Inputs where a stage's model and the teacher disagree on the test split (shadow comparison), one JSON object a line.
DISAGREEMENTS = "disagreements-test.jsonl"
