"""The models being trained: the student, the teachers, how each is loaded, and the LoRA put on them."""

from __future__ import annotations

from dataclasses import dataclass

from .types import Count, FieldError, Float, Int, section

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@section
class TinyModelSpec:
    """A random tiny Qwen2 (``wsdm_serve.tiny.build_tiny_model``) for runs without real weights."""

    hidden_size: Count = 64
    layers: Count = 2
    heads: Count = 4
    kv_heads: Count = 2
    intermediate_size: Count = 128
    seed: Int = 0


@dataclass(frozen=True)
class LoadSettings:
    """How a base model is loaded for training or scoring."""

    load_in_4bit: bool = False
    dtype: str = "auto"  # auto: bf16 on CUDA, float32 on CPU
    gradient_checkpointing: bool = True
    trust_remote_code: bool = False
    attn_implementation: str | None = None


@section
class ModelConfig:
    """A base model: where it is, its tokenizer, and how it is loaded for training.

    ``model: null`` with ``build_tiny`` puts the random tiny model under
    ``paths.model_dir/pretrained/<name>`` (built on first use). ``tokenizer`` defaults to the model
    folder. ``hf_id`` is only a hint in the error shown when the folder is missing.
    """

    model: str | None = None
    """Base model folder."""
    tokenizer: str | None = None
    """Tokenizer folder (when unset: the model folder's)."""
    hf_id: str | None = None
    build_tiny: TinyModelSpec | None = None
    load_in_4bit: bool = False
    dtype: str = "auto"
    gradient_checkpointing: bool = True
    trust_remote_code: bool = False
    """Allow code shipped in the model folder to run."""
    attn_implementation: str | None = None
    sdpa_cudnn: bool = False
    """PyTorch's cuDNN attention backend in training; off because its backward pass returns NaN
    gradients for some right-padded batches on Hopper GPUs (see wsdm_train.training.guards)."""

    def __post_init__(self) -> None:
        if self.model is None and self.build_tiny is None:
            raise FieldError("model", "set the model folder (or build_tiny for a random tiny model)")
        if self.model is None and not self.tokenizer:
            raise FieldError("tokenizer", "a model built by build_tiny needs a tokenizer folder")

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


@section
class StudentConfig(ModelConfig):
    """The judge being trained (16-bit base with LoRA in the reference)."""

    model: str | None = "model_save/pretrained/Qwen2.5-14B-Instruct"
    hf_id: str | None = "Qwen/Qwen2.5-14B-Instruct"

    @property
    def name(self) -> str:
        return "student"


@section
class TeacherConfig(ModelConfig):
    """One teacher; ``name`` names its folders (processed data, adapters, predictions)."""

    name: str
    load_in_4bit: bool = True

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name or "\\" in self.name or self.name.startswith("."):
            raise FieldError("name", f"{self.name!r} is not a usable folder name")
        super().__post_init__()


def reference_teachers() -> list[TeacherConfig]:
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


@section(frozen=True)
class LoraSettings:
    """LoRA of the reference: r 64, alpha 128 (scale 2), dropout 0.05 on all seven projections."""

    r: Count = 64
    alpha: Count = 128
    dropout: Float = 0.05
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
