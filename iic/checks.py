"""What makes a config untrainable: every problem at once, each naming the field and the fix.

``IICConfig.validate`` raises them as one ConfigError before any compute starts.
"""

import os

from iic.augment import BatchAugment
from iic.data import DATASETS, DatasetError, check_dataset_source
from iic.models import BACKBONES, MIN_INPUT_SIZE, RESNET_SMALL_STEM_BELOW
from iic.pretrained import IMAGENET, IMAGENET_WEIGHTS, WeightsError, fetch_imagenet_weights
from iic.timm_backbones import PRETRAINED, TIMM_BACKBONES, fetch_hub_weights, is_timm_backbone, patch_size

DEVICES = ("auto", "cpu", "cuda")
# torch.compile's modes, and "off" (eager).
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")  # those of COMPILE_MODES that replay CUDA graphs


def config_problems(config, check_data: bool = True) -> list[str]:
    """Every problem of ``config`` (an ``IICConfig``); ``check_data`` also looks for its files."""
    problems = []

    def require(ok: bool, message: str):
        if not ok:
            problems.append(message)

    require(
        config.dataset in DATASETS, f"dataset: unknown dataset {config.dataset!r}; choose one of {', '.join(DATASETS)}"
    )
    timm_backbone = is_timm_backbone(config.backbone)
    require(
        config.backbone in BACKBONES or timm_backbone,
        f"backbone: unknown backbone {config.backbone!r}; choose one of {', '.join(BACKBONES)} "
        "or a timm model as timm/<model>.<tag>",
    )
    require(
        config.num_clusters >= 2,
        f"num_clusters: must be at least 2 (got {config.num_clusters}); set it to the number of classes you expect",
    )
    require(
        config.overcluster_k == 0 or config.overcluster_k > config.num_clusters,
        f"overcluster_k: must exceed num_clusters={config.num_clusters} (got {config.overcluster_k}); "
        f"the paper uses 3-10x the classes, or set 0 to switch overclustering off",
    )
    require(config.num_subheads >= 1, f"num_subheads: must be at least 1 (got {config.num_subheads}); the paper uses 5")
    require(config.head_depth >= 0, f"head_depth: must be 0 (linear sub-heads) or more (got {config.head_depth})")
    require(config.head_width >= 1, f"head_width: must be at least 1 (got {config.head_width}); try 256-2048")
    problems += _fixed_view_problems(config)
    require(
        config.batch_size >= 2,
        f"batch_size: must be at least 2 (got {config.batch_size}); the joint distribution needs a batch",
    )
    require(config.repeats >= 1, f"repeats: must be at least 1 (got {config.repeats})")
    require(
        config.twin_neighbours >= 0,
        "twin_neighbours: must be 0 (twins of the image itself) "
        f"or more (got {config.twin_neighbours}); SCAN uses 5-20",
    )
    require(config.epochs >= 1, f"epochs: must be at least 1 (got {config.epochs})")
    require(
        config.screen_inits >= 1,
        f"screen_inits: must be at least 1 (got {config.screen_inits}); 1 trains each seed's own initialisation alone",
    )
    require(
        config.screen_inits == 1 or config.screen_epochs >= 1,
        f"screen_epochs: must be at least 1 (got {config.screen_epochs}): after it (or the last epoch, if sooner) "
        "each seed keeps one initialisation; or set screen_inits: 1",
    )
    require(
        config.overcluster_passes >= 0,
        f"overcluster_passes: must be 0 or more (got {config.overcluster_passes}); passes over the data per epoch",
    )
    require(config.eval_batch_size >= 1, f"eval_batch_size: must be at least 1 (got {config.eval_batch_size})")
    require(
        config.compile_mode in COMPILE_MODES,
        f"compile_mode: {config.compile_mode!r} is not one of {', '.join(COMPILE_MODES)} (off: no torch.compile)",
    )
    require(
        config.max_samples is None or config.max_samples >= 2,
        f"max_samples: must be at least 2 or null for all (got {config.max_samples})",
    )
    problems += schedulable_problems({name: getattr(config, name) for name in config.SCHEDULABLE_FIELDS})
    problems += schedule_problems(config.schedule, config.epochs, config.SCHEDULABLE_FIELDS)
    if config.backbone in MIN_INPUT_SIZE:
        minimum = MIN_INPUT_SIZE[config.backbone]
        require(
            config.input_size >= minimum,
            f"input_size: {config.input_size} px is too small for {config.backbone}; use at least {minimum}",
        )
    require(
        config.device in DEVICES or config.device.startswith("cuda:"),
        f"device: {config.device!r} is not one of {', '.join(DEVICES)} (or cuda:N)",
    )
    if timm_backbone:
        try:
            patch = patch_size(config.backbone, config.input_size)
            require(
                config.input_size % patch == 0,
                f"input_size: {config.backbone} cuts images into {patch} px patches; "
                f"set input_size to a multiple of {patch} (e.g. {max(patch, config.input_size // patch * patch)})",
            )
        except WeightsError as err:
            problems.append(f"backbone: {err}")
        require(not config.sobel, f"sobel: {config.backbone} reads RGB images, not Sobel's gradients; set sobel: false")
        require(
            config.freeze_backbone,
            f"freeze_backbone: {config.backbone} trains frozen (only the heads train; its layers do not stack "
            "across seeds); set freeze_backbone: true",
        )
    if config.backbone_weights is not None:
        resnets = " or ".join(IMAGENET_WEIGHTS)
        hub_name = PRETRAINED if timm_backbone else IMAGENET
        require(
            config.backbone in IMAGENET_WEIGHTS or timm_backbone,
            f"backbone_weights: only {resnets} load weights, and the timm backbones ({', '.join(TIMM_BACKBONES)}, "
            "timm/<model>.<tag>); set backbone to one of them, or backbone_weights: null",
        )
        if config.backbone_weights not in (IMAGENET, PRETRAINED):
            require(
                os.path.isfile(config.backbone_weights),
                f"backbone_weights: file {config.backbone_weights} does not "
                f"exist; give a local state-dict file, {hub_name}, or null",
            )
        elif config.backbone_weights != hub_name:
            problems.append(
                f"backbone_weights: {config.backbone} loads {hub_name!r} weights, not "
                f"{config.backbone_weights!r}; set backbone_weights: {hub_name} (or a local state-dict file)"
            )
        elif check_data and (config.backbone in IMAGENET_WEIGHTS or timm_backbone):
            try:
                (fetch_hub_weights if timm_backbone else fetch_imagenet_weights)(config.backbone)
            except WeightsError as err:
                problems.append(f"backbone_weights: {err}")
        require(
            not config.sobel,
            "sobel: pretrained weights read RGB images, and Sobel replaces them with 2 gradient channels; "
            "set sobel: false, or backbone_weights: null to train from scratch with Sobel",
        )
    if config.freeze_backbone:
        require(
            config.backbone_weights is not None,
            f"freeze_backbone: a frozen backbone without pretrained weights stays random; "
            f"set backbone_weights: {IMAGENET} (or a state-dict file), or freeze_backbone: false",
        )
        require(
            config.input_size >= RESNET_SMALL_STEM_BELOW or config.backbone not in IMAGENET_WEIGHTS,
            f"freeze_backbone: below {RESNET_SMALL_STEM_BELOW} px (input_size: "
            f"{config.input_size}) ResNet's first layer is a new 3x3 stem "
            "the weights do not hold, which frozen would stay random; "
            f"set input_size: {RESNET_SMALL_STEM_BELOW} or more "
            f"(images are resized when decoded), or freeze_backbone: false",
        )
    if check_data and config.dataset in DATASETS:
        try:
            check_dataset_source(config.dataset, config.data_root, config.split)
        except DatasetError as err:
            problems.append(f"data_root: {err}")
    return problems


def _fixed_view_problems(config) -> list[str]:
    """What keeps ``feature_views`` from fixing the views whose features are computed once."""
    if config.feature_views == 0:
        return []
    if config.feature_views < 0:
        return [f"feature_views: must be 0 (fresh augmentation every step) or more (got {config.feature_views})"]
    problems = []
    if not config.freeze_backbone:
        problems.append(
            "feature_views: features computed once need a frozen backbone; "
            "set freeze_backbone: true (with pretrained weights), or feature_views: 0"
        )
    if BatchAugment(**config.augment_kwargs(1)).is_identity:
        problems.append(
            "feature_views: with every augmentation off each view is the image itself; "
            "set feature_views: 0, or turn an augmentation on"
        )
    scheduled = sorted(
        {name for entry in config.schedule or [] for name in entry["values"]} & set(config.AUGMENT_FIELDS)
    )
    if scheduled:
        problems.append(
            f"schedule: fixed views are drawn once, so {', '.join(scheduled)} cannot change while the run trains; "
            "drop them from the schedule, or set feature_views: 0"
        )
    return problems


def schedule_problems(schedule: list | None, epochs: int, schedulable: tuple[str, ...]) -> list[str]:
    """What is wrong with a schedule of a run of ``epochs`` epochs, entry by entry."""
    if schedule is None:
        return []
    problems, previous = [], 0
    allowed = ", ".join(schedulable)
    for index, entry in enumerate(schedule):
        where = f"schedule[{index}]"
        if not isinstance(entry, dict) or set(entry) != {"epoch", "values"} or not isinstance(entry["values"], dict):
            problems.append(f"{where}: expected {{epoch: E, values: {{field: value, ...}}}}, got {entry!r}")
            continue
        epoch, values = entry["epoch"], entry["values"]
        if not isinstance(epoch, int) or isinstance(epoch, bool) or not 1 <= epoch <= epochs:
            problems.append(f"{where}: epoch must be a whole number in 1..epochs={epochs} (got {epoch!r})")
        elif epoch <= previous:
            problems.append(
                f"{where}: epoch {epoch} does not come after epoch {previous}; "
                "list the changes in increasing epochs, one entry per epoch"
            )
        else:
            previous = epoch
        if not values:
            problems.append(f"{where}: no values; give the fields that change at epoch {epoch} or drop the entry")
        fixed = sorted(name for name in values if name not in schedulable)
        if fixed:
            problems.append(
                f"{where}: {', '.join(fixed)} cannot change while a run trains; a schedule may change only {allowed}"
            )
        problems += [
            f"{where}: {problem}"
            for problem in schedulable_problems({k: v for k, v in values.items() if k in schedulable})
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
