import pytest
import torch

from benchmarks.cached_features import main

pytest.importorskip("timm")


@pytest.mark.slow  # a process pool
def test_a_tiny_head_search_on_cached_features_prints_its_speed_up(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("IIC_CACHE_DIR", str(tmp_path))  # restored after: the tool points it at a folder of its own
    argv = ["--backbone", "timm/test_vit", "--input-size", "16", "--max-samples", "60", "--views", "2"]
    threads = torch.get_num_threads()
    main([*argv, "--epochs", "1", "--trials", "2", "--workers", "1"])
    assert torch.get_num_threads() == threads  # the tests after this one train with the threads they had
    out = capsys.readouterr().out
    assert "2 head trials on cached features, end to end:" in out and "speed-up, extraction counted in:" in out
    assert out.strip().endswith("--trials 2 --workers 1")
