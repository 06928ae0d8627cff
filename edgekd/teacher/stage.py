"""The `teacher` stage: load a Hugging Face classifier, fine-tune it on the task if asked."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..configs import TeacherConfig
from ..errors import ModelError
from ..models.hf import build_hf_from_config, check_model_folder, hf_base_spec, load_hf_classifier, resolve_model_path
from ..models.spec import make_spec, save_weights
from ..progress import log
from ..train.context import Context
from ..train.finetune import finetune_fit
from ..train.predict import accuracy, predict_logits


# How far above chance (1/K: what a constant answer recalls of each class on average) a teacher's recall averaged
# over the classes must be for it to count as having learned the task.
ABOVE_CHANCE = 0.05


def weak_teacher(pred: np.ndarray, labels: np.ndarray, names: list[str], key: str) -> str | None:
    """What to say of a teacher that has learned little of the task on dev, else None: one no more accurate than always
    answering the most frequent class, or whose recall averaged over the classes is within ABOVE_CHANCE of chance
    (one that answers nearly everything with one class, whatever the class shares).

    Such a teacher was fine-tuned too little, or is a trained head read with another class order than its own; a
    student learns no more from it: better said before hours of distillation than found in the report."""
    k = len(names)
    counts = np.bincount(labels, minlength=k)
    top = int(counts.argmax())
    share = counts[top] / counts.sum()
    accuracy = float((pred == labels).mean())
    present = [c for c in range(k) if counts[c]]
    recall, chance = float(np.mean([(pred[labels == c] == c).mean() for c in present])), 1 / len(present)
    if accuracy <= share:
        found = (f"scores {accuracy:.2%} on dev, no better than always answering the most frequent class "
                 f"{names[top]!r} ({share:.2%} of dev)")
    elif recall <= chance + ABOVE_CHANCE:
        most = int(np.bincount(pred, minlength=k).argmax())
        found = (f"recalls {recall:.2%} of each class on dev on average, within {ABOVE_CHANCE * 100:.0f} points of "
                 f"chance ({chance:.2%}; it answers {names[most]!r} for {(pred == most).mean():.0%} of dev)")
    else:
        return None
    return (f"the teacher {found}: it has learned little of the task, and a student learns no more from it. Fine-tune "
            f"it for longer or on more examples ({key}.finetune), or, for a classifier trained elsewhere, check that "
            f"its classes are read as the data's labels ({key}.labels).")


def run_teacher(cfg: TeacherConfig, parent, ctx: Context, out: Path, key: str) -> dict:
    """The first stage: it has no parent artifact. Run again for each further teacher (recipe `teachers:`), which
    reads the texts with its own tokenizer and leaves the run's (the primary teacher's) alone."""
    data = ctx.data
    primary = ctx.teacher is None
    labels_report = None
    seed = getattr(cfg, "seed", None)
    seed = ctx.seed if seed is None else seed
    tokenizer_src = None
    if cfg.config is not None:
        from ..models.labels import name_labels

        model = build_hf_from_config(cfg.config, ctx.task, data.num_labels)
        name_labels(model, data.label_names)
        head_is_new = True
    else:
        if cfg.path is not None:
            folder = resolve_model_path(cfg.path)
            check_model_folder(folder)
            source = str(folder)
        else:
            source = cfg.hub
        model, head_is_new, matched = load_hf_classifier(
            source, ctx.task, data.label_names, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code,
            labels=cfg.labels, labels_key="teacher.labels" if primary else "teachers[].labels")
        tokenizer_src = source
        if matched is not None:
            labels_report = {**matched, "data_labels": data.label_names}
            if matched["dropped"]:
                log(f"[yellow]teacher: the model knows {matched['dropped']}, which no example of the data shows; "
                    "those classes are left out of its outputs[/]")
    if head_is_new and cfg.finetune is None:
        raise ModelError(
            "The teacher has no trained classification head for this task (it is a pretrained encoder or was "
            "built from a config). Add teacher.finetune (e.g. epochs: 2) so edgekd trains it on the task first."
        )
    model.eval()

    # The tokenizer / preprocessing travel with the model from the first artifact on.
    if ctx.task == "text-classification":
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(tokenizer_src, trust_remote_code=cfg.trust_remote_code)
        except (OSError, ValueError) as e:
            raise ModelError(f"Cannot load the tokenizer of {tokenizer_src!r}: {str(e).splitlines()[0]}") from None
        tok.save_pretrained(str(out))
        if primary and ctx.student_source is None:  # the run's tokenizer, unless a pretrained student brings its own
            ctx._tokenizer = tok
    own = ctx.task == "text-classification" and (not primary or ctx.student_source is not None)
    encoded = (lambda split, n=None: ctx.encoded(split, n, tokenizer_dir=out)) if own else ctx.encoded
    (out / "preprocess.json").write_text(json.dumps({**data.preprocess, "labels": data.label_names}, indent=2))

    metrics: dict = {"labels": labels_report} if labels_report else {}
    if cfg.finetune is not None:
        metrics["train"] = finetune_fit(model, cfg.finetune, ctx, encoded, key, "teacher fine-tune", seed)
    for split in ("dev", "test"):
        enc = encoded(split)
        logits = predict_logits(model, enc, desc=f"teacher eval ({split})", runtime=ctx.runtime)
        metrics[f"{split}_accuracy"] = accuracy(logits, enc.labels)
        ctx.keep_teacher_logits(key, split, logits)  # the later stages' teacher outputs on this split
        if split == "dev":
            weak = weak_teacher(logits.argmax(-1), enc.labels, data.label_names, "teacher" if primary else "teachers[]")
            if weak:
                metrics["weak"] = weak
                log(f"[yellow]warning: {weak}[/]")
    save_weights(model, out)
    spec = make_spec(model, hf_base_spec(model, ctx.task))
    return {"metrics": metrics, "spec": spec}
