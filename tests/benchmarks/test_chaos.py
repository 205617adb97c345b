"""benchmarks/chaos.py: a fault seed replays its faults exactly (the searches themselves run in the
tool, not here: each takes minutes)."""

from benchmarks.chaos import FAULTS, RESULTS_PER_SEARCH, draw_faults


def test_a_fault_seed_draws_the_same_one_to_three_faults_each_time():
    drawn = [draw_faults(seed) for seed in range(200)]
    assert drawn == [draw_faults(seed) for seed in range(200)]
    assert {len(faults) for faults in drawn} == {1, 2, 3}
    assert {kind for faults in drawn for _, _, kind, _ in faults} == set(FAULTS)
    assert all(0 <= moment < RESULTS_PER_SEARCH and 1 <= down <= 8 for f in drawn for moment, _, _, down in f)
    assert all(faults == sorted(faults) for faults in drawn)  # in the order they strike
