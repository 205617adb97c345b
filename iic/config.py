"""One typed config for an IIC training run, with a YAML round trip and validation.

Every field is a plain value so that a config is at once a YAML file, a set of search parameters
and a set of MLflow params. ``validate()`` runs before any compute and reports every problem at once,
each naming the field and the fix.

A few fields may change while a run trains (``SCHEDULABLE_FIELDS``: the augmentation strengths, lr
and lamb). ``schedule`` lists such changes, ``[{epoch: E, values: {field: value, ...}}, ...]``: from
epoch E on, those fields take those values. Population-based training writes one (each exploit
of another trial's checkpoint continues it with new values); a run given one replays it.
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
# torch.compile's modes, and "off" (eager).
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")  # those of COMPILE_MODES that replay CUDA graphs


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
    # Twins are views of the image or of one of its twin_neighbours nearest neighbours (cosine, in
    # pixels or the pretrained backbone's features: iic/neighbours.py), drawn uniformly. 0 = itself only.
    twin_neighbours: int = 0
    epochs: int = 45
    overcluster_passes: int = 1
    main_passes: int = 1
    # SCAN's self-labelling (iic/self_label.py): the last self_label_epochs of the epochs train the
    # main head on its own confident assignments (probability > self_label_threshold) instead of
    # IIC's loss, and skip the overclustering head. 0 = off.
    self_label_epochs: int = 0
    self_label_threshold: float = 0.99
    seed: int = 0
    # Each seed starts from screen_inits initialisations (the seed and seeds drawn from it, trained
    # side by side); after screen_epochs epochs the one with the highest held-out mutual information
    # trains on alone. A failing seed shows by then (README, Results). 1 = off.
    screen_inits: int = 1
    screen_epochs: int = 10
    # An earlier cut, as successive halving does (Ray Tune's ASHA, here within one run): after
    # screen_cut_epochs epochs each seed keeps its screen_cut_keep initialisations with the highest
    # held-out MI, which train on to the pick at screen_epochs. 0 = no earlier cut.
    screen_cut_epochs: int = 0
    screen_cut_keep: int = 2

    # Augmentation strengths (see iic.augment.BatchAugment); 0 = off, crop_min_scale 1.0 = off.
    crop_min_scale: float = 0.5
    hflip_prob: float = 0.0
    vflip_prob: float = 0.0
    rotation_degrees: float = 15.0
    shear_degrees: float = 0.0
    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.0
    hue: float = 0.0

    # Runtime.
    device: str = "auto"  # auto = CUDA when present, else CPU
    amp: bool = True  # bfloat16 autocast on CUDA; ignored on CPU
    eval_batch_size: int = 1024
    # Speed only (the same training, up to floating-point noise; measured by benchmarks/gpu_packing.py):
    # channels-last (NHWC) convolutions, and torch.compile of the training forward pass, one of
    # COMPILE_MODES ("reduce-overhead" replays it as CUDA graphs: fewer kernel launches on a GPU).
    channels_last: bool = False
    compile_mode: str = "off"

    # Changes of SCHEDULABLE_FIELDS while the run trains: [{"epoch": E, "values": {field: value}}, ...],
    # epochs increasing; from epoch E on the fields take those values. None: the fields never change.
    schedule: list[dict] | None = None

    AUGMENT_FIELDS: typing.ClassVar[tuple[str, ...]] = (
        "crop_min_scale",
        "hflip_prob",
        "vflip_prob",
        "rotation_degrees",
        "shear_degrees",
        "brightness",
        "contrast",
        "saturation",
        "hue",
    )
    # Fields that may change while a run trains (they shape neither the model nor the data): the
    # values in force are set at the start of every epoch.
    SCHEDULABLE_FIELDS: typing.ClassVar[tuple[str, ...]] = (*AUGMENT_FIELDS, "lr", "lamb")
    # Fields that may differ between a checkpoint and the config resuming it (the schedulable fields
    # may too: they then change from the restored epoch on, see ``continuing``; the self-labelling
    # fields only where no epoch trained has self-labelled otherwise, see ``self_labelling_changes``).
    RESUMABLE_CHANGES: typing.ClassVar[tuple[str, ...]] = (
        "epochs",
        "device",
        "amp",
        "eval_batch_size",
        "download",
        "channels_last",
        "compile_mode",
        "self_label_epochs",
        "self_label_threshold",
    )

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
                problems.append(
                    f"{key}: unknown field"
                    + (f" — did you mean {close[0]!r}?" if close else f"; valid fields: {', '.join(names)}")
                )
                continue
            try:
                coerced[key] = _coerce_schedule(value) if key == "schedule" else _coerce(value, names[key].type)
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
        changes = {
            name: str((Path(base) / getattr(self, name)).resolve())
            for name in ("data_root", "backbone_weights")
            if getattr(self, name) not in (None, IMAGENET) and not Path(getattr(self, name)).is_absolute()
        }
        return self.replace(**changes) if changes else self

    def model_epochs(self, through: int | None = None) -> int:
        """What a seed costs, in epochs of one model, through epoch ``through`` (default: all its
        epochs): screening's initialisations each count while they train."""
        return sum(self.models_training(epoch) for epoch in range(1, (self.epochs if through is None else through) + 1))

    def models_training(self, epoch: int) -> int:
        """How many models of a seed train in ``epoch``: its initialisations until screening's cuts."""
        if self.screen_inits == 1 or epoch > self.screen_epochs:
            return 1
        return self.screen_cut_keep if self.screen_cut_epochs and epoch > self.screen_cut_epochs else self.screen_inits

    def augment_kwargs(self, epoch: int = 1) -> dict:
        """BatchAugment's arguments for ``epoch``."""
        return {name: value for name, value in self.values_at(epoch).items() if name in self.AUGMENT_FIELDS}

    # ---- schedule -----------------------------------------------------------------------------

    def values_at(self, epoch: int) -> dict:
        """The schedulable fields' values in force during ``epoch`` (counted from 1)."""
        values = {name: getattr(self, name) for name in self.SCHEDULABLE_FIELDS}
        for entry in self.schedule or []:
            if entry["epoch"] <= epoch:
                values.update(entry["values"])
        return values

    def continuing(self, saved: "IICConfig", epoch: int) -> "IICConfig":
        """This config continuing a run of ``saved`` that has trained ``epoch`` epochs: those epochs
        keep the values ``saved`` gave them, and this config's values (where they differ) take over
        from epoch + 1, as a schedule entry. The result replays the whole run. Fields other than the
        schedulable ones are this config's (the caller checks they may differ from ``saved``'s)."""
        entries = [entry for entry in saved.schedule or [] if entry["epoch"] <= min(epoch, self.epochs)]
        before, after = saved.values_at(epoch), self.values_at(epoch + 1)
        changed = {name: value for name, value in after.items() if value != before[name]}
        if changed and epoch < self.epochs:
            entries.append({"epoch": epoch + 1, "values": changed})
        entries += [entry for entry in self.schedule or [] if entry["epoch"] > epoch + 1]
        first = {name: getattr(saved, name) for name in self.SCHEDULABLE_FIELDS}
        return self.replace(**first, schedule=entries or None)

    def full_schedule(self) -> list[dict]:
        """The schedule on its own: every schedulable field's value from epoch 1, then the changes
        (``with_schedule`` puts it back into a config whatever that config's own values)."""
        return [
            {"epoch": 1, "values": self.values_at(1)},
            *[entry for entry in self.schedule or [] if entry["epoch"] > 1],
        ]

    def with_schedule(self, schedule: list[dict]) -> "IICConfig":
        """This config following ``schedule``: an entry at epoch 1 sets the fields themselves, the
        later entries become the config's schedule."""
        schedule = _coerce_schedule(schedule)
        first = schedule[0]["values"] if schedule and schedule[0]["epoch"] == 1 else {}
        later = [entry for entry in schedule if entry["epoch"] > 1]
        return self.replace(**first, schedule=later or None)

    def truncated(self, epochs: int) -> "IICConfig":
        """The config of this run stopped after ``epochs`` epochs: changes due later are dropped."""
        kept = [entry for entry in self.schedule or [] if entry["epoch"] <= epochs]
        return self.replace(
            epochs=epochs,
            schedule=kept or None,
            self_label_epochs=self.self_label_epochs_within(epochs),
            **self._screening_within(epochs),
        )

    def _screening_within(self, epochs: int) -> dict:
        """Screening of a run stopped after ``epochs`` epochs: one stopped while screening reported
        each seed's initialisation with the highest held-out MI then, as a pick at its last epoch
        does, and had cut only if the cut came before that epoch."""
        if self.screen_inits == 1 or epochs > self.screen_epochs:
            return {}
        return {
            "screen_epochs": epochs,
            "screen_cut_epochs": self.screen_cut_epochs if self.screen_cut_epochs < epochs else 0,
        }

    def self_label_epochs_within(self, epochs: int) -> int:
        """How many of the first ``epochs`` epochs self-label (the last ``self_label_epochs`` of ``self.epochs`` do)."""
        return max(0, epochs - (self.epochs - self.self_label_epochs))

    def self_labels_at(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` (1-based) trains by self-labelling rather than IIC's loss."""
        return epoch > self.epochs - self.self_label_epochs

    def self_labelling_changes(self, saved: "IICConfig", trained: int) -> list[str]:
        """How this config would rewrite the self-labelling of the ``trained`` epochs of a run of
        ``saved`` (the self-labelling fields may change on resume only where those epochs stay as they were)."""
        epochs = range(1, trained + 1)
        if any(saved.self_labels_at(epoch) != self.self_labels_at(epoch) for epoch in epochs):
            return [
                f"which of the {trained} epochs trained self-labelled (epochs and self_label_epochs "
                f"{saved.epochs}, {saved.self_label_epochs} there; {self.epochs}, {self.self_label_epochs} here)"
            ]
        if any(map(saved.self_labels_at, epochs)) and saved.self_label_threshold != self.self_label_threshold:
            return [
                f"self_label_threshold, after self-labelled epochs ({saved.self_label_threshold} there, {self.self_label_threshold} here)"
            ]
        return []

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

        require(
            self.dataset in DATASETS, f"dataset: unknown dataset {self.dataset!r}; choose one of {', '.join(DATASETS)}"
        )
        require(
            self.backbone in BACKBONES,
            f"backbone: unknown backbone {self.backbone!r}; choose one of {', '.join(BACKBONES)}",
        )
        require(
            self.num_clusters >= 2,
            f"num_clusters: must be at least 2 (got {self.num_clusters}); set it to the number of classes you expect",
        )
        require(
            self.overcluster_k == 0 or self.overcluster_k > self.num_clusters,
            f"overcluster_k: must exceed num_clusters={self.num_clusters} (got {self.overcluster_k}); "
            f"the paper uses 3-10x the classes, or set 0 to switch overclustering off",
        )
        require(self.num_subheads >= 1, f"num_subheads: must be at least 1 (got {self.num_subheads}); the paper uses 5")
        require(
            self.batch_size >= 2,
            f"batch_size: must be at least 2 (got {self.batch_size}); the joint distribution needs a batch",
        )
        require(self.repeats >= 1, f"repeats: must be at least 1 (got {self.repeats})")
        require(
            self.twin_neighbours >= 0,
            f"twin_neighbours: must be 0 (twins of the image itself) or more (got {self.twin_neighbours}); SCAN uses 5-20",
        )
        require(self.epochs >= 1, f"epochs: must be at least 1 (got {self.epochs})")
        require(
            self.screen_inits >= 1,
            f"screen_inits: must be at least 1 (got {self.screen_inits}); 1 trains each seed's own initialisation alone",
        )
        require(
            self.screen_inits == 1 or 1 <= self.screen_epochs <= self.epochs,
            f"screen_epochs: must be from 1 to epochs = {self.epochs} (got {self.screen_epochs}): after it only the kept "
            "initialisation trains (at the last epoch: the best of them at the end); or set screen_inits: 1",
        )
        require(
            self.screen_cut_epochs >= 0,
            f"screen_cut_epochs: must be 0 (no earlier cut) or more (got {self.screen_cut_epochs})",
        )
        if self.screen_inits > 1 and self.screen_cut_epochs:
            require(
                self.screen_cut_epochs < self.screen_epochs,
                f"screen_cut_epochs: must be below screen_epochs = {self.screen_epochs} (got {self.screen_cut_epochs}): "
                "the cut comes before the pick; or set screen_cut_epochs: 0",
            )
            require(
                2 <= self.screen_cut_keep < self.screen_inits,
                f"screen_cut_keep: must be from 2 to screen_inits - 1 = {self.screen_inits - 1} (got {self.screen_cut_keep}): "
                "the cut keeps fewer than it screens and more than the pick; or set screen_cut_epochs: 0",
            )
        require(
            0 <= self.self_label_epochs < self.epochs,
            f"self_label_epochs: must be from 0 to epochs - 1 = {self.epochs - 1} (got {self.self_label_epochs}): "
            "self-labelling needs IIC's clusters to start from",
        )
        require(
            0 < self.self_label_threshold < 1,
            f"self_label_threshold: must be between 0 and 1, exclusive (got {self.self_label_threshold}); SCAN uses 0.99",
        )
        require(
            self.overcluster_passes >= 0 and self.main_passes >= 1,
            "overcluster_passes must be >= 0 and main_passes >= 1 (passes over the data per epoch)",
        )
        require(self.eval_batch_size >= 1, f"eval_batch_size: must be at least 1 (got {self.eval_batch_size})")
        require(
            self.compile_mode in COMPILE_MODES,
            f"compile_mode: {self.compile_mode!r} is not one of {', '.join(COMPILE_MODES)} (off: no torch.compile)",
        )
        require(
            self.max_samples is None or self.max_samples >= 2,
            f"max_samples: must be at least 2 or null for all (got {self.max_samples})",
        )
        problems += schedulable_problems({name: getattr(self, name) for name in self.SCHEDULABLE_FIELDS})
        problems += self._schedule_problems()
        if self.backbone in MIN_INPUT_SIZE:
            minimum = MIN_INPUT_SIZE[self.backbone]
            require(
                self.input_size >= minimum,
                f"input_size: {self.input_size} px is too small for {self.backbone}; use at least {minimum}",
            )
        require(
            self.device in DEVICES or self.device.startswith("cuda:"),
            f"device: {self.device!r} is not one of {', '.join(DEVICES)} (or cuda:N)",
        )
        if self.backbone_weights is not None:
            resnets = " or ".join(IMAGENET_WEIGHTS)
            require(
                self.backbone in IMAGENET_WEIGHTS,
                f"backbone_weights: only {resnets} load weights; set backbone: {resnets}, or backbone_weights: null",
            )
            if self.backbone_weights != IMAGENET:
                require(
                    os.path.isfile(self.backbone_weights),
                    f"backbone_weights: file {self.backbone_weights} does not exist; give a local state-dict file, {IMAGENET}, or null",
                )
            elif check_data and self.backbone in IMAGENET_WEIGHTS:
                try:
                    fetch_imagenet_weights(self.backbone)
                except WeightsError as err:
                    problems.append(f"backbone_weights: {err}")
            require(
                not self.sobel,
                "sobel: pretrained weights read RGB images, and Sobel replaces them with 2 gradient channels; "
                "set sobel: false, or backbone_weights: null to train from scratch with Sobel",
            )
        if self.freeze_backbone:
            require(
                self.backbone_weights is not None,
                f"freeze_backbone: a frozen backbone without pretrained weights stays random; "
                f"set backbone_weights: {IMAGENET} (or a state-dict file), or freeze_backbone: false",
            )
            require(
                self.input_size >= RESNET_SMALL_STEM_BELOW,
                f"freeze_backbone: below {RESNET_SMALL_STEM_BELOW} px (input_size: {self.input_size}) ResNet's first layer is a new 3x3 stem "
                f"the weights do not hold, which frozen would stay random; set input_size: {RESNET_SMALL_STEM_BELOW} or more "
                f"(images are resized when decoded), or freeze_backbone: false",
            )
        if check_data and self.dataset in DATASETS:
            try:
                check_dataset_source(self.dataset, self.data_root, self.split)
            except DatasetError as err:
                problems.append(f"data_root: {err}")
        if problems:
            raise ConfigError.listing(problems)
        return self

    def _schedule_problems(self) -> list[str]:
        if self.schedule is None:
            return []
        problems, previous = [], 0
        allowed = ", ".join(self.SCHEDULABLE_FIELDS)
        for index, entry in enumerate(self.schedule):
            where = f"schedule[{index}]"
            if (
                not isinstance(entry, dict)
                or set(entry) != {"epoch", "values"}
                or not isinstance(entry["values"], dict)
            ):
                problems.append(f"{where}: expected {{epoch: E, values: {{field: value, ...}}}}, got {entry!r}")
                continue
            epoch, values = entry["epoch"], entry["values"]
            if not isinstance(epoch, int) or isinstance(epoch, bool) or not 1 <= epoch <= self.epochs:
                problems.append(f"{where}: epoch must be a whole number in 1..epochs={self.epochs} (got {epoch!r})")
            elif epoch <= previous:
                problems.append(
                    f"{where}: epoch {epoch} does not come after epoch {previous}; list the changes in increasing epochs, one entry per epoch"
                )
            else:
                previous = epoch
            if not values:
                problems.append(f"{where}: no values; give the fields that change at epoch {epoch} or drop the entry")
            fixed = sorted(name for name in values if name not in self.SCHEDULABLE_FIELDS)
            if fixed:
                problems.append(
                    f"{where}: {', '.join(fixed)} cannot change while a run trains; a schedule may change only {allowed}"
                )
            problems += [
                f"{where}: {problem}"
                for problem in schedulable_problems({k: v for k, v in values.items() if k in self.SCHEDULABLE_FIELDS})
            ]
        return problems


def schedulable_problems(values: dict) -> list[str]:
    """What is wrong with these values of schedulable fields (a config's own, or a schedule's)."""
    checks = {
        "lr": (lambda v: v > 0, "must be positive (got {}); try 1e-4 (paper, large data) to 3e-3 (small data)"),
        "lamb": (lambda v: v > 0, "must be positive (got {}); 1.0 is plain mutual information"),
        "crop_min_scale": (lambda v: 0 < v <= 1, "must lie in (0, 1] (got {}); 1.0 switches cropping off"),
        "hflip_prob": (lambda v: 0 <= v <= 1, "a probability must lie in [0, 1] (got {})"),
        "vflip_prob": (lambda v: 0 <= v <= 1, "a probability must lie in [0, 1] (got {})"),
        "rotation_degrees": (lambda v: 0 <= v <= 180, "must lie in [0, 180] (got {})"),
        "shear_degrees": (lambda v: 0 <= v <= 60, "must lie in [0, 60] (got {}); 0 switches shear off"),
        "brightness": (lambda v: 0 <= v <= 1, "jitter strength must lie in [0, 1] (got {}); 0 switches it off"),
        "contrast": (lambda v: 0 <= v <= 1, "jitter strength must lie in [0, 1] (got {}); 0 switches it off"),
        "saturation": (lambda v: 0 <= v <= 1, "jitter strength must lie in [0, 1] (got {}); 0 switches it off"),
        "hue": (lambda v: 0 <= v <= 0.5, "must lie in [0, 0.5] turns of the colour wheel (got {})"),
    }
    problems = []
    for name, value in values.items():
        ok, message = checks[name]
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            problems.append(f"{name}: expected a number (got {value!r})")
        elif not ok(value):
            problems.append(f"{name}: {message.format(value)}")
    return problems


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


def _coerce_schedule(value) -> list[dict] | None:
    """A schedule as a list of ``{"epoch": int, "values": {field: value}}``, each value of its
    field's type (ints become floats). Its content (epochs, fields, ranges) is ``validate()``'s."""
    if value is None:
        return None
    if not isinstance(value, list):
        raise TypeError(f"expected a list of {{epoch: E, values: {{field: value, ...}}}}, got {value!r}")
    types = {f.name: f.type for f in dataclasses.fields(IICConfig)}
    entries = []
    for index, entry in enumerate(value):
        if not isinstance(entry, dict) or set(entry) != {"epoch", "values"} or not isinstance(entry["values"], dict):
            raise TypeError(f"entry {index}: expected {{epoch: E, values: {{field: value, ...}}}}, got {entry!r}")
        try:
            epoch = _coerce(entry["epoch"], int)
            values = {name: _coerce(v, types[name]) if name in types else v for name, v in entry["values"].items()}
        except TypeError as err:
            raise TypeError(f"entry {index}: {err}") from None
        entries.append({"epoch": epoch, "values": values})
    return entries


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
