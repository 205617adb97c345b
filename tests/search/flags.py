"""Command-line flags that the search tests share."""

# One seed per trial on 200 images of a 4-wide network, no screening of initialisations and no
# confirmation stage: a test trains only what it is about, and adds the flags that it is about.
TINY = [
    *("--set", "max_samples=200"),
    *("--set", "backbone_width=4"),
    *("--set", "screen_inits=1"),
    *("--seeds-per-trial", "1"),
    *("--confirm-top", "0"),
]
