"""The job configuration schema, shared by the engine, its CLI and the service (imports no torch)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from workers.compression.architectures import ZOO, parse_architecture

__all__ = [
    "ARCHITECTURES",
    "DISTILL_DEFAULT",
    "METHOD_OPTIONS",
    "METHOD_TARGETS",
    "DataOptions",
    "DistillOptions",
    "FinetuneConfig",
    "JobConfig",
    "L1Options",
    "MagnitudeOptions",
    "Method",
    "Target",
    "TppOptions",
    "WeightMomOptions",
]

Method = Literal["weightmom", "tpp", "magnitude", "l1"]

ARCHITECTURES: tuple[str, ...] = ZOO  # the built-in networks; libraries add `torchvision/…`, `timm/…`, `hf`

Fraction = Annotated[float, Field(gt=0.0, lt=1.0)]
UnitInterval = Annotated[float, Field(ge=0.0, le=1.0)]


class _Strict(BaseModel):
    """Base for every config model: unknown fields are an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Target(_Strict):
    """What the pruning must reach: exactly one of sparsity, layerwise pruning ratio, or FLOPs reduction."""

    sparsity: Fraction | None = None
    pruning_ratio: Fraction | None = None
    flops_reduction: Annotated[float, Field(gt=1.0, le=1000.0)] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Target:
        """Rejects a target that names none or several goals."""
        given = [name for name, value in self.model_dump().items() if value is not None]
        if len(given) != 1:
            raise ValueError(
                f"target needs exactly one of sparsity, pruning_ratio, flops_reduction; got {given}"
            )
        return self

    @property
    def kind(self) -> str:
        """Names the one goal that is set."""
        return next(name for name, value in self.model_dump().items() if value is not None)


class DistillOptions(_Strict):
    """Knowledge distillation from the model as uploaded: loss = alpha*T²*KL(teacher_T || student_T) +
    (1 - alpha)*cross-entropy, teacher logits computed on the same augmented batch (see distill.py)."""

    alpha: UnitInterval = 0.5
    temperature: Annotated[float, Field(gt=0.0, le=100.0)] = 4.0


def _distill(value: Any) -> Any:
    """Accepts `true` as the default distillation settings (`false` switches it off)."""
    return DistillOptions() if value is True else value


# On by default: bench/RESULTS.md, "Distillation", measured on ResNet-20 / the CIFAR-10 subset.
DISTILL_DEFAULT = DistillOptions()


class FinetuneConfig(_Strict):
    """Finetuning after pruning: optimizer, learning-rate schedule, epochs, batch size and distillation."""

    epochs: Annotated[int, Field(ge=0, le=1000)] = 10
    lr: Annotated[float, Field(gt=0.0, le=10.0)] = 0.01
    batch_size: Annotated[int, Field(ge=1, le=4096)] = 128
    optimizer: Literal["sgd", "adamw"] = "sgd"
    schedule: Literal["step", "cosine"] = "step"
    momentum: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.9
    weight_decay: Annotated[float, Field(ge=0.0, le=1.0)] = 5e-4
    distill: Annotated[DistillOptions | Literal[False], BeforeValidator(_distill)] = DISTILL_DEFAULT


def _architecture(text: str) -> str:
    """Accepts the architecture forms of `parse_architecture` (raises its ValueError otherwise)."""
    parse_architecture(text)
    return text


Architecture = Annotated[str, Field(max_length=110), AfterValidator(_architecture)]
Interpolation = Literal["nearest", "bilinear", "bicubic"]


class DataOptions(_Strict):
    """How the dataset is read and fed: image size, resize/crop, normalization and augmentation.

    Unset fields come from the architecture's own preprocessing (timm's pretrained config, a Hugging Face
    `preprocessor_config.json`, torchvision's weight transforms, the zoo's CIFAR convention), else from the
    data (its own image size; mean/std computed on the train split).
    """

    image_size: Annotated[int, Field(ge=8, le=1024)] | None = None  # the square side the model is fed
    crop_pct: Annotated[float, Field(gt=0.0, le=1.0)] | None = None  # resize to image_size/crop_pct, crop
    interpolation: Interpolation | None = None
    mean: list[float] | None = None
    std: list[Annotated[float, Field(gt=0.0)]] | None = None
    scale: Annotated[float, Field(gt=0.0)] | None = None
    augment: bool = True

    @model_validator(mode="after")
    def _mean_and_std_together(self) -> DataOptions:
        """Rejects a mean without a std (or the reverse), or the two of different lengths."""
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both data.mean and data.std, or neither")
        if self.mean is not None and self.std is not None and len(self.mean) != len(self.std):
            raise ValueError("data.mean and data.std must have one value per channel")
        return self


class MagnitudeOptions(_Strict):
    """Global gradual magnitude pruning (WeightMom with beta=0, gamma=1)."""

    interval: Annotated[int, Field(ge=1, le=100_000)] = 100
    t0: UnitInterval = 0.0
    # None: the pruning window closes at the first LR drop (50% of the run, step schedule) or at 60% of a
    # cosine run (specs/weightmom.md), so every pruning event trains at the full finetune LR.
    t_end: UnitInterval | None = None
    exclude_layers: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _ramp_in_order(self) -> MagnitudeOptions:
        """Rejects a pruning ramp that ends before it starts, at submit time rather than mid-job."""
        if self.t_end is not None and self.t0 > self.t_end:
            raise ValueError(f"t0 ({self.t0}) must not exceed t_end ({self.t_end})")
        return self


class WeightMomOptions(MagnitudeOptions):
    """WeightMom: EMA-of-|w| scores and relative-sparsity layer quotas (see specs/weightmom.md)."""

    beta: Annotated[float, Field(ge=0.0, lt=1.0)] | None = None  # default 1 - 1/interval (interval as used)
    # The spec's 1.0: in bench/RESULTS.md no gamma differs from another by more than 2 standard errors.
    gamma: Annotated[float, Field(ge=0.0, le=10.0)] = 1.0


class L1Options(_Strict):
    """L1-norm filter pruning with physical removal (the TPP paper's baseline)."""

    coupled: bool = False
    round_to: Annotated[int, Field(ge=1, le=512)] | None = None
    # Budget-matched control of the TPP benchmark: this many steps at constant `extra_lr` after removal,
    # before the finetune (TPP's regularization budget spent as plain training).
    extra_steps: Annotated[int, Field(ge=0, le=1_000_000)] = 0
    extra_lr: Annotated[float, Field(gt=0.0, le=10.0)] = 1e-3


class TppOptions(_Strict):
    """Trainability Preserving Pruning: Gram + BN regularization before removal (see specs/tpp.md).

    Counted in optimizer steps, as the authors do (MingSun-Tse/TPP, CIFAR): lambda += reg_granularity every
    update_interval steps up to lambda_max, then stabilize_steps at lambda_max with one group zeroed every
    zero_out_interval steps. `scale` multiplies every step count and divides lambda's ceiling (their total
    pull kept), 1.0 being the authors' 110,000 steps; the default 0.02 (2,200 steps) is in tpp_schedule.py.
    `schedule: adaptive` (the default) grows lambda `growth` times faster to lambda_max, then doubles it every
    `doubling_steps`, only until every pruned channel's norm is below `norm_ratio` of its kept channels',
    holds as long as the authors' zero-out pass would take, zeroes every group at once, and stops.
    """

    coupled: bool = False
    round_to: Annotated[int, Field(ge=1, le=512)] | None = None
    schedule: Literal["adaptive", "authors"] = "adaptive"
    reg_granularity: Annotated[float, Field(gt=0.0, le=100.0)] = 1e-4
    update_interval: Annotated[int, Field(ge=1, le=100_000)] = 10
    lambda_max: Annotated[float, Field(gt=0.0, le=100.0)] = 1.0
    stabilize_steps: Annotated[int, Field(ge=0, le=10_000_000)] = 10_000
    zero_out_interval: Annotated[int, Field(ge=1, le=100_000)] = 100
    scale: Annotated[float, Field(gt=0.0, le=1.0)] = 0.02
    norm_ratio: Annotated[float, Field(gt=0.0, lt=1.0)] = 1e-3
    growth: Annotated[float, Field(ge=1.0, le=1000.0)] = 10.0  # adaptive: times the scaled staircase's rate
    doubling_steps: Annotated[int, Field(ge=1, le=1_000_000)] = 100  # adaptive: past lambda_max
    max_reg_steps: Annotated[int, Field(ge=0, le=10_000_000)] | None = None  # adaptive cap; None: the ramp
    reg_lr: Annotated[float, Field(gt=0.0, le=10.0)] = 1e-3
    gram_weight: Annotated[float, Field(ge=0.0, le=1e6)] = 1000.0
    bn_reg: bool = True
    weight_reg: bool = True


METHOD_OPTIONS: dict[str, type[_Strict]] = {
    "magnitude": MagnitudeOptions,
    "weightmom": WeightMomOptions,
    "l1": L1Options,
    "tpp": TppOptions,
}

METHOD_TARGETS: dict[str, frozenset[str]] = {
    "magnitude": frozenset({"sparsity"}),
    "weightmom": frozenset({"sparsity"}),
    "l1": frozenset({"pruning_ratio", "flops_reduction"}),
    "tpp": frozenset({"pruning_ratio", "flops_reduction"}),
}


class JobConfig(_Strict):
    """One compression job: the method, its target and options, finetuning, data handling and seed."""

    method: Method
    architecture: Architecture | None = None
    target: Target
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    data: DataOptions = Field(default_factory=DataOptions)
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = 0
    options: dict[str, Any] = Field(default_factory=dict)
    # The service's, not the engine's (which ignores it): where the job's JSON is POSTed, signed, when the
    # job ends (service/webhooks). Private and loopback hosts are refused at submit.
    webhook_url: Annotated[str, Field(max_length=2048, pattern=r"^https?://\S+$")] | None = None

    @model_validator(mode="after")
    def _method_fits(self) -> JobConfig:
        """Checks that the target suits the method and that `options` are the method's own."""
        allowed = METHOD_TARGETS[self.method]
        if self.target.kind not in allowed:
            raise ValueError(
                f"method {self.method!r} takes a target of {sorted(allowed)}, not {self.target.kind!r}"
            )
        try:
            METHOD_OPTIONS[self.method].model_validate(self.options)
        except ValidationError as exc:
            raise ValueError(f"options for {self.method!r}: {exc}") from None
        return self

    def method_options(self) -> Any:
        """Returns `options` parsed into the method's own options model (defaults filled in)."""
        return METHOD_OPTIONS[self.method].model_validate(self.options)
