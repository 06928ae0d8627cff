"""Typed, strict configuration of every stage (pydantic, unknown keys rejected).

Kept free of torch imports so that a recipe is validated in a fraction of a second, before
any heavy library is loaded or any work starts.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Strict(BaseModel):
    # strict: no silent coercion. Lax mode would read `seed: true` as 1, `"3"` as 3 and `"yes"` as
    # true, so a typo or a quoted value runs with a value nobody wrote. Ints are still floats.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


_TYPE_HINTS = {
    "bool_type": "write true or false",
    "int_type": "write a whole number, unquoted",
    "float_type": "write a number, unquoted",
}


def type_hint(error: dict[str, Any]) -> str:
    """What to write instead, for a strict type error (a quoted number, yes/no, true for a number)."""
    hint = _TYPE_HINTS.get(error["type"])
    return f"; {hint}" if hint and isinstance(error.get("input"), (str, bool, int, float)) else ""


class TrainConfig(Strict):
    """Optimisation settings shared by every training loop (fine-tune, distill, recovery, QAT)."""

    epochs: float = Field(1.0, gt=0, le=1000, description="passes over the training split; fractions allowed")
    batch_size: int = Field(32, ge=1, le=4096)
    lr: float = Field(5e-5, gt=0, le=1.0)
    weight_decay: float = Field(0.01, ge=0, le=1.0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1.0)
    max_train_examples: int | None = Field(None, ge=1, description="use only the first N training examples")
    checkpoint_every: int = Field(200, ge=1, description="optimizer steps between resumable checkpoints")
    # exclude_if: at its default the field stays out of the dumped config, so the cache keys of stages trained
    # before it existed are unchanged (see RecoveryConfig.layer_teacher)
    weight_ema: float | None = Field(
        None, gt=0, lt=1, exclude_if=lambda v: v is None, description="end with an exponential moving average of "
        "the weights (this decay per optimizer step; 0.999 averages over about the last 1,000 steps) instead of the "
        "last step's weights; with select_on_dev the averaged weights are the ones scored")


class AugmentConfig(Strict):
    """Augmented copies of the train texts for the transfer set (TinyBERT; Tang et al. 2019), labelled by the teacher."""

    copies: int = Field(4, ge=1, le=50, description="augmented copies of each train text")
    replace_prob: float = Field(0.3, ge=0, le=1, description="share of single-piece words replaced by one of their "
                                "nearest neighbours in the teacher's token-embedding space")
    neighbours: int = Field(15, ge=1, le=200, description="nearest neighbours a replacement is drawn from")
    mask_prob: float = Field(0.0, ge=0, le=1, description="share of single-piece words replaced by the mask token")


class TransferConfig(Strict):
    """The transfer set: the labelled train split plus text the teacher labels (its soft targets only).

    Teacher-labelled examples carry no gold label: the hard-label CE skips them, the KD terms do not.
    """

    unlabelled: list[str] = Field(default_factory=list, description="files of extra text: .txt (one text per line) "
                                  "or .tsv/.csv/.jsonl with the data's text column; labels in them are ignored")
    text_column: str | None = Field(None, description="text column of the unlabelled files (default: data.text_column)")
    augment: AugmentConfig | None = None
    min_confidence: float = Field(0.0, ge=0, lt=1, description="drop teacher-labelled examples whose top teacher "
                                  "probability is below this (the share dropped is reported)")
    max_examples: int | None = Field(None, ge=1, description="cap on the teacher-labelled examples kept")
    repeat: dict[str, int] = Field(default_factory=dict, description="oversample unlabelled files: {file: times}, "
                                   "e.g. {shadow-hard.txt: 3} to weigh the inputs `edgekd shadow` found hard")

    @model_validator(mode="after")
    def _repeat_known_files(self):
        unknown = [f for f in self.repeat if f not in self.unlabelled]
        if unknown:
            raise ValueError(f"transfer.repeat names {unknown}, which are not in transfer.unlabelled {self.unlabelled}: "
                             "list each file to oversample under unlabelled too")
        bad = {f: n for f, n in self.repeat.items() if not 1 <= n <= 100}
        if bad:
            raise ValueError(f"transfer.repeat: times must be 1 to 100, got {bad}")
        return self


class KDConfig(TrainConfig):
    """Logit distillation: loss = alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE."""

    transfer: TransferConfig | None = Field(None, description="train on the train split plus teacher-labelled text "
                                            "(unlabelled files, augmented copies)")
    select_on_dev: bool = Field(True, description="with more than one epoch: score the dev split after every epoch "
                                "and keep the best epoch's weights (model selection never reads the test split)")
    patience: int | None = Field(None, ge=1, description="with select_on_dev: stop after this many epochs without a "
                                 "better dev accuracy (default: train every epoch)")

    temperature: float = Field(2.0, gt=0, le=100)
    alpha: float = Field(0.9, ge=0, le=1)
    temperature_end: float | None = Field(None, gt=0, le=100, description="anneal the temperature linearly to this "
                                          "by the last step (default: constant)")
    alpha_end: float | None = Field(None, ge=0, le=1, description="anneal alpha linearly to this by the last step")
    hidden_weight: float = Field(0.0, ge=0, description="weight of the hidden-state loss (a narrower student's "
                                 "states through learned projections, never shipped); the teacher runs live")
    hidden_loss: Literal["mse", "cosine"] = Field("mse", description="hidden-state loss: TinyBERT's MSE or "
                                                  "DistilBERT's cosine (directions only)")
    attention_weight: float = Field(0.0, ge=0, description="weight of the attention-distribution KL (same head count)")
    relation_weight: float = Field(0.0, ge=0, description="weight of MiniLM-v2's query/key/value relation KL: works "
                                   "across head counts and pruned heads")
    relation_heads: int | None = Field(None, ge=1, le=256, description="relation heads (default: the teacher's head "
                                       "count, or the largest divisor of every layer's width below it)")
    layer_map: list[int] | Literal["uniform", "last"] | None = Field(
        None, description="teacher layer (0-based) for each student layer, or `uniform` (default: evenly spaced, the "
        "last on the last) or `last` (the teacher's last k layers)")


class FinetuneConfig(TrainConfig):
    lr: float = Field(5e-5, gt=0, le=1.0)


class TeacherConfig(Strict):
    """Where the teacher comes from: exactly one of path, hub, config."""

    path: str | None = Field(None, description="local Hugging Face folder, or pkg://python_package/subdir")
    hub: str | None = Field(None, description="Hugging Face hub id (needs the internet)")
    config: dict | None = Field(None, description="build from a transformers config (random init); needs finetune")
    revision: str | None = None
    trust_remote_code: bool = False
    finetune: FinetuneConfig | None = None
    # exclude_if: unset, it stays out of the dumped config, so the cache keys of runs made before it are unchanged
    labels: dict[str, int] | None = Field(
        None, exclude_if=lambda v: v is None, description="which class of the model's trained head each data label "
        "is ({data label: class index}), where the head's class names do not say it (default: matched by name)")

    @model_validator(mode="after")
    def _one_source(self):
        given = [k for k in ("path", "hub", "config") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of teacher.path, teacher.hub or teacher.config (got {given or 'none'})")
        if self.config is not None and self.finetune is None:
            raise ValueError("a teacher built from a config has random weights: add teacher.finetune")
        if self.config is not None and self.labels is not None:
            raise ValueError("teacher.labels maps the data's labels onto a trained head; a teacher built from a config "
                             "has none (its new head is trained on the data's labels): remove teacher.labels")
        return self


class SeededTeacherConfig(TeacherConfig):
    """A further teacher as the teacher stage builds it: its fine-tuning may take a seed of its own."""

    seed: int | None = Field(None, description="fine-tuning seed (default: the recipe's)")


class ExtraTeacherConfig(SeededTeacherConfig):
    """A further teacher (another seed, size or architecture; its own tokenizer is fine: it reads the same texts).
    Its soft targets are averaged with the primary teacher's in probability space, by weight (the primary's is 1)."""

    weight: float = Field(1.0, gt=0, le=100)

    def stage_config(self) -> SeededTeacherConfig:
        """What the teacher stage sees (the weight is the distiller's business, not part of the teacher's cache key)."""
        return SeededTeacherConfig(**self.model_dump(exclude={"weight"}))


class DataConfig(Strict):
    """The task data: a local folder of TSV/CSV/JSONL files, a hub data set, or a bundled scikit-learn set."""

    path: str | None = None
    hub: str | None = None
    hub_config: str | None = None
    sklearn: Literal["digits"] | None = None
    format: Literal["auto", "tsv", "csv", "jsonl"] = "auto"
    text_column: str = "sentence"
    label_column: str = "label"
    train_split: str = "train"
    dev_split: str = "dev"
    test_split: str = "test"
    max_length: int = Field(128, ge=8, le=4096, description="tokens per text; longer texts are truncated")
    eval_max_examples: int | None = Field(None, ge=1, description="cap dev/test examples (tests, smoke runs)")
    # exclude_if: at its default the field stays out of the dumped config, so the data fingerprint (part of every
    # cache key) of runs that do not use it is unchanged
    dev_holdout: int | float | None = Field(
        None, gt=0, exclude_if=lambda v: v is None,
        description="build dev from train instead of the dev file: this many whole train texts that no other train "
                    "text contains (SST-2: its sentences), or this share of them (0 < share < 1, for a recipe that "
                    "fits data sets of any size), each leaving train with the train texts inside it, so dev holds "
                    "inputs train has never seen, as test does (data/holdout.py)")

    @model_validator(mode="after")
    def _one_source(self):
        given = [k for k in ("path", "hub", "sklearn") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of data.path, data.hub or data.sklearn (got {given or 'none'})")
        if isinstance(self.dev_holdout, float) and self.dev_holdout >= 1:
            raise ValueError(f"data.dev_holdout: {self.dev_holdout} is neither a count of texts (a whole number) nor "
                             "a share of them (between 0 and 1); write e.g. 872 or 0.125")
        if self.dev_holdout is not None and self.sklearn is not None:
            raise ValueError("data.dev_holdout holds out whole texts; the bundled scikit-learn images have a fixed "
                             "split already: remove data.dev_holdout")
        return self


class StudentConfig(Strict):
    """The student architecture.

    - layers: the teacher's architecture with a subset of its layers, initialised from them;
    - config: the teacher's family with a smaller config (overrides: fewer layers, narrower hidden / FFN, fewer
      heads), initialised from the teacher by layer selection (`layers`, default uniform) and weight slicing;
    - cnn: a cross-architecture convolutional student (image or text);
    - bilstm: a cross-architecture text student (Tang et al. 2019); pruning removes hidden units per direction;
    - pretrained: a small pretrained model of any transformers family (DistilBERT, MiniLM, TinyBERT checkpoints) from
      `path` or `hub`, with its own config and tokenizer and a fresh head sized to the data; `layers` keeps a subset
      of its own layers. The teacher's logits transfer across tokenizers (each model reads the same texts).
    """

    kind: Literal["layers", "config", "cnn", "bilstm", "pretrained"] = "layers"
    # unset, path/hub/revision stay out of the dumped config: the cache keys of earlier runs are unchanged
    path: str | None = Field(None, exclude_if=lambda v: v is None, description="kind=pretrained: local Hugging Face folder, or pkg://package/subdir")
    hub: str | None = Field(None, exclude_if=lambda v: v is None, description="kind=pretrained: Hugging Face hub id (needs the internet)")
    revision: str | None = Field(None, exclude_if=lambda v: v is None, description="kind=pretrained: hub revision")
    layers: list[int] | None = Field(None, description="teacher layer indices to keep (kind=layers; default: every "
                                     "other layer, ending with the last), to initialise a config student's layers "
                                     "from (kind=config; default: uniform), or the pretrained student's own layers "
                                     "to keep (kind=pretrained; default: all)")
    overrides: dict | None = Field(None, description="config changes (kind=config), e.g. hidden_size")
    channels: list[int] = Field(default_factory=lambda: [32, 64], description="conv widths (kind=cnn)")
    kernel_size: int = Field(3, ge=1, le=15)
    embedding_dim: int = Field(128, ge=8, le=4096, description="token embedding width of a text CNN with its own "
                               "embeddings or reduced from the teacher's (init_embeddings_from_teacher=svd; one that "
                               "copies the teacher's takes their width); a BiLSTM's LSTM input width (the teacher's "
                               "embeddings projected down when narrower, or reduced to it by svd)")
    lstm_hidden: int = Field(256, ge=8, le=4096, description="hidden units per direction of a BiLSTM student")
    init_embeddings_from_teacher: bool | Literal["svd"] = Field(
        True, description="kind=cnn / bilstm on text: start from the teacher's token embeddings (true: copied at their "
        "width; svd: reduced to embedding_dim columns by truncated SVD, a smaller table; false: the student's own)")
    # unset, it stays out of the dumped config: the cache keys of earlier runs are unchanged
    finetune: FinetuneConfig | None = Field(
        None, exclude_if=lambda v: v is None, description="train the student on the task's own labels "
        "(cross-entropy) before it distils: a warm start, as the flagship's student gets by starting from its "
        "fine-tuned teacher's layers; for a pretrained student, whose head is new, on more of the train split than "
        "the teacher can label (docs/recipes.md)")

    @model_validator(mode="after")
    def _kind_fields(self):
        if self.layers is not None and not self.layers:
            raise ValueError("student.layers is empty: list the teacher layers to keep, e.g. [0, 5], or leave it out "
                             "for every other layer")
        if self.layers is not None and (len(set(self.layers)) != len(self.layers) or min(self.layers) < 0):
            raise ValueError("student.layers must be distinct, non-negative layer indices")
        if self.kind == "pretrained" and (self.path is None) == (self.hub is None):
            raise ValueError("student.kind: pretrained needs exactly one of student.path (a local Hugging Face folder) "
                             "or student.hub (a hub id)")
        if self.kind != "pretrained" and (self.path or self.hub):
            raise ValueError(f"student.path / student.hub name a pretrained student; with student.kind: {self.kind} "
                             "the student is built from the teacher: remove them or set kind: pretrained")
        if self.init_embeddings_from_teacher == "svd" and self.kind not in ("cnn", "bilstm"):
            raise ValueError(f"student.init_embeddings_from_teacher: svd reduces the token embeddings a text CNN or "
                             f"BiLSTM starts from; a {self.kind} student keeps the teacher's family and its embeddings")
        return self


class DistillConfig(KDConfig):
    pass


class RecoveryConfig(KDConfig):
    epochs: float = Field(1.0, gt=0, le=1000)
    # exclude_if: at its default the field is left out of the dumped config, so the prune stage's cache key (a hash
    # of that dump) is what it was before the field existed, and runs made before it stay cached. A field added
    # later whose default reproduces the old behaviour should do the same.
    layer_teacher: Literal["teacher", "unpruned"] = Field(
        "teacher", exclude_if=lambda v: v == "teacher", description="whose hidden states, attentions and relations the intermediate terms (hidden_weight, "
        "attention_weight, relation_weight) match: the run's teacher, or the student as it was before pruning (same "
        "depth and hidden width, so layer i matches its own unpruned self: CoFi's layer distillation). The logit "
        "terms always read the teacher")

    @model_validator(mode="after")
    def _layer_teacher_has_terms(self):
        if self.layer_teacher == "unpruned" and not (self.hidden_weight or self.attention_weight or self.relation_weight):
            raise ValueError("layer_teacher: unpruned chooses whose layers the intermediate terms match, and none is on: "
                             "give hidden_weight (or relation_weight) a weight, e.g. hidden_weight: 1.0")
        return self


class PruneBudget(Strict):
    """What the pruned model may cost (exactly one of params, macs, latency_ms); pruning continues step by step until
    it fits."""

    params: float | None = Field(None, gt=0, lt=1, description="keep at most this share of the model's non-embedding "
                                 "parameters (embedding tables are not pruned: vocabulary trimming shrinks them)")
    macs: float | None = Field(None, gt=0, description="at most this many multiply-adds per inference (matrix "
                               "products, attention's included) at batch 1, sequence 128 (or the data's max_length "
                               "if shorter), counted on the FP32 ONNX graph")
    latency_ms: float | None = Field(None, gt=0, description="FP32 ONNX latency at batch 1, sequence 128 (or the "
                                     "data's max_length if shorter), 1 thread: measured on this host when the profile "
                                     "is a measured one, else estimated (labelled so, with the estimator's error)")
    profile: str | None = Field(None, description="the device profile of latency_ms (default: the recipe's first)")

    @model_validator(mode="after")
    def _one_budget(self):
        given = [k for k in ("params", "macs", "latency_ms") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of prune.budget.params, prune.budget.macs or prune.budget.latency_ms "
                             f"(got {given or 'none'})")
        if self.profile is not None and self.latency_ms is None:
            raise ValueError("prune.budget.profile names the device of a latency budget; it needs prune.budget.latency_ms")
        return self


class PruneConfig(Strict):
    """Structured pruning with torch-pruning: attention heads and FFN channels (transformers), conv channels (CNNs).

    With `budget` the ratios are found by the stage: `steps` rounds of prune-then-recover, each
    removing an equal share (geometrically) of what the budget asks, the last one landing on it.
    """

    ratio: float = Field(0.3, gt=0, lt=1, description="share of FFN / conv channels removed (ignored with a budget)")
    budget: PruneBudget | None = None
    steps: int = Field(1, ge=1, le=20, description="prune-and-recover steps to reach the budget, each a checkpoint")
    width_multiple: int | None = Field(
        None, ge=1, le=256, description="keep FFN / conv channels in multiples of this (vector widths, NPU tiles); "
        "default: the first profile's width_multiple")
    head_ratio: float | None = Field(None, ge=0, lt=1, description="share of attention heads removed (default: ratio; "
                                     "0 keeps every head)")
    importance: Literal["magnitude", "taylor", "loss"] = Field(
        "magnitude", description="what ranks heads and channels: weight magnitude, first-order Taylor on the weights, "
        "or the loss a head or channel carries (first-order, on its activation: Michel et al. 2019 for heads)")
    hidden_ratio: float = Field(0.0, ge=0, lt=1, description="share of the hidden width (the residual stream: embedding "
                                "tables, every LayerNorm and every layer's input and output together) removed, kept "
                                "in multiples of width_multiple; with a budget, spread over the steps and counted "
                                "toward it (transformers only)")
    drop_layers: int = Field(0, ge=0, le=100, description="remove this many whole transformer layers first (those "
                             "whose removal raises the distillation loss least, each measured by skipping it)")
    min_heads: int = Field(1, ge=0, description="never leave a layer fewer attention heads than this")
    min_channels: int = Field(1, ge=0, description="never leave a layer fewer FFN / conv channels than this (rounded "
                              "up to the width multiple)")
    global_pruning: bool = Field(True, description="rank channels across layers (uneven widths) rather than per layer")
    max_layer_ratio: float = Field(0.9, gt=0, lt=1, description="never remove more than this share of one layer")
    recovery: RecoveryConfig | None = Field(default_factory=RecoveryConfig)

    def transformer_only(self) -> list[str]:
        """The options set here that only a transformer has something for, each as 'prune.<field> <what it does>'
        (the recipe check and the stage refuse them for CNN and BiLSTM students)."""
        what = {"drop_layers": "removes transformer layers", "hidden_ratio": "narrows a transformer's residual stream"}
        return [f"prune.{field} {does}" for field, does in what.items() if getattr(self, field)]


class QATConfig(KDConfig):
    """INT8 quantization-aware training of Linear/Conv layers.

    Weights: per-channel symmetric int8. Activations (inputs of Linear/Conv): per-tensor; uint8
    (asymmetric) by default because on x86 signed 8-bit QDQ activations fall off onnxruntime's
    fast integer kernels (measured: slower than FP32, see DESIGN.md).
    """

    epochs: float = Field(1.0, gt=0, le=1000)
    lr: float = Field(2e-5, gt=0, le=1.0)
    weight_bits: Literal[8] = 8
    # 16: the w8a16 scheme Qualcomm recommends for transformers on its NPU (hexagon-npu-w8a16): QAT trains the
    # activation ranges at 16-bit steps. CPU integer kernels take 8-bit activations only, so the host model is
    # exported with 8-bit steps over the same ranges, and its validation against PyTorch measures what that costs.
    activation_bits: Literal[8, 16] = 8
    activation_dtype: Literal["uint8", "int8", "uint16"] = "uint8"
    weight_range: Literal["auto", "int8", "int7"] = Field(
        "auto", description="int7 avoids int16 saturation of u8s8 kernels on x86 without VNNI; auto decides from the target")
    embeddings: bool = Field(True, description="also quantize embedding tables (int8, one scale per row); the export "
                             "stores them as int8 and dequantizes only the gathered rows")
    attention_matmuls: bool | None = Field(
        None, description="also quantize attention's Q/K/V outputs, the inputs of its activation-by-activation "
        "matrix products, as an integer NPU runs them (default: when a profile of the recipe quantizes in full); the "
        "CPU build keeps them float, a full-INT8 device build takes their trained ranges")
    learned_ranges: bool = Field(False, description="after calibration, train the activation ranges with the weights "
                                 "(LSQ: learned step size and zero point) instead of following each batch's range")
    observer: Literal["minmax", "percentile", "mse"] = Field(
        "minmax", description="how a batch's activation range is read: its extremes, a percentile of its values, or "
        "the clipping that minimises its quantization error")
    percentile: float = Field(99.99, gt=50, le=100, description="the percentile observer's upper percentile")
    calibration_batches: int = Field(16, ge=1, le=10000)
    ema_decay: float = Field(0.99, gt=0, lt=1, description="moving-average factor of activation ranges")

    @model_validator(mode="before")
    @classmethod
    def _bits_follow_dtype(cls, data):
        # uint16 is the only 16-bit type: naming it is enough (activation_bits follows unless set otherwise)
        if isinstance(data, dict) and data.get("activation_dtype") == "uint16":
            data = {**data, "activation_bits": data.get("activation_bits", 16)}
        return data

    @model_validator(mode="after")
    def _bits_match_dtype(self):
        if (self.activation_bits == 16) != (self.activation_dtype == "uint16"):
            raise ValueError(f"activation_bits {self.activation_bits} does not fit activation_dtype "
                             f"{self.activation_dtype!r}: 16-bit activations are activation_dtype: uint16 (w8a16), "
                             "8-bit ones uint8 or int8")
        return self


class ExportConfig(Strict):
    opset: int | None = Field(None, ge=13, le=21, description="ONNX opset of every model; default: each profile's "
                              "own (`opset` in the profile), else 17")
    teacher: bool = Field(True, description="also export the run's teacher in FP32 (teacher.onnx), the reference "
                          "the profile stage compares with")
    validation_examples: int | None = Field(None, ge=8, description="dev examples ONNX is checked on against "
                                            "PyTorch; default: the whole dev split")
    min_agreement: float = Field(0.99, gt=0, le=1, description="argmax agreement ONNX vs PyTorch below which export fails")
    static_shapes: bool | None = Field(None, description="default: what the first profile demands")
    seq_len: int | None = Field(None, ge=1, description="sequence length of a static-shape export")
    devices: list[str] | None = Field(
        None, description="profiles that get a model of their own (devices/<profile>/model.onnx) besides the first "
        "profile's; default: every integer NPU (quantization scope full) among the recipe's profiles; [] = none")
    device_min_agreement: float = Field(
        0.97, gt=0, le=1, description="argmax agreement ONNX vs PyTorch below which a device build fails: full INT8 "
        "(Softmax, LayerNorm, GELU too) of a model whose QAT kept them float loses more than the CPU build")
    # unset, the keys below stay out of the dumped config: the cache keys of earlier runs are unchanged
    npu_fallback: Literal["refuse", "allow"] | None = Field(
        None, exclude_if=lambda v: v is None, description="where onnxruntime-qnn compiles a Qualcomm NPU build: refuse "
        "a build the HTP leaves nodes of to the CPU (exit 2, naming them), or allow it and say so in the report; "
        "default: refuse for a profile marked full_offload")
    htp_examples: int | None = Field(
        None, ge=1, exclude_if=lambda v: v is None, description="test examples an NPU build is run on under the "
        "HTP's emulation (onnxruntime-qnn); default: the whole test split")
    device_weights: Literal["auto", "qat", "pre-qat"] | None = Field(
        None, exclude_if=lambda v: v is None, description="the weights a device build of a QAT model starts from. "
        "auto (default): the QAT model's where QAT trained for the build's activation width, else (a w8a16 build "
        "after 8-bit QAT) those of the model QAT started from, which 16-bit activations keep almost losslessly; qat: "
        "always the QAT model's; pre-qat: always those QAT started from (its artifact must sit beside the QAT one)")
    vocabulary: Literal["nearest", "fallback", "full"] = Field(
        "nearest", description="text models: keep only the embedding rows of the pieces the train split uses and "
        "the special tokens. nearest: every other piece reads the row of its nearest kept piece, the tokenizer "
        "unchanged (any tokenizer); fallback: also keep every single-character piece and renumber the tokenizer, so "
        "unseen words split into smaller pieces as WordPiece does (WordPiece only; 0.7 MB larger on SST-2, same "
        "accuracy). Either also cuts the position table to data.max_length rows. full: ship the whole tables")
    int8_dynamic: bool = Field(
        True, description="on a measured first profile, also build onnxruntime's dynamic INT8 of the QAT model's float "
        "twin and ship it instead of the QAT QDQ graph where it validates and runs at least 1.05x faster")
    int8_fused: bool = Field(
        True, description="on a measured first profile, also build onnxruntime's own optimised graph of the QAT "
        "model with Linear biases folded into its integer MatMuls (com.microsoft operators: onnxruntime only) and ship "
        "it as model.onnx where it validates and runs at least 1.05x faster; the standard QDQ graph stays beside it")
    int8_min_speedup: float = Field(
        1.05, ge=0, description="on a measured first profile, ship the FP32 model when the INT8 one is not this many "
        "times faster (batch 1, 1 thread) or leaves a quantized layer to a float kernel; 0 always ships INT8")


class ProfileStageConfig(Strict):
    compare_teacher: bool = Field(True, description="also measure the teacher's FP32 export (export.teacher)")
    compare_fp32: bool = Field(True, description="also measure the final model's own FP32 export")
    warmup: int = Field(10, ge=0)
    runs: int = Field(50, ge=5, description="timed runs per round")
    rounds: int = Field(5, ge=1, description="rounds per case, each in a fresh process at another time; "
                        "p50 is the lowest round median (the quiet machine), p90/p99 pool every run")
    natural_lengths: bool = Field(True, description="also time each test text at its own length (text tasks)")
    natural_max_examples: int = Field(300, ge=1)
    ptq_baselines: bool = Field(True, description="also build and measure post-training quantization baselines of "
                                "the final model's FP32 export with onnxruntime's own tools (quantize_dynamic; "
                                "quantize_static QDQ, MinMax-calibrated on train examples); not shipped")
