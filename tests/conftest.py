import time

import pytest

from iic.cache import CACHE_DIR_VARIABLE
from iic.config import IICConfig


@pytest.fixture(scope="session", autouse=True)
def decode_cache_dir(tmp_path_factory):
    """The session's decode cache in a temporary folder, never the user's (set in the environment,
    before any Ray starts, so that trial processes inherit it)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_DIR_VARIABLE, str(tmp_path_factory.mktemp("decode-cache")))
        yield


@pytest.fixture
def tiny_config() -> IICConfig:
    """A digits run small enough for a test: 240 images, a 4-wide ClusterNet, 2 epochs."""
    return IICConfig(
        dataset="digits",
        max_samples=240,
        backbone_width=4,
        num_subheads=2,
        batch_size=32,
        repeats=2,
        epochs=2,
        device="cpu",
    )


@pytest.fixture(scope="session")
def ray_session():
    """One real local Ray for the whole test session (starting one costs seconds)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


# How long a test waits for the shared Ray to be idle (every CPU free) before it starts.
IDLE_WAIT_S = 60


@pytest.fixture(autouse=True)
def shared_ray_is_idle(request):
    """A test on the shared Ray starts only once the tests before it have released every CPU: the
    search presets ask for all of them per trial, so a leftover actor or placement group would
    otherwise stall every later search until its time budget runs out. It fails fast instead,
    naming what still holds them."""
    if "ray_session" in request.fixturenames:
        _wait_until_idle(request.getfixturevalue("ray_session"))


def _wait_until_idle(ray) -> None:
    from ray.util import placement_group_table

    deadline = time.monotonic() + IDLE_WAIT_S
    while (free := ray.available_resources().get("CPU", 0)) < (total := ray.cluster_resources().get("CPU", 0)):
        if time.monotonic() > deadline:
            held = {
                key: group["bundles"] for key, group in placement_group_table().items() if group["state"] != "REMOVED"
            }
            pytest.fail(
                f"the shared Ray has {free:g} of {total:g} CPUs free {IDLE_WAIT_S} s after the last test ended: "
                f"an earlier test left actors or placement groups behind (placement groups: {held})"
            )
        time.sleep(0.2)
