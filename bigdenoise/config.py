"""Validated training configuration: shared options plus each method's own, checked by the method."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .axes import AXES_ALLOWED, net_axes
from .errors import ConfigError
from .methods import get_method


class NetConfig(BaseModel):
    """U-Net shape (CSBDeep / Noise2Void defaults)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    depth: int = Field(2, ge=1, le=5)
    features: int = Field(32, ge=1, le=512)
    kernel: int = Field(3, ge=1, le=9)
    batch_norm: bool = True
    n2v2: bool = False
    residual: bool = False

    @field_validator("kernel")
    @classmethod
    def _odd(cls, k: int) -> int:
        if k % 2 == 0:
            raise ValueError("kernel must be odd")
        return k


class TrainConfig(BaseModel):
    """Everything that decides a training run (with the data and the seed, the whole run).

    The budget is the first of ``steps``, ``epochs`` (one epoch = as many patches as tile the
    volume once) or ``max_time`` (seconds) to run out; with none given, 2000 steps.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    method: str = "n2v"
    axes: str
    patch: tuple[int, ...] | None = None
    batch_size: int = Field(16, ge=1)
    lr: float = Field(4e-4, gt=0)
    lr_patience: int = Field(10, ge=1, description="validations without improvement before the LR is halved")
    schedule: Literal["plateau", "cosine"] | None = Field(
        None, description="LR schedule of every stage: plateau (halve on a validation plateau) or cosine "
        "(anneal to zero over the stage's budget); None: each stage's own, as its method sets it")
    steps: int | None = Field(None, ge=1)
    epochs: float | None = Field(None, gt=0)
    max_time: float | None = Field(None, gt=0, description="seconds")
    val_patches: int = Field(128, ge=1)
    val_every: int = Field(100, ge=1, description="steps between validations and checkpoints")
    seed: int = Field(0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True
    augment: bool = True
    num_workers: int = Field(0, ge=0)
    cache_mb: int = Field(1024, ge=16)
    stats_chunks: int = Field(32, ge=1, description="random chunks read to estimate normalisation")
    remove_background: bool = Field(
        False, description="subtract a fixed camera background pattern (YX median over sampled planes) "
        "before normalisation; the pattern travels in the model package")
    foreground: Literal["auto", "off"] | float = Field(
        "auto", description="foreground-aware patch sampling (bigdenoise.foreground): auto (on when the sampled "
        "chunks are mostly background), off (uniform patches), or a foreground threshold in raw intensity "
        "(always on)")
    net: NetConfig = NetConfig()
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("axes")
    @classmethod
    def _axes(cls, axes: str) -> str:
        axes = axes.upper()
        if axes not in AXES_ALLOWED:
            raise ValueError(f"axes {axes!r} must be one of {', '.join(AXES_ALLOWED)}")
        return axes

    @field_validator("foreground", mode="before")
    @classmethod
    def _foreground(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() in ("auto", "off"):
            return value.strip().lower()
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"foreground must be auto, off or a threshold (a number), got {value!r}") from None

    @model_validator(mode="before")
    @classmethod
    def _method_net_defaults(cls, data: Any) -> Any:
        """Training and network settings the method prefers, where the configuration does not set them."""
        if not isinstance(data, dict):
            return data
        try:
            method = get_method(data.get("method", "n2v"))
        except ConfigError:
            return data  # reported by _check
        data = {**method.train_defaults, **{k: v for k, v in data.items() if v is not None}}
        defaults = dict(method.net_defaults)
        if defaults:
            net = data.get("net") or {}
            if isinstance(net, NetConfig):
                net = net.model_dump(exclude_unset=True)
            data = {**data, "net": {**defaults, **net}}
        return data

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        try:
            get_method(self.method).options.model_validate(self.options)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ValueError(f"options of method {self.method}: {problems}") from None
        stack = self.stack_axis
        if stack is not None:
            if stack not in "ZT":
                raise ValueError(f"the stack axis must be Z or T, got {stack!r}")
            if stack not in self.axes:
                raise ValueError(
                    f"method {self.method} stacks planes along {stack} but the axes are {self.axes}; "
                    f"pass a stack axis the data has (--stack-axis Z or T)")
        ndim = self.spatial_ndim
        what = f"axes {self.axes}" + (f" (the network sees {self.net_axes})" if stack else "")
        if self.patch is not None and len(self.patch) != ndim:
            raise ValueError(f"patch {self.patch} needs {ndim} sizes for {what}")
        factor = 2**self.net.depth
        for p in self.patch_shape:
            if p % factor:
                raise ValueError(f"patch size {p} must be a multiple of {factor} (2**depth)")
        return self

    @property
    def stack_axis(self) -> str | None:
        """The axis fed to the network as channels (Noise2Stack), or None; for a method with
        ``planes`` (2D nets over YX), Z when the axes have one (a stack without neighbours)."""
        return get_method(self.method).stack_for(self.method_options, self.axes)

    @property
    def net_axes(self) -> str:
        """The spatial axes the network sees: Z, Y, X except the stack axis."""
        return net_axes(self.axes, self.stack_axis)

    @property
    def spatial_ndim(self) -> int:
        return len(self.net_axes)

    @property
    def patch_shape(self) -> tuple[int, ...]:
        if self.patch is not None:
            return tuple(self.patch)
        return DEFAULT_PATCH_2D if self.spatial_ndim == 2 else DEFAULT_PATCH_3D

    @property
    def method_options(self) -> BaseModel:
        return get_method(self.method).options.model_validate(self.options)


DEFAULT_PATCH_2D = (64, 64)
DEFAULT_PATCH_3D = (16, 64, 64)


def anisotropic_patch(voxel_size: tuple[float, float, float], depth: int) -> tuple[int, int, int] | None:
    """The default 3D patch for a volume whose Z voxels are longer than its Y voxels, or None
    when the cubic default (:data:`DEFAULT_PATCH_3D`, 16 x 64 x 64) stays.

    The rule: Y and X stay 64; Z is ``64 * y_size / z_size`` (the physical extent of 64 Y voxels),
    rounded to the nearest multiple of ``2**depth``, at least ``max(4, 2**depth)`` and never above
    the default's 16. E.g. spacing (2, 0.4, 0.4) µm, depth 2: 64 * 0.2 = 12.8 -> 12 x 64 x 64.
    ``voxel_size``: (z, y, x), any one unit.
    """
    z_size, y_size = float(voxel_size[0]), float(voxel_size[1])
    default_z, yx = DEFAULT_PATCH_3D[0], DEFAULT_PATCH_3D[1:]
    if not z_size > y_size > 0:
        return None
    factor = 2**depth
    z = factor * round(yx[0] * y_size / z_size / factor)
    z = min(default_z, max(4, factor, z))
    return None if z >= default_z else (z, *yx)


def with_default_patch(config: TrainConfig, shape: tuple[int, ...],
                       voxel_size: tuple[float, ...] | None) -> TrainConfig:
    """``config`` with its default patch fitted to the volume when none was given; ``config``
    itself when a patch was given or the default fits. The patch chosen is recorded in the
    model's config.

    Two rules, in order: a network that sees Z, Y and X takes :func:`anisotropic_patch` when
    ``voxel_size`` (per spatial axis of ``config.axes``) is anisotropic; then each size is at most
    the volume's extent along its axis rounded down to a multiple of ``2**depth``, so images
    smaller than the default patch train whole. ``shape``: the volume's, in ``config.axes`` order.
    """
    if config.patch is not None:
        return config
    patch = config.patch_shape
    if config.net_axes == "ZYX" and voxel_size is not None and len(voxel_size) == 3:
        patch = anisotropic_patch(tuple(voxel_size), config.net.depth) or patch
    factor = 2**config.net.depth
    extent = [n for a, n in zip(config.axes, shape) if a in config.net_axes]
    patch = tuple(p if n >= p else max(factor, n // factor * factor) for p, n in zip(patch, extent))
    return config if patch == config.patch_shape else config.model_copy(update={"patch": patch})


def make_config(**kwargs: Any) -> TrainConfig:
    """A TrainConfig, or a ConfigError whose message lists every invalid option."""
    try:
        return TrainConfig(**kwargs)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'config'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid training configuration: {problems}") from None
