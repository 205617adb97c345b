"""One typed config for an IIC training run, with a YAML round trip and validation.

Every field is a plain value so that a config is at once a YAML file, a set of search parameters
and a set of MLflow params. ``validate()`` runs before any compute and reports every problem at once,
each naming the field and the fix.

A few fields may change while a run trains (``SCHEDULABLE_FIELDS``: the augmentation strengths, lr
and lamb). ``schedule`` lists such changes, ``[{epoch: E, values: {field: value, ...}}, ...]``: from
epoch E on, those fields take those values. Population-based training writes one (each exploit
of another trial's checkpoint continues it with new values); a run given one replays it.
"""

import ast
import dataclasses
import difflib
import inspect
import types
import typing
from dataclasses import dataclass
from pathlib import Path

import yaml

from iic.checks import config_problems
from iic.pretrained import IMAGENET


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
    """One IIC run. Each field's docstring is its entry in docs/training.md (``field_reference``)."""

    # ---- data: labels are used for evaluation only ----
    dataset: str = "digits"
    """Which images: one of ``iic.data.DATASETS``."""
    data_root: str | None = None
    """The dataset's folder (bundled datasets need none)."""
    split: str = "train"
    """The dataset's split, where it has several."""
    input_size: int = 16
    """Images are decoded once, resized to this square size in pixels."""
    greyscale: bool = False
    """Decode colour images as one grey channel."""
    class_map: dict[str, str] | None = None
    """Original class -> new class; classes not listed are dropped."""
    max_samples: int | None = None
    """Train on this many images, drawn with ``seed``; null for all."""
    download: bool = False
    """Download a torchvision dataset into ``data_root`` if it is missing."""

    # ---- model ----
    backbone: str = "clusternet"
    """``clusternet`` (a small VGG for 8-32 px), ``resnet18``, ``resnet50``, ``dinov2_vits14``, ``dinov2_vitb14``,
    ``clip_vitb16``, ``siglip_vitb16`` or any timm model as ``timm/<model>.<tag>``."""
    backbone_width: int = 16
    """ClusterNet's first stage width."""
    backbone_weights: str | None = None
    """``imagenet`` (ResNets, torch's cache), ``pretrained`` (timm's, Hugging Face's cache), a local state-dict file,
    or null for random."""
    freeze_backbone: bool = False
    """Train the heads only, on the pretrained backbone's features."""
    sobel: bool = False
    """Replace the images by their Sobel gradients (grey -> x, y), as the paper does on colour data."""
    num_clusters: int = 10
    """Clusters of the main head: the number of classes you expect."""
    overcluster_k: int = 0
    """Clusters of the overclustering head (0 = none); the paper uses 3-10x the classes."""
    num_subheads: int = 5
    """Sub-heads per head; each seed reports the one with the lowest training loss."""
    head_depth: int = 0
    """Hidden ReLU layers of each sub-head before its linear classifier (0 = linear)."""
    head_width: int = 512
    """Units of each hidden layer of a sub-head."""
    feature_views: int = 0
    """Frozen backbone: augmented views per image whose features are computed once and cached; twins are drawn
    from them (0 = fresh augmentation every step)."""
    feature_view_seed: int = 0
    """The seed the fixed views (and their held-out view) are drawn from."""
    cache_view_features: bool = True
    """Read the fixed views' features from the feature cache; false runs the backbone on the same views every step."""

    # ---- objective and schedule: each epoch trains the overclustering head, then the main head ----
    lamb: float = 1.3
    """The loss's marginal weight: 1 is mutual information, above 1 favours balanced clusters."""
    lr: float = 3e-3
    """Adam's learning rate."""
    batch_size: int = 64
    """Images per step, before repeats."""
    repeats: int = 4
    """Augmented twins of each image in a step."""
    twin_neighbours: int = 0
    """Twins are views of the image or of one of its this many nearest neighbours (0 = itself only)."""
    epochs: int = 45
    """Epochs to train."""
    overcluster_passes: int = 1
    """Passes over the data that train the overclustering head each epoch."""
    seed: int = 0
    """The run's seed: initialisation, shuffling, augmentation, the ``max_samples`` draw."""
    screen_inits: int = 1
    """Initialisations each seed starts from (the seed, then seeds drawn from it); 1 = no screening."""
    screen_epochs: int = 10
    """After this epoch (or the last, if sooner) each seed keeps its initialisation with the highest held-out MI."""

    # ---- augmentation strengths (iic.augment.BatchAugment); 0 = off ----
    crop_min_scale: float = 0.5
    """Smallest crop area as a share of the image's, as torchvision's RandomResizedCrop (1.0 = no cropping)."""
    hflip_prob: float = 0.0
    """Probability of a horizontal flip."""
    vflip_prob: float = 0.0
    """Probability of a vertical flip."""
    rotation_degrees: float = 15.0
    """Largest rotation either way, in degrees."""
    shear_degrees: float = 0.0
    """Largest horizontal shear either way, in degrees."""
    brightness: float = 0.3
    """Brightness factor drawn from [1 - b, 1 + b]."""
    contrast: float = 0.3
    """Contrast factor drawn from [1 - c, 1 + c]."""
    saturation: float = 0.0
    """Saturation factor drawn from [1 - s, 1 + s] (colour images only)."""
    hue: float = 0.0
    """Hue shift drawn from [-h, h] turns of the colour wheel, at most 0.5 (colour images only)."""

    # ---- runtime: none of these changes what is trained beyond floating-point rounding ----
    device: str = "auto"
    """``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    amp: bool = True
    """bfloat16 autocast on CUDA; ignored on CPU."""
    eval_batch_size: int = 1024
    """Images per batch when evaluating."""
    channels_last: bool = False
    """Channels-last (NHWC) convolutions: faster on GPUs and on CPU for ClusterNet."""
    compile_mode: str = "off"
    """``torch.compile`` mode of the training forward pass, or ``off``; ``reduce-overhead`` replays CUDA graphs."""

    schedule: list[dict] | None = None
    """Changes while the run trains, ``[{epoch: E, values: {field: value}}]``, of the schedulable fields only."""

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
    # may too: they then change from the restored epoch on, see ``continuing``).
    RESUMABLE_CHANGES: typing.ClassVar[tuple[str, ...]] = (
        "epochs",
        "device",
        "amp",
        "eval_batch_size",
        "download",
        "channels_last",
        "compile_mode",
        "cache_view_features",
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

    @property
    def pick_epoch(self) -> int:
        """The epoch after which each seed keeps one initialisation: ``screen_epochs``, or the last if sooner."""
        return min(self.screen_epochs, self.epochs)

    def model_epochs(self, through: int | None = None) -> int:
        """What a seed costs, in epochs of one model, through epoch ``through`` (default: all its
        epochs): screening's initialisations each count until the pick."""
        through = self.epochs if through is None else through
        return through + (self.screen_inits - 1) * min(through, self.pick_epoch)

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
        """The config of this run stopped after ``epochs`` epochs: changes due later are dropped (a run
        stopped while screening reported each seed's pick at that epoch, as ``pick_epoch`` then is)."""
        kept = [entry for entry in self.schedule or [] if entry["epoch"] <= epochs]
        return self.replace(epochs=epochs, schedule=kept or None)

    # ---- validation ---------------------------------------------------------------------------

    def validate(self, check_data: bool = True) -> "IICConfig":
        """Raise ConfigError listing every problem, each with its fix; returns self when valid.
        ``check_data`` also checks that the dataset's files exist (cheap, nothing is decoded) and
        that ImageNet weights are in torch's cache, downloading them if not: offline, a missing
        file is reported here rather than after the data is decoded."""
        problems = config_problems(self, check_data)
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


def field_docs() -> dict[str, str]:
    """Each IICConfig field's docstring (the string literal under it in the class body)."""
    body = ast.parse(inspect.getsource(IICConfig)).body[0].body
    return {
        field.target.id: " ".join(doc.value.value.split())
        for field, doc in zip(body, body[1:], strict=False)
        if isinstance(field, ast.AnnAssign) and isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant)
    }


def field_reference() -> str:
    """The Markdown table of every IICConfig field: name, type, default, meaning (docs/training.md)."""
    docs = field_docs()
    rows = ["| field | type | default | meaning |", "|---|---|---|---|"]
    for field in dataclasses.fields(IICConfig):
        kind = (field.type.__name__ if isinstance(field.type, type) else str(field.type)).replace("|", "\\|")
        default = "null" if field.default is None else yaml.safe_dump(field.default).removesuffix("\n...\n").strip()
        meaning = docs[field.name].replace("|", "\\|")
        rows.append(f"| `{field.name}` | `{kind}` | `{default}` | {meaning} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(field_reference())
