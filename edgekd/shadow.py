"""`edgekd shadow`: the shipped ONNX student beside its teacher on new, unlabelled inputs (production traffic).

Reports how often they agree, lists the inputs where they do not (both predictions and
confidences), and how far the inputs have moved from the task's held-out data (PSI of the
teacher's confidence and of the token length against the dev split, data/drift.py). It writes the inputs worth
re-distilling on — disagreements and those the teacher itself is unsure of — as a text file that
`distill.transfer.unlabelled` takes, so the same recipe re-distils on fresh teacher outputs (and
`distill.transfer.repeat` oversamples it: `{shadow-hard.txt: 3}`).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .artifact import read_preprocessing
from .data.batching import encode
from .data.drift import confidences, drift
from .data.loading import Split, read_texts
from .errors import EdgekdError

BATCH = 32
DISAGREEMENTS = "shadow-disagreements.jsonl"
HARD = "shadow-hard.txt"  # feed it back: distill.transfer.unlabelled
SUMMARY = "shadow.json"


def export_folder(path: Path) -> Path:
    """The export artifact: the folder given, or the last export of a run folder."""
    path = Path(path)
    if (path / "teacher.onnx").is_file():
        return path
    if (path / "run.json").is_file():
        from .report.run_summary import load_run

        exports = [a.path for a in load_run(path)[1] if a.stage == "export"]
        if exports and (exports[-1] / "teacher.onnx").is_file():
            return exports[-1]
    raise EdgekdError(f"{str(path)!r} holds no teacher.onnx beside a model.onnx. Give the export artifact of a run "
                      "made with export.teacher: true (<run>/stages/NN-export-*), or that run's folder.")


def _logits(model: Path, tokenizer_dir: Path, texts: list[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """(logits, token lengths) of each text, batched by length; every model here takes dynamic batch and sequence."""
    import onnxruntime as ort
    from transformers import AutoTokenizer

    enc = encode(Split("shadow", np.zeros(len(texts), dtype=np.int64), texts=texts),
                 AutoTokenizer.from_pretrained(str(tokenizer_dir)), max_length)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    order = np.argsort(enc.lengths, kind="stable")
    out = None
    for start in range(0, len(order), BATCH):
        idx = order[start: start + BATCH]
        feed = {k: v.numpy() for k, v in enc.batch(idx).items()}
        feed["token_type_ids"] = np.zeros_like(feed["input_ids"])
        logits = session.run(None, {n: feed[n] for n in names})[0]
        out = np.zeros((len(texts), logits.shape[-1]), dtype=np.float32) if out is None else out
        out[idx] = logits
    return out, enc.lengths


def shadow(folder: Path, inputs: Path, out_dir: Path, text_column: str = "sentence",
           hard_confidence: float = 0.6) -> dict:
    """Run student and teacher on `inputs`; write the summary, the disagreements and the hard inputs to out_dir."""
    folder = export_folder(folder)
    texts = read_texts(inputs, text_column)
    preprocess = read_preprocessing(folder)
    max_length = int(preprocess.get("max_length", 128))
    labels = preprocess.get("labels")
    teacher_tok = folder / "teacher-tokenizer" if (folder / "teacher-tokenizer").is_dir() else folder
    student, _ = _logits(folder / "model.onnx", folder, texts, max_length)
    teacher, lengths = _logits(folder / "teacher.onnx", teacher_tok, texts, max_length)
    s_pred, t_pred = student.argmax(-1), teacher.argmax(-1)
    s_conf, t_conf = confidences(student), confidences(teacher)
    name = (lambda i: labels[i]) if labels else (lambda i: int(i))
    disagree = np.flatnonzero(s_pred != t_pred)
    hard = np.flatnonzero((s_pred != t_pred) | (t_conf < hard_confidence))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / DISAGREEMENTS, "w", encoding="utf-8") as f:
        for i in disagree:
            f.write(json.dumps({"index": int(i), "text": texts[i], "student": name(s_pred[i]),
                                "student_confidence": float(s_conf[i]), "teacher": name(t_pred[i]),
                                "teacher_confidence": float(t_conf[i])}) + "\n")
    (out_dir / HARD).write_text("".join(texts[i].replace("\n", " ") + "\n" for i in hard), encoding="utf-8")
    reference_file = folder / "drift-reference.json"
    moved = drift(json.loads(reference_file.read_text()), teacher, lengths) if reference_file.is_file() else None
    summary = {"export": str(folder), "inputs": str(inputs), "examples": len(texts),
               "agreement": float((s_pred == t_pred).mean()), "disagreements": int(len(disagree)),
               "hard_inputs": int(len(hard)), "hard_confidence": hard_confidence,
               "student_mean_confidence": float(s_conf.mean()), "teacher_mean_confidence": float(t_conf.mean()),
               "drift": moved, "files": {"disagreements": DISAGREEMENTS, "hard_inputs": HARD},
               "redistil": f"add {str(out_dir / HARD)!r} to distill.transfer.unlabelled (and to distill.transfer.repeat, "
                           "e.g. 3 times, to weigh these inputs more) and run the recipe again"}
    (out_dir / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary
