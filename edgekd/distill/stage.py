"""The `distill` stage: build the student and train it on the teacher's softened outputs."""
from __future__ import annotations

from pathlib import Path

from ..configs import DistillConfig, FinetuneConfig, StudentConfig
from ..errors import EdgekdError
from ..models.spec import make_spec, save_weights
from ..artifact import TOKENIZER_FILES
from ..models.students import build_pretrained_student, build_student
from ..models.families import family_gaps
from ..models.support import kd_refusals
from ..progress import log
from ..train.context import Context
from ..train.distiller import distill_fit, evaluate
from ..train.finetune import finetune_fit

def _ensemble(ctx: Context) -> dict:
    """Each teacher's test accuracy and their weighted ensemble's (probabilities averaged, as the distiller does)."""
    from scipy.special import softmax

    labels = ctx.encoded("test").labels
    members = [(ctx.teacher, 1.0)] + list(ctx.extra_teachers)
    rows, probs = [], 0.0
    total = sum(w for _, w in members)
    for art, weight in members:
        logits = ctx.teacher_logits("test", None, art)
        probs = probs + weight / total * softmax(logits, axis=-1)
        rows.append({"artifact": art.id, "weight": weight, "test_accuracy": float((logits.argmax(-1) == labels).mean())})
    return {"members": rows, "ensemble_test_accuracy": float((probs.argmax(-1) == labels).mean())}


def _warm_start(student, cfg: FinetuneConfig, ctx: Context, key: str) -> dict:
    """student.finetune: the student trained on the task's labels before it distils, and how it then scores (dev
    chooses nothing here; test is reported beside the teacher's for the record). Its checkpoints live inside the
    stage's work folder, which the pipeline removes with it."""
    out = {"train": finetune_fit(student, cfg, ctx, ctx.encoded, f"{key}/finetune", "student fine-tune")}
    out.update(evaluate(student, ctx, "student fine-tune"))
    log(f"distill: the student scores {out['dev_accuracy']:.2%} on dev after its fine-tune, before distilling")
    return out


def run_distill(cfg: DistillConfig, parent, ctx: Context, out: Path, key: str) -> dict:
    student_cfg: StudentConfig = ctx.recipe.student
    teacher = ctx.teacher_model().cpu()  # students are built on the CPU; the engine moves them
    pad_id = getattr(ctx.tokenizer, "pad_token_id", 0) or 0
    loaded = None
    if student_cfg.kind == "pretrained":
        student, base, loaded = build_pretrained_student(student_cfg, ctx.task, ctx.data.label_names)
        if ctx.task == "text-classification":  # the student's tokenizer travels with it from here on
            for name in TOKENIZER_FILES:
                (out / name).unlink(missing_ok=True)
            ctx.tokenizer.save_pretrained(str(out))
            loaded["tokenizer"] = "its own, as the teacher's" if not ctx.cross_tokenizer else \
                "its own (the teacher's logits are computed with the teacher's tokenizer on the same texts)"
    else:
        student, base = build_student(student_cfg, teacher, parent.spec, ctx.task, ctx.data.num_labels, pad_id=pad_id)
    n_t = sum(p.numel() for p in teacher.parameters())
    n_s = sum(p.numel() for p in student.parameters())
    log(f"distill: student {student_cfg.kind} with {n_s / 1e6:.2f}M parameters (teacher {n_t / 1e6:.2f}M)")
    if base.get("family") == "hf" and (refused := kd_refusals(family_gaps(student), cfg, "distill")):
        raise EdgekdError(" ".join(refused))
    init = student.__dict__.pop("edgekd_init", None)  # a config student: how it was sliced from the teacher
    metrics = {"student_finetune": _warm_start(student, student_cfg.finetune, ctx, key)} if student_cfg.finetune else {}
    metrics |= {"train": distill_fit(student, cfg, ctx, "distill", key), **({"student_init": init} if init else {}),
                **({"student_pretrained": loaded} if loaded else {})}
    metrics.update(evaluate(student, ctx, "student", report_dir=out))
    if ctx.extra_teachers:
        metrics["teachers"] = _ensemble(ctx)
    save_weights(student, out)
    return {"metrics": metrics, "spec": make_spec(student, base)}
