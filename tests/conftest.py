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
        dataset="digits", max_samples=240, backbone_width=4, num_subheads=2, batch_size=32, repeats=2,
        epochs=2, device="cpu",
    )


@pytest.fixture(scope="session")
def ray_session():
    """One real local Ray for the whole test session (starting one costs seconds)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
