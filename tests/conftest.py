import pytest

from iic.config import IICConfig


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
