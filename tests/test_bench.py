"""bench helpers that turn measured results into claims: they must count right."""
from bench.run import HEADLINE, three_seed_power


def test_three_seed_power_counts_the_draws_that_clear_3_sigma():
    base = {m + "_seeds": [0.80, 0.81, 0.80, 0.81] for m, _ in HEADLINE}
    # GAUC: +0.10 on seeds 0-2 (z = 12 on the draw 0,1,2), but seed 3 collapses, so every draw with it fails
    variant = {**base, "test_gauc_seeds": [0.90, 0.91, 0.90, 0.50]}
    table = three_seed_power({"baseline": base, "candidate": variant}, n_seeds=4)
    row = next(line for line in table.splitlines() if line.startswith("| candidate"))
    assert row == "| candidate | 25% | 0% | 0% | 0% | 0% |"
    assert "Over 4 draws of 3 of these 4 seeds" in table
