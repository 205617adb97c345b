"""One typed config for an IIC training run, with a YAML round trip and validation.

Every field is a plain value so that a config is at once a YAML file, a set of search parameters
and a set of MLflow params. ``validate()`` runs before any compute and reports every problem at once,
each naming the field and the fix.
"""

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path

import yaml

from iic.data import DATASETS, DatasetError, check_dataset_source
from iic.models import BACKBONES, MIN_INPUT_SIZE, RESNET_SMALL_STEM_BELOW
from iic.pretrained import IMAGENET, IMAGENET_WEIGHTS, WeightsError, fetch_imagenet_weights

DEVICES = ("auto", "cpu", "cuda")


class ConfigError(ValueError):
    """A config that cannot be trained; the message lists every problem and how to fix it, and
    ``problems`` holds them one by one (a single-message error is its own one problem)."""

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = list(problems) if problems is not None else [message]

    @classmethod
    def listing(cls, problems: list[str]) -> "ConfigError":
        return cls("invalid config:\n  " + "\n  ".join(problems), problems)

    def __reduce__(self):
        # Rebuilt with its problems when pickled (a Ray trial's error travels to the driver).
        return type(self), (str(self), self.problems)


@dataclass
class IICConfig:
    # Data: which images, decoded once at this square size. Labels are used for evaluation only.
    dataset: str = "digits"
    data_root: str | None = None
    split: str = "train"
    input_size: int = 16
    greyscale: bool = False
    class_map: dict[str, str] | None = None  # original class -> new class; unlisted classes dropped
    max_samples: int | None = None
    download: bool = False

    # Model: backbone, optional Sobel preprocessing, heads.
    backbone: str = "clusternet"
    backbone_width: int = 16  # ClusterNet's first stage width
    # ResNets: "imagenet" (torchvision's, downloaded once into torch's cache; see iic/pretrained.py),
    # a local state-dict file of the same, or null for random weights.
    backbone_weights: str | None = None
    freeze_backbone: bool = False  # train the heads only, on the pretrained backbone's features
    sobel: bool = False
    sobel_keep_input: bool = False
    num_clusters: int = 10
    overcluster_k: int = 0  # 0 = no overclustering head
    num_subheads: int = 5

    # Objective and schedule: each epoch runs the overclustering head, then the main head, each for
    # the given number of passes over the data.
    lamb: float = 1.3  # > 1 favours balanced clusters; 1.3 was steadier than 1.0 on digits
    lr: float = 3e-3
    batch_size: int = 64  # images per step, before repeats
    repeats: int = 4  # augmented twins per image in a step
    augment_both_views: bool = False  # also augment the image paired with its twins
    epochs: int = 45
    overcluster_passes: int = 1
    main_passes: int = 1
    seed: int = 0

    # Augmentation strengths (see iic.augment.BatchAugment); 0 = off, crop_min_scale 1.0 = off.
    crop_min_scale: float = 0.5
    hflip_prob: float = 0.0
    vflip_prob: float = 0.0
    rotation_degrees: float = 15.0
    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.0
    hue: float = 0.0

    # Runtime.
    device: str = "auto"  # auto = CUDA when present, else CPU
    amp: bool = True  # bfloat16 autocast on CUDA; ignored on CPU
    eval_batch_size: int = 1024

    AUGMENT_FIELDS: typing.ClassVar[tuple[str, ...]] = (
        "crop_min_scale", "hflip_prob", "vflip_prob", "rotation_degrees", "brightness", "contrast", "saturation", "hue",
    )
    # Fields that may differ between a checkpoint and the config resuming it.
    RESUMABLE_CHANGES: typing.ClassVar[tuple[str, ...]] = ("epochs", "device", "amp", "eval_batch_size", "download")

    # ---- construction -------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, values: dict) -> "IICConfig":
        """Build from a plain dict, rejecting unknown keys and values of the wrong type."""
        if not isinstance(values, dict):
            raise ConfigError(f"a config must be a mapping of field: value, got {type(values).__name__}")
        names = {f.name: f for f in dataclasses.fields(cls)}
        problems = []
        coerced = {}
        for key, value in values.items():
            if key not in names:
                close = difflib.get_close_matches(key, names, n=1)
                problems.append(f"{key}: unknown field" + (f" — did you mean {close[0]!r}?" if close else f"; valid fields: {', '.join(names)}"))
                continue
            try:
                coerced[key] = _coerce(value, names[key].type)
            except TypeError as err:
                problems.append(f"{key}: {err}")
        if problems:
            raise ConfigError.listing(problems)
        return cls(**coerced)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "IICConfig":
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist: pass the path of a YAML config (see configs/)")
        values = read_yaml(path) or {}
        try:
            return cls.from_dict(values)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}", err.problems) from None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as handle:
            yaml.safe_dump(self.to_dict(), handle, sort_keys=False)
        return path

    def replace(self, **changes) -> "IICConfig":
        """A copy with some fields changed, type-checked like a loaded file."""
        return type(self).from_dict({**self.to_dict(), **changes})

    def with_overrides(self, assignments: list[str]) -> "IICConfig":
        """Apply ``key=value`` strings (values parsed as YAML: ``lr=1e-3``, ``sobel=true``)."""
        changes = {}
        for assignment in assignments:
            key, sep, raw = assignment.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"--set {assignment!r}: expected key=value, e.g. --set lr=0.001")
            try:
                changes[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
            except yaml.YAMLError as err:
                raise ConfigError(f"--set {assignment!r}: the value is not valid YAML ({_yaml_problem(err)})") from None
        return self.replace(**changes)

    def with_absolute_paths(self, base: str | Path = ".") -> "IICConfig":
        """The config with a relative ``data_root`` / ``backbone_weights`` made absolute against
        ``base``: the processes that train (Ray Tune trials) run in folders of their own."""
        changes = {name: str((Path(base) / getattr(self, name)).resolve())
                   for name in ("data_root", "backbone_weights")
                   if getattr(self, name) not in (None, IMAGENET) and not Path(getattr(self, name)).is_absolute()}
        return self.replace(**changes) if changes else self

    def augment_kwargs(self) -> dict:
        return {name: getattr(self, name) for name in self.AUGMENT_FIELDS}

    # ---- validation ---------------------------------------------------------------------------

    def validate(self, check_data: bool = True) -> "IICConfig":
        """Raise ConfigError listing every problem, each with its fix; returns self when valid.
        ``check_data`` also checks that the dataset's files exist (cheap, nothing is decoded) and
        that ImageNet weights are in torch's cache, downloading them if not: offline, a missing
        file is reported here rather than after the data is decoded."""
        problems = []

        def require(ok: bool, message: str):
            if not ok:
                problems.append(message)

        require(self.dataset in DATASETS, f"dataset: unknown dataset {self.dataset!r}; choose one of {', '.join(DATASETS)}")
        require(self.backbone in BACKBONES, f"backbone: unknown backbone {self.backbone!r}; choose one of {', '.join(BACKBONES)}")
        require(self.num_clusters >= 2, f"num_clusters: must be at least 2 (got {self.num_clusters}); set it to the number of classes you expect")
        require(
            self.overcluster_k == 0 or self.overcluster_k > self.num_clusters,
            f"overcluster_k: must exceed num_clusters={self.num_clusters} (got {self.overcluster_k}); "
            f"the paper uses 3-10x the classes, or set 0 to switch overclustering off",
        )
        require(self.num_subheads >= 1, f"num_subheads: must be at least 1 (got {self.num_subheads}); the paper uses 5")
        require(self.lr > 0, f"lr: must be positive (got {self.lr}); try 1e-4 (paper, large data) to 3e-3 (small data)")
        require(self.lamb > 0, f"lamb: must be positive (got {self.lamb}); 1.0 is plain mutual information")
        require(self.batch_size >= 2, f"batch_size: must be at least 2 (got {self.batch_size}); the joint distribution needs a batch")
        require(self.repeats >= 1, f"repeats: must be at least 1 (got {self.repeats})")
        require(self.epochs >= 1, f"epochs: must be at least 1 (got {self.epochs})")
        require(self.overcluster_passes >= 0 and self.main_passes >= 1, "overcluster_passes must be >= 0 and main_passes >= 1 (passes over the data per epoch)")
        require(self.eval_batch_size >= 1, f"eval_batch_size: must be at least 1 (got {self.eval_batch_size})")
        require(self.max_samples is None or self.max_samples >= 2, f"max_samples: must be at least 2 or null for all (got {self.max_samples})")
        for name in ("hflip_prob", "vflip_prob"):
            value = getattr(self, name)
            require(0 <= value <= 1, f"{name}: a probability must lie in [0, 1] (got {value})")
        require(0 < self.crop_min_scale <= 1, f"crop_min_scale: must lie in (0, 1] (got {self.crop_min_scale}); 1.0 switches cropping off")
        require(0 <= self.rotation_degrees <= 180, f"rotation_degrees: must lie in [0, 180] (got {self.rotation_degrees})")
        for name in ("brightness", "contrast", "saturation"):
            value = getattr(self, name)
            require(0 <= value <= 1, f"{name}: jitter strength must lie in [0, 1] (got {value}); 0 switches it off")
        require(0 <= self.hue <= 0.5, f"hue: must lie in [0, 0.5] turns of the colour wheel (got {self.hue})")
        if self.backbone in MIN_INPUT_SIZE:
            minimum = MIN_INPUT_SIZE[self.backbone]
            require(self.input_size >= minimum, f"input_size: {self.input_size} px is too small for {self.backbone}; use at least {minimum}")
        require(
            self.device in DEVICES or self.device.startswith("cuda:"),
            f"device: {self.device!r} is not one of {', '.join(DEVICES)} (or cuda:N)",
        )
        if self.backbone_weights is not None:
            resnets = " or ".join(IMAGENET_WEIGHTS)
            require(self.backbone in IMAGENET_WEIGHTS, f"backbone_weights: only {resnets} load weights; set backbone: {resnets}, or backbone_weights: null")
            if self.backbone_weights != IMAGENET:
                require(os.path.isfile(self.backbone_weights),
                        f"backbone_weights: file {self.backbone_weights} does not exist; give a local state-dict file, {IMAGENET}, or null")
            elif check_data and self.backbone in IMAGENET_WEIGHTS:
                try:
                    fetch_imagenet_weights(self.backbone)
                except WeightsError as err:
                    problems.append(f"backbone_weights: {err}")
            require(not self.sobel, "sobel: pretrained weights read RGB images, and Sobel replaces them with 2 gradient channels; "
                                    "set sobel: false, or backbone_weights: null to train from scratch with Sobel")
        if self.freeze_backbone:
            require(self.backbone_weights is not None, f"freeze_backbone: a frozen backbone without pretrained weights stays random; "
                                                       f"set backbone_weights: {IMAGENET} (or a state-dict file), or freeze_backbone: false")
            require(self.input_size >= RESNET_SMALL_STEM_BELOW,
                    f"freeze_backbone: below {RESNET_SMALL_STEM_BELOW} px (input_size: {self.input_size}) ResNet's first layer is a new 3x3 stem "
                    f"the weights do not hold, which frozen would stay random; set input_size: {RESNET_SMALL_STEM_BELOW} or more "
                    f"(images are resized when decoded), or freeze_backbone: false")
        if check_data and self.dataset in DATASETS:
            try:
                check_dataset_source(self.dataset, self.data_root, self.split)
            except DatasetError as err:
                problems.append(f"data_root: {err}")
        if problems:
            raise ConfigError.listing(problems)
        return self


def read_yaml(path: str | Path, error: type[ValueError] = ConfigError):
    """The document in the YAML file ``path``. A syntax error raises ``error`` (ConfigError, or the
    caller's own error type) as ``FILE line L column C: problem``, which the CLIs print as
    ``error: ...`` with exit code 2 instead of a parser traceback."""
    with open(path) as handle:
        try:
            return yaml.safe_load(handle)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            if mark is None:  # errors without a position, such as a forbidden character
                raise error(f"{path}: {err}") from None
            # yaml counts lines and columns from 0; editors count from 1.
            raise error(f"{path} line {mark.line + 1} column {mark.column + 1}: {_yaml_problem(err)}") from None


def _yaml_problem(err: yaml.YAMLError) -> str:
    return getattr(err, "problem", None) or str(err)


def _coerce(value, annotation):
    """Check ``value`` against a field annotation; ints are accepted where floats are expected."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option)
            except TypeError as err:
                errors.append(str(err))
        raise TypeError("; ".join(errors))
    if origin is dict:
        if not isinstance(value, dict):
            raise TypeError(f"expected a mapping, got {value!r}")
        key_type, value_type = typing.get_args(annotation)
        return {_coerce(k, key_type): _coerce(v, value_type) for k, v in value.items()}
    if annotation is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if annotation is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # class names such as 0..9 read from YAML as numbers
    if annotation in (int, bool, str) and type(value) is annotation:
        return value
    raise TypeError(f"expected {getattr(annotation, '__name__', annotation)}, got {value!r}")
