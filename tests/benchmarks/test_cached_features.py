import os
import tempfile

import pytest
import torch

from benchmarks.cached_features import main

pytest.importorskip("timm")


@pytest.mark.slow  # a process pool
def test_a_tiny_head_search_on_cached_features_prints_its_speed_up(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("IIC_CACHE_DIR", str(tmp_path))  # the tool points it at a folder of its own, then back
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "temporary"))
    (tmp_path / "temporary").mkdir()
    argv = ["--backbone", "timm/test_vit", "--input-size", "16", "--max-samples", "60", "--views", "2"]
    threads = torch.get_num_threads()
    main([*argv, "--epochs", "1", "--trials", "2", "--workers", "1"])
    assert torch.get_num_threads() == threads  # the tests after this one train with the threads they had
    assert os.environ["IIC_CACHE_DIR"] == str(tmp_path) and not any((tmp_path / "temporary").iterdir())
    out = capsys.readouterr().out
    assert "2 head trials on cached features, end to end:" in out and "speed-up, extraction counted in:" in out
    assert out.strip().endswith("--trials 2 --workers 1")
