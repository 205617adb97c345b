from benchmarks.step_profile import main


def test_a_step_is_timed_alone_and_with_seeds_stacked_and_in_turn(capsys):
    args = ["--only", "default", "--device", "cpu", "--steps", "2", "--warmup", "1", "--seeds", "1", "2"]
    main([*args, "--set", "max_samples=240", "--set", "backbone_width=4"])
    lines = capsys.readouterr().out.splitlines()
    single = next(line for line in lines if line.startswith("default") and "cpu" in line).split()
    assert float(single[-4]) > 0 and float(single[-2]) > 0 and single[-1].endswith("%")  # images/s, ms, share
    stacked = [line.split() for line in lines if line.startswith("default") and line.split()[-1].endswith("x")]
    assert [row[-5] for row in stacked] == ["1", "2"]  # seeds
    assert stacked[0][-1] == "1.00x"  # one seed against itself
    assert lines[-1] == "command: python -m benchmarks.step_profile " + (
        "--only default --device cpu --steps 2 --warmup 1 --seeds 1 2 --set max_samples=240 --set backbone_width=4"
    )
