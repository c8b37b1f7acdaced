"""Typed configuration of every `wsdm-train` command: dataclasses, YAML presets, ``--set`` overrides.

One configuration drives the whole chain (prepare, the training stages, merge, quantize and `all`).
The dataclass defaults are the published recipe (the `reference` preset states the same values
explicitly, and a test keeps the two equal). A preset or a user file is plain YAML; a user file may
start from a preset with ``base: reference`` and change only what differs. Every field can be
overridden from the command line with ``--set section.field=value``; list items are addressed by
index or, for teachers, by name (``--set teachers.athene.model=/models/athene``); free mappings
take new keys (``--set distill.teacher_predictions.athene=preds/athene/fold{fold}.parquet``).

Each top-level section is its own dataclass and is registered in :class:`Config`; unknown keys are
errors (a typo must not silently fall back to a default).

Batch sizes are counted in sequences. ``effective_batch`` is what one optimizer step sees over all
GPUs together; the gradient accumulation is derived from it and the world size at run time, so the
recipe is the same on 1 GPU or 64.

This module imports neither torch nor the training libraries: loading a configuration is instant.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from wsdm_serve.errors import WsdmError
from wsdm_serve.truncation import TruncationConfig

from .typed_tree import apply_override, build, merge_trees

PRESETS: tuple[str, ...] = ("reference", "tiny", "small")


# --------------------------------------------------------------------------- paths and data


@dataclass(kw_only=True)
class PathsConfig:
    """Where inputs are read and outputs written; relative paths are relative to the current folder."""

    data_dir: str = "data"
    processed_dir: str = "data/processed"
    model_dir: str = "model_save"


@dataclass(kw_only=True)
class Budget:
    """Token budget of query + both responses, and the word cap applied to each response first."""

    token_budget: int
    response_word_cap: int


BUDGETS = (
    "student_train",
    "student_dev",
    "student_pretrain",
    "teacher_train",
    "teacher_dev",
    "teacher_pretrain",
)


@dataclass(kw_only=True)
class PrepareConfig:
    """Inputs and budgets of `wsdm-train prepare` (reference section 1 and 2.2).

    Input files are relative to ``paths.data_dir`` unless absolute; ``null`` disables an extra
    table. A missing extra table is reported and skipped (the reference always had both).
    """

    train_file: str = "train.parquet"
    lmsys_file: str | None = "notie_lmsys.csv"
    ut_file: str | None = "ut_multi.csv"
    n_folds: int = 5
    fold_seed: int = 2025
    # Rows of one pair (prompt and both responses, either order), or of one prompt, share a fold;
    # none: split row by row, as the reference did.
    group_folds_by: Literal["pair", "prompt", "none"] = "pair"
    query_word_cap: int = 256
    query_token_cap: int = 256
    student_train: Budget = field(default_factory=lambda: Budget(token_budget=2048, response_word_cap=1400))
    student_dev: Budget = field(default_factory=lambda: Budget(token_budget=10000, response_word_cap=4200))
    student_pretrain: Budget = field(
        default_factory=lambda: Budget(token_budget=1024, response_word_cap=1400)
    )
    teacher_train: Budget = field(default_factory=lambda: Budget(token_budget=2048, response_word_cap=1400))
    teacher_dev: Budget = field(default_factory=lambda: Budget(token_budget=2048, response_word_cap=1400))
    teacher_pretrain: Budget = field(default_factory=lambda: Budget(token_budget=1024, response_word_cap=700))
    # The teachers' ut data kept only prompts with fewer than this many space-separated pieces.
    teacher_pretrain_max_words: int | None = 1200
    # Drop LMSYS/ut rows that are the same pair as a competition row (they would leak fold dev rows
    # into training); the reference kept them (false).
    drop_extra_overlap: bool = True

    def __post_init__(self) -> None:
        if self.n_folds < 2:
            raise WsdmError(f"prepare.n_folds: need at least 2 folds, got {self.n_folds}")
        for name in ("query_word_cap", "query_token_cap"):
            if getattr(self, name) < 0:
                raise WsdmError(f"prepare.{name}: must be >= 0")
        for name in BUDGETS:
            budget = getattr(self, name)
            if budget.token_budget < 1 or budget.response_word_cap < 0:
                raise WsdmError(f"prepare.{name}: token_budget must be >= 1 and response_word_cap >= 0")

    def truncation(self, budget: Budget) -> TruncationConfig:
        return TruncationConfig(
            token_budget=budget.token_budget,
            response_word_cap=budget.response_word_cap,
            query_word_cap=self.query_word_cap,
            query_token_cap=self.query_token_cap,
        )


# --------------------------------------------------------------------------- models


@dataclass(kw_only=True)
class TinyModelSpec:
    """A random tiny Qwen2 (``wsdm_serve.tiny.build_tiny_model``) for runs without real weights."""

    hidden_size: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    intermediate_size: int = 128
    seed: int = 0


@dataclass(frozen=True)
class LoadSettings:
    """How a base model is loaded for training or scoring."""

    load_in_4bit: bool = False
    dtype: str = "auto"  # auto: bf16 on CUDA, float32 on CPU
    gradient_checkpointing: bool = True
    trust_remote_code: bool = False
    attn_implementation: str | None = None


@dataclass(kw_only=True)
class ModelConfig:
    """A base model: where it is, its tokenizer, and how it is loaded for training.

    ``model: null`` with ``build_tiny`` puts the random tiny model under
    ``paths.model_dir/pretrained/<name>`` (built on first use). ``tokenizer`` defaults to the model
    folder. ``hf_id`` is only a hint in the error shown when the folder is missing.
    """

    model: str | None = None
    tokenizer: str | None = None
    hf_id: str | None = None
    build_tiny: TinyModelSpec | None = None
    load_in_4bit: bool = False
    dtype: str = "auto"
    gradient_checkpointing: bool = True
    trust_remote_code: bool = False
    attn_implementation: str | None = None
    # PyTorch's cuDNN attention backend in training; off because its backward pass returns NaN
    # gradients for some right-padded batches on Hopper GPUs (see wsdm_train.guards).
    sdpa_cudnn: bool = False

    @property
    def tokenizer_dir(self) -> str:
        return self.tokenizer or self.model or ""

    def load_settings(self) -> LoadSettings:
        return LoadSettings(
            load_in_4bit=self.load_in_4bit,
            dtype=self.dtype,
            gradient_checkpointing=self.gradient_checkpointing,
            trust_remote_code=self.trust_remote_code,
            attn_implementation=self.attn_implementation,
        )

    def _check(self, where: str) -> None:
        if self.model is None and self.build_tiny is None:
            raise WsdmError(f"{where}.model: set the model folder (or build_tiny for a random tiny model)")
        if self.model is None and not self.tokenizer:
            raise WsdmError(f"{where}.tokenizer: a model built by build_tiny needs a tokenizer folder")


@dataclass(kw_only=True)
class StudentConfig(ModelConfig):
    """The judge being trained (16-bit base with LoRA in the reference)."""

    model: str | None = "model_save/pretrained/Qwen2.5-14B-Instruct"
    hf_id: str | None = "Qwen/Qwen2.5-14B-Instruct"

    @property
    def name(self) -> str:
        return "student"


@dataclass(kw_only=True)
class TeacherConfig(ModelConfig):
    """One teacher; ``name`` names its folders (processed data, adapters, predictions)."""

    name: str
    load_in_4bit: bool = True


def _reference_teachers() -> list[TeacherConfig]:
    return [
        TeacherConfig(
            name="athene", model="model_save/pretrained/Athene-V2-Chat", hf_id="Nexusflow/Athene-V2-Chat"
        ),
        TeacherConfig(
            name="llama3n",
            model="model_save/pretrained/Llama-3.1-Nemotron-70B-Instruct-HF",
            hf_id="nvidia/Llama-3.1-Nemotron-70B-Instruct-HF",
        ),
        TeacherConfig(
            name="qwen2",
            model="model_save/pretrained/Qwen2.5-72B-Instruct",
            hf_id="Qwen/Qwen2.5-72B-Instruct",
        ),
    ]


DISTILL_MODES = ("reference", "mean_target")
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True, kw_only=True)
class LoraSettings:
    """LoRA of the reference: r 64, alpha 128 (scale 2), dropout 0.05 on all seven projections."""

    r: int = 64
    alpha: int = 128
    dropout: float = 0.05
    target_modules: tuple[str, ...] = LORA_TARGETS

    def peft_config(self):
        from peft import LoraConfig

        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=list(self.target_modules),
            bias="none",
            task_type="CAUSAL_LM",
        )


# --------------------------------------------------------------------------- training stages

PRETRAIN_LOSSES = ("letter_lm", "two_way")
HANDOFFS = ("final", "best")
SCHEDULERS = ("cosine", "linear", "constant_with_warmup", "constant")


@dataclass
class EvalCadence:
    """When the dev set is scored, in optimizer steps (independent of the GPU count).

    The reference scored at the first and last micro-step of each epoch and every N micro-steps
    once past a fraction of epoch 1; with its fixed accumulation those N micro-steps are N / GA
    optimizer steps, which is what ``every_steps`` holds.
    """

    at_epoch_start: bool = True
    at_epoch_end: bool = True
    every_steps: int = 0
    start_fraction: float = 0.0
    start_step: int = 0


@dataclass
class StageSettings:
    """Optimisation settings shared by every training stage."""

    epochs: int = 1
    learning_rate: float = 5e-5
    effective_batch: int = 64
    per_device_batch: int = 1
    warmup_steps: int = 0
    warmup_ratio: float = 0.015
    scheduler: str = "cosine"
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 1234
    eval: EvalCadence = field(default_factory=EvalCadence)
    eval_batch_tokens: int = 16384
    deepspeed: str | None = None
    max_steps: int = 0
    log_every: int = 10
    checkpoint_every: int = 0

    def __post_init__(self) -> None:
        if self.scheduler not in SCHEDULERS:
            raise WsdmError(f"scheduler {self.scheduler!r}: expected one of {', '.join(SCHEDULERS)}")
        for name in ("epochs", "effective_batch", "per_device_batch", "eval_batch_tokens"):
            if getattr(self, name) < 1:
                raise WsdmError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise WsdmError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.max_steps < 0:
            raise WsdmError(f"max_steps must be >= 0 (0: no limit), got {self.max_steps}")

    def warmup_for(self, total_steps: int) -> int:
        """Fixed warmup steps if given, else ceil(ratio x total) as the reference's fine-tunes."""
        if self.warmup_steps > 0:
            return self.warmup_steps
        return math.ceil(self.warmup_ratio * total_steps)


@dataclass
class PretrainSettings(StageSettings):
    """Post-pretraining on the extra (ut) preference rows.

    ``letter_lm``: full-vocabulary next-token CE on the answer letter (the student's recipe);
    ``two_way``: CE over the two letter logits (the teachers'). ``both_orders`` puts a row and its
    swapped copy in the same micro-batch. ``dev_rows`` rows are held out of training for the dev
    score (the reference sampled its dev rows from the training rows). ``handoff`` is the
    checkpoint later stages start from: the reference's post-pretrain folder ended up holding the
    final weights.
    """

    loss: str = "letter_lm"
    both_orders: bool = True
    dev_rows: int = 100
    handoff: str = "final"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loss not in PRETRAIN_LOSSES:
            raise WsdmError(f"pretrain loss {self.loss!r}: expected one of {', '.join(PRETRAIN_LOSSES)}")
        if self.handoff not in HANDOFFS:
            raise WsdmError(f"pretrain handoff {self.handoff!r}: expected one of {', '.join(HANDOFFS)}")
        if self.both_orders and self.per_device_batch % 2:
            raise WsdmError("pretrain with both_orders needs an even per_device_batch (a row and its swap)")


def _student_pretrain() -> PretrainSettings:
    """2 sequences (a row and its swap) x GA 8 x 8 GPUs in the reference."""
    return PretrainSettings(
        loss="letter_lm",
        both_orders=True,
        learning_rate=5e-5,
        effective_batch=128,
        per_device_batch=2,
        warmup_steps=100,
        eval=EvalCadence(at_epoch_start=True, at_epoch_end=True, every_steps=1000, start_step=163),
        deepspeed="zero2",
    )


def _teacher_pretrain() -> PretrainSettings:
    """8 sequences x GA 2 x 8 GPUs, one (randomly swapped) order per row in the reference."""
    return PretrainSettings(
        loss="two_way",
        both_orders=False,
        learning_rate=1e-5,
        effective_batch=128,
        per_device_batch=8,
        warmup_steps=100,
        eval=EvalCadence(at_epoch_start=True, at_epoch_end=False, every_steps=4000, start_step=650),
        deepspeed="zero2",
    )


@dataclass
class PretrainSections:
    student: PretrainSettings = field(default_factory=_student_pretrain)
    teacher: PretrainSettings = field(default_factory=_teacher_pretrain)


@dataclass
class FinetuneSettings(StageSettings):
    """Per-fold teacher fine-tune with the 2-way CE, starting from the post-pretrained adapter.

    The reference: 4 sequences x GA 4 x 8 GPUs, 2 epochs at 1e-5.
    """

    epochs: int = 2
    learning_rate: float = 1e-5
    effective_batch: int = 128
    per_device_batch: int = 4
    eval: EvalCadence = field(default_factory=lambda: EvalCadence(every_steps=100, start_fraction=0.5))
    deepspeed: str | None = "zero2"
    init_from_pretrain: bool = True


@dataclass
class DistillSettings(StageSettings):
    """Per-fold student distillation from every teacher's fold logits.

    ``teacher_predictions`` maps a teacher name to a predictions file pattern with ``{fold}``
    (the reference's "fast train" path); teachers not named use the teacher-predict output.
    ``missing_teacher_logits``: ``error`` stops when a training row has no logits from some
    teacher; ``drop`` trains without those rows and reports how many were dropped.
    The reference: 1 sequence x GA 8 x 8 GPUs, 2 epochs at 5e-5.
    """

    epochs: int = 2
    learning_rate: float = 5e-5
    effective_batch: int = 64
    per_device_batch: int = 1
    eval: EvalCadence = field(default_factory=lambda: EvalCadence(every_steps=50, start_fraction=0.67))
    deepspeed: str | None = "zero2"
    temperature: float = 1.0
    mode: str = "reference"
    init_from_pretrain: bool = True
    missing_teacher_logits: str = "error"
    teacher_predictions: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode not in DISTILL_MODES:
            raise WsdmError(f"distill mode {self.mode!r}: expected one of {', '.join(DISTILL_MODES)}")
        if self.temperature <= 0:
            raise WsdmError(f"distill temperature must be > 0, got {self.temperature}")
        if self.missing_teacher_logits not in ("error", "drop"):
            raise WsdmError("distill missing_teacher_logits: expected error or drop")
        for name, pattern in self.teacher_predictions.items():
            if "{fold}" not in str(pattern):
                raise WsdmError(f"distill.teacher_predictions.{name}: the path must contain {{fold}}")


@dataclass
class TeacherPredictSettings:
    """Tokens per scoring batch when the fine-tuned teachers write their logits."""

    batch_tokens: int = 16384


# --------------------------------------------------------------------------- merge and quantize

MergeMode = Literal["reference", "delta"]
MERGE_MODES: tuple[str, ...] = ("reference", "delta")
MERGE_DTYPES: tuple[str, ...] = ("auto", "bfloat16", "float16", "float32")


@dataclass(kw_only=True)
class MergeConfig:
    """`wsdm-train merge`; the defaults are the reference recipe.

    ``mode``: ``reference`` averages every adapter tensor (A and B separately), ``delta`` writes the
    exact mean of the folds' weight deltas. ``dtype`` is the dtype of the merged model (``auto``:
    the base checkpoint's). ``adapter`` picks each fold's ``best`` or ``final`` checkpoint.
    ``out`` defaults to ``paths.model_dir/merged``, ``adapter_out`` to ``<out>_adapter``. The base
    model and tokenizer are the student's.
    """

    mode: MergeMode = "reference"
    dtype: str = "auto"
    max_shard_size: str = "5GB"
    adapter: Literal["best", "final"] = "best"
    out: str | None = None
    adapter_out: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in MERGE_MODES:
            raise WsdmError(f"unknown merge mode {self.mode!r}; choose one of {', '.join(MERGE_MODES)}")
        if self.dtype not in MERGE_DTYPES:
            raise WsdmError(f"unknown dtype {self.dtype!r}; choose one of {', '.join(MERGE_DTYPES)}")


QuantFormat = Literal["compressed-tensors", "gptq"]
QUANT_FORMATS: tuple[str, ...] = ("compressed-tensors", "gptq")
QUANT_DTYPES: tuple[str, ...] = ("auto", "bfloat16", "float16", "float32")
# Where a quantize setting lives and not what it does: left out of the record of a quantization.
QUANTIZE_PATH_FIELDS: tuple[str, ...] = ("model", "calibration", "out")


@dataclass(kw_only=True)
class QuantizeConfig:
    """`wsdm-train quantize`; the defaults are the reference's GPTQ run.

    ``dampening`` is GPTQ's damping fraction of the Hessian diagonal (the reference's library
    default, 0.1). ``max_calibration_tokens`` cuts each calibration prompt to its first N tokens
    (None: whole prompts, as the reference). ``dtype`` is the dtype the model is calibrated in
    (auto: the checkpoint's; the reference loaded fp16, which can overflow for Qwen2.5).
    ``model`` defaults to the merge output, ``calibration`` to fold 0's student training prompts
    (``paths.processed_dir/student/fold0/train.parquet``), ``out`` to
    ``paths.model_dir/final_model``.
    """

    bits: int = 8
    group_size: int = 128
    symmetric: bool = True
    act_order: bool = False
    dampening: float = 0.1
    block_size: int = 128
    calibration_samples: int = 1024
    calibration_seed: int = 2025
    max_calibration_tokens: int | None = None
    format: QuantFormat = "compressed-tensors"
    dtype: str = "auto"
    ignore: tuple[str, ...] = ("lm_head",)
    max_shard_size: str = "5GB"
    model: str | None = None
    calibration: str | None = None
    out: str | None = None

    def __post_init__(self) -> None:
        self.validate()

    @property
    def spec(self):
        from wsdm_serve.quantization import QuantSpec

        return QuantSpec(self.bits, self.group_size, self.symmetric, self.act_order)

    def settings(self) -> dict[str, Any]:
        """What the quantization depends on (the paths are recorded separately, as inputs)."""
        values = dataclasses.asdict(self)
        for name in QUANTIZE_PATH_FIELDS:
            values.pop(name)
        values["ignore"] = list(self.ignore)
        return values

    def validate(self) -> None:
        if self.format not in QUANT_FORMATS:
            raise WsdmError(f"unknown format {self.format!r}; choose one of {', '.join(QUANT_FORMATS)}")
        if self.dtype not in QUANT_DTYPES:
            raise WsdmError(f"unknown dtype {self.dtype!r}; choose one of {', '.join(QUANT_DTYPES)}")
        if self.bits not in (4, 8):
            raise WsdmError(f"bits {self.bits}: vLLM's weight-only kernels take 4 or 8")
        if self.group_size != -1 and (self.group_size <= 0 or self.group_size % 32):
            raise WsdmError(f"group size {self.group_size}: use -1 (per channel) or a multiple of 32")
        if self.format == "gptq" and self.act_order:
            raise WsdmError("--format gptq is written without activation order; drop --act-order")
        if self.calibration_samples < 1:
            raise WsdmError("calibration samples must be at least 1")
        if not 0 < self.dampening < 1:
            raise WsdmError(f"dampening {self.dampening}: expected a fraction between 0 and 1")


# --------------------------------------------------------------------------- the whole configuration


@dataclass(kw_only=True)
class Config:
    """The whole training configuration; one attribute per YAML section."""

    paths: PathsConfig = field(default_factory=PathsConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    teachers: list[TeacherConfig] = field(default_factory=_reference_teachers)
    lora: LoraSettings = field(default_factory=LoraSettings)
    pretrain: PretrainSections = field(default_factory=PretrainSections)
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)
    teacher_predict: TeacherPredictSettings = field(default_factory=TeacherPredictSettings)
    distill: DistillSettings = field(default_factory=DistillSettings)
    merge: MergeConfig = field(default_factory=MergeConfig)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)

    def __post_init__(self) -> None:
        names = [t.name for t in self.teachers]
        for name in names:
            if not name or "/" in name or "\\" in name or name.startswith("."):
                raise WsdmError(f"teachers: {name!r} is not a usable folder name")
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise WsdmError(f"teachers: duplicate name {duplicated[0]!r}")
        self.student._check("student")
        for teacher in self.teachers:
            teacher._check(f"teachers.{teacher.name}")

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON values (tuples become lists), as a preset file would state them."""
        return _plain(dataclasses.asdict(self))

    def teacher(self, name: str) -> TeacherConfig:
        for spec in self.teachers:
            if spec.name == name:
                return spec
        known = ", ".join(t.name for t in self.teachers) or "none configured"
        raise WsdmError(f"unknown teacher {name!r} (known: {known})")

    def model_path(self, spec: ModelConfig) -> Path:
        """The model folder of the student or a teacher (a tiny model's default place if unset)."""
        if spec.model:
            return Path(spec.model)
        return Path(self.paths.model_dir) / "pretrained" / spec.name  # type: ignore[attr-defined]

    def merged_dir(self) -> Path:
        return Path(self.merge.out) if self.merge.out else Path(self.paths.model_dir) / "merged"

    def quantize_input(self) -> Path:
        return Path(self.quantize.model) if self.quantize.model else self.merged_dir()

    def calibration_file(self) -> Path:
        if self.quantize.calibration:
            return Path(self.quantize.calibration)
        return Path(self.paths.processed_dir) / "student" / "fold0" / "train.parquet"

    def final_dir(self) -> Path:
        return Path(self.quantize.out) if self.quantize.out else Path(self.paths.model_dir) / "final_model"


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


# --------------------------------------------------------------------------- loading


def load_config(name_or_path: str | Path, overrides: typing.Iterable[str] = ()) -> Config:
    """A preset name (``reference``, ``tiny``) or a YAML file, then ``section.field=value`` overrides."""
    source = str(name_or_path)
    tree = _load_tree(source, chain=())
    config = _typed(tree, source)
    overrides = list(overrides)
    if not overrides:
        return config
    tree = config.to_dict()
    for item in overrides:
        apply_override(tree, item, Config)
    return _typed(tree, source)


def _typed(tree: dict[str, Any], source: str) -> Config:
    try:
        return build(Config, tree, "config")
    except WsdmError as exc:
        raise WsdmError(f"config {source}: {exc}") from None


def _load_tree(name_or_path: str, chain: tuple[str, ...]) -> dict[str, Any]:
    import yaml

    if name_or_path in chain:
        raise WsdmError(f"config {name_or_path}: `base` refers back to itself ({' -> '.join(chain)})")
    path = Path(name_or_path)
    if name_or_path in PRESETS:
        text = resources.files("wsdm_train.presets").joinpath(f"{name_or_path}.yaml").read_text("utf-8")
    elif path.is_file():
        text = path.read_text("utf-8")
    else:
        raise WsdmError(f"config {name_or_path}: no such preset or file (presets: {', '.join(PRESETS)})")
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        first = str(exc).strip().splitlines()
        raise WsdmError(f"config {name_or_path}: not valid YAML ({' '.join(first[:2])})") from exc
    if tree is None:
        tree = {}
    if not isinstance(tree, dict):
        raise WsdmError(f"config {name_or_path}: expected a mapping of sections at the top level")
    base = tree.pop("base", None)
    if base is None:
        return tree
    if not isinstance(base, str):
        raise WsdmError(f"config {name_or_path}: `base` must be a preset name or a file path")
    if base not in PRESETS and not Path(base).is_absolute() and path.is_file():
        candidate = path.parent / base
        base = str(candidate) if candidate.is_file() else base
    return merge_trees(_load_tree(base, (*chain, name_or_path)), tree)


def with_values(config: Config, values: dict[str, Any]) -> Config:
    """``config`` with explicit command-line values (``section.field`` -> value; None: not given).

    The values go through the same typing and checks as the YAML, so a bad option value is the same
    one-line error as a bad preset value.
    """
    given = {key: str(value) if isinstance(value, Path) else value for key, value in values.items()}
    given = {key: value for key, value in given.items() if value is not None}
    if not given:
        return config
    tree = config.to_dict()
    for key, value in given.items():
        node = tree
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    return build(Config, tree, "config")
