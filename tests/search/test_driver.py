"""The driver's one use of a private Ray API, checked against the installed Ray: an upgrade that
moves or changes it fails here, not on a user's cluster."""

from search.driver import gcs_cluster_config, launchable_node_types


def test_the_private_cluster_config_accessor_answers_on_a_local_ray(ray_session, monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))  # no launcher config (~/ray_bootstrap_config.yaml) here
    assert gcs_cluster_config() is None  # a local Ray has no autoscaler
    assert launchable_node_types() == []


def test_the_launchers_config_on_the_head_gives_the_node_types(ray_session, monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "ray_bootstrap_config.yaml").write_text(
        "available_node_types:\n"
        "  head: {resources: {CPU: 0}, max_workers: 0}\n"
        "  gpu_worker: {resources: {CPU: 4, GPU: 1}, max_workers: 8}\n"
    )
    assert launchable_node_types() == [{"CPU": 4, "GPU": 1}]
