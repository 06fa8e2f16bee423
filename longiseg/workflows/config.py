"""The experiment configuration: one YAML/JSON file that maps onto model, data, loss, trainer and inference
dataclasses, overridable from the command line with dotted ``key=value`` strings.

Example (the gist of ``examples/configs/ms_inhouse_2.5d.yaml``)::

    model: {name: segmast_ms}
    data: {root: data/ms_inhouse/train, modalities: [flair, t2], crop_size: 128}
    loss: {strategy: partial}
    trainer: {max_epochs: 500, output_dir: runs/ms_inhouse/segmast_ms}
    inference: {patch_size: 128, min_lesion_mm3: 27}

and ``longiseg train examples/configs/ms_inhouse_2.5d.yaml --set trainer.max_epochs=10 loss.strategy=whole``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from longiseg.data.case import PLANES
from longiseg.data.dataset import MAX_SAMPLES_PER_EPOCH
from longiseg.engine.config import ConfigBase, ConfigError, TrainerConfig
from longiseg.inferers.settings import InferenceConfig, check_planes, check_window_setting
from longiseg.losses.imbalance import STRATEGIES
from longiseg.spec import plain_data
from longiseg.utils.config import require, require_seed
from longiseg.utils.io import expand_home

__all__ = ["ModelConfig", "DataConfig", "LossConfig", "InferenceConfig", "ExperimentConfig"]

@dataclasses.dataclass
class ModelConfig(ConfigBase):
    """Which registry model to build and with which factory keyword arguments.

    Attributes:
        name: registry name (``longiseg models`` lists them).
        kwargs: passed to the factory, e.g. ``{"in_channels": 2, "num_timepoints": 2}``.
    """

    name: str = "segmast_ms"
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.coerce_fields()  # built directly, checked as when read from a file
        require(bool(self.name), "ModelConfig", "name must be a registry model name")
        try:  # NumPy numbers and arrays become the built-ins a config file (and a checkpoint) can hold
            self.kwargs = plain_data(self.kwargs, "model.kwargs")
        except TypeError as err:
            raise ConfigError(f"ModelConfig: {err}") from None


@dataclasses.dataclass
class DataConfig(ConfigBase):
    """Training data: a cohort folder in the library layout and how samples are drawn from it.

    Attributes:
        root: cohort folder (see :mod:`longiseg.data.layout`).
        val_root: separate validation cohort; ``None`` splits ``root`` by patient.
        val_fraction: share of patients held out for validation when ``val_root`` is ``None``.
        modalities: channel order, e.g. ``["flair", "t2"]``; ``None`` uses the manifest's.
        crop_size: in-plane crop of 2.5D samples (paper: 128 in-house MS, 80 MSSEG-2, 160 glioma) or
            the patch of 3D samples: one edge, or one per spatial axis (``[h, w]`` for 2.5D, ``[d, h, w]``
            for 3D, e.g. a thinner patch across thick slices). A 2.5D ``[h, w]`` applies to every plane's
            slice: ``h`` along the first of its two remaining array axes, ``w`` along the second.
        planes: planes of 2.5D cross-view sampling.
        lesion_weight: probability that a crop is centred on a lesion voxel (weighted patch sampling).
        progression_share: share of the lesion-centred crops of a progressing case that are centred on its
            new/enlarging lesions rather than its baseline lesions.
        persisting_share: share of the lesion-centred training crops centred on persisting baseline lesions
            (lesions that touch no new/enlarging voxel), hard negatives whose progression target is usually
            empty (default 0, the paper's sampling; validation samples never use it, so runs stay comparable).
        samples_per_epoch: samples per epoch (default ``32 * number of training cases``). Sample ``i`` has the
            class of case ``i % number of cases``; when this is not a multiple of the number of cases (or is
            smaller), each class's samples go round its cases over the epochs, so every case is drawn
            (:meth:`~longiseg.data.SliceDataset.case_of`).
        positive_fraction: share of progressing cases in every batch (balanced batch sampler); the training
            split needs progressing and stable patients.
        val_samples: fixed validation samples drawn once from the validation cases, in turn (fewer samples than
            cases leave cases unscored, with a warning; when not a multiple of their number, the first cases get
            one sample more).
        augment: random flips and rotations (:class:`~longiseg.data.transforms.LongitudinalAugment`, the same
            for every timepoint of a sample).
        augment_independent_timepoints: with ``augment``, add scan-to-scan differences drawn per timepoint
            (gain, bias field, noise, sub-voxel misregistration of the follow-up;
            :class:`~longiseg.data.transforms.TimepointVariation`); default off (the paper's augmentation).
        crop_to_foreground: crop every case to the joint non-zero box before sampling.
        cache_size: cases kept in memory per process.
        seed: seed of the split and of all sampling.
    """

    root: str = ""
    val_root: str | None = None
    val_fraction: float = 0.2
    modalities: list[str] | None = None
    crop_size: int | list[int] = 128
    planes: list[str] = dataclasses.field(default_factory=lambda: list(PLANES))
    lesion_weight: float = 0.5
    progression_share: float = 0.5
    persisting_share: float = 0.0
    samples_per_epoch: int | None = None
    positive_fraction: float = 0.5
    val_samples: int = 64
    augment: bool = True
    augment_independent_timepoints: bool = False
    crop_to_foreground: bool = False
    cache_size: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        self.coerce_fields()  # built directly, checked as when read from a file
        self.root = expand_home(self.root)  # "~/data" is the user's folder, not a folder named "~"
        self.val_root = expand_home(self.val_root)
        require(0.0 <= self.val_fraction < 1.0, "DataConfig",
                f"val_fraction must be in [0, 1), got {self.val_fraction}")
        check_window_setting(self.crop_size, "DataConfig", "crop_size", minimum=8)
        require(self.modalities is None or len(self.modalities) > 0, "DataConfig",
                "modalities (data.modalities) must name at least one channel, or be null for the manifest's order; "
                "got []")
        check_planes(self.planes, "DataConfig")
        require(0.0 <= self.lesion_weight <= 1.0, "DataConfig",
                f"lesion_weight must be in [0, 1], got {self.lesion_weight}")
        require(0.0 <= self.progression_share <= 1.0, "DataConfig",
                f"progression_share must be in [0, 1], got {self.progression_share}")
        require(0.0 <= self.persisting_share <= 1.0, "DataConfig",
                f"persisting_share must be in [0, 1], got {self.persisting_share}")
        require(self.augment or not self.augment_independent_timepoints, "DataConfig",
                "augment_independent_timepoints needs augment=true")
        require(0.0 < self.positive_fraction < 1.0, "DataConfig",
                f"positive_fraction must be in (0, 1), got {self.positive_fraction}")
        require(self.val_samples >= 1, "DataConfig", f"val_samples must be >= 1, got {self.val_samples}")
        require(self.samples_per_epoch is None or 1 <= self.samples_per_epoch <= MAX_SAMPLES_PER_EPOCH, "DataConfig",
                f"samples_per_epoch (data.samples_per_epoch) must be between 1 and {MAX_SAMPLES_PER_EPOCH:,} or null, "
                f"got {self.samples_per_epoch}")
        require(self.cache_size >= 1, "DataConfig", f"cache_size (data.cache_size) must be >= 1, got {self.cache_size}")
        require_seed(self.seed, "DataConfig", "seed (data.seed)")


@dataclasses.dataclass
class LossConfig(ConfigBase):
    """The imbalance-aware Dice-Focal objective.

    Attributes:
        strategy: ``"partial"`` (paper), ``"whole"`` or ``"none"``.
        empty_ratio: stable samples kept per progressing sample (``partial``).
        min_empty: stable samples kept when a batch has no progression (``partial``).
        lambda_dice: weight of the Dice term.
        lambda_focal: weight of the focal term.
        gamma: focal exponent.
        seed: seed of the random subset of stable samples.
        keep_hard_negatives: keep every empty-progression sample the sampler flags ``hard_negative`` (crops
            centred on persisting baseline lesions, ``data.persisting_share``) instead of letting the
            ``partial`` strategy drop it with the other stable samples (default off, the paper's loss).
        progression_outside_baseline: train the progression head through the logit of
            ``p_prog (1 - p_base)``, the probability that inference thresholds, so its loss also reaches the
            baseline head (default off, the paper's loss; an ablation candidate).

    Samples without a baseline annotation (MSSEG-2) never enter the baseline term, whatever these settings.
    """

    strategy: str = "partial"
    empty_ratio: float = 1.0
    min_empty: int = 1
    lambda_dice: float = 1.0
    lambda_focal: float = 1.0
    gamma: float = 2.0
    seed: int = 0
    keep_hard_negatives: bool = False
    progression_outside_baseline: bool = False

    def __post_init__(self) -> None:
        self.coerce_fields()  # built directly, checked as when read from a file
        require(self.strategy in STRATEGIES, "LossConfig",
                f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        require_seed(self.seed, "LossConfig", "seed (loss.seed)")
        # checked when the experiment is read (not when the loss is built, after the model and the data)
        for key in ("empty_ratio", "lambda_dice", "lambda_focal", "gamma"):
            value = getattr(self, key)
            require(0.0 <= value < math.inf, "LossConfig",
                    f"{key} (loss.{key}) must be a finite float >= 0, got {value}")
        require(self.min_empty >= 0, "LossConfig",
                f"min_empty (loss.min_empty) must be an int >= 0, got {self.min_empty}")
        require(self.lambda_dice > 0 or self.lambda_focal > 0, "LossConfig",
                "lambda_dice and lambda_focal are both 0: the loss would be 0 and nothing would be trained; "
                "give at least one of them a weight > 0")


@dataclasses.dataclass
class ExperimentConfig(ConfigBase):
    """Everything one training run needs: ``model``, ``data``, ``loss``, ``trainer``, ``inference``."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    trainer: TrainerConfig = dataclasses.field(default_factory=TrainerConfig)
    inference: InferenceConfig = dataclasses.field(default_factory=InferenceConfig)

    def __post_init__(self) -> None:
        self.coerce_fields()  # a section given as a mapping is built like one read from a file
