"""bench helpers that turn measured results into claims: they must count right."""
from bench.run import HEADLINE, spread_decomposition, spread_parts, three_seed_power


def test_three_seed_power_counts_the_draws_that_clear_3_sigma():
    base = {m + "_seeds": [0.80, 0.81, 0.80, 0.81] for m, _ in HEADLINE}
    # GAUC: +0.10 on seeds 0-2 (z = 12 on the draw 0,1,2), but seed 3 collapses, so every draw with it fails
    variant = {**base, "test_gauc_seeds": [0.90, 0.91, 0.90, 0.50]}
    table = three_seed_power({"baseline": base, "candidate": variant}, n_seeds=4)
    row = next(line for line in table.splitlines() if line.startswith("| candidate"))
    assert row == "| candidate | 25% | 0% | 0% | 0% | 0% |"
    assert "Over 4 draws of 3 of these 4 seeds" in table


def _part(seeds, gauc, overrides=("sim.scale=medium",)):
    row = {"test_gauc_seeds": gauc, "test_gauc_mean": sum(gauc) / len(gauc), "test_gauc_std": 0.0,
           "valid_gauc_seeds": gauc, "valid_gauc_mean": 0.0, "epochs_mean": float(len(seeds)),
           "test_gauc_halves": [[[g - 0.01, g + 0.01]] for g in gauc]}
    return {"ds": "2026-11-30", "lake": "/lake", "overrides": [*overrides, f"ranker.seeds={seeds}"], "seeds": seeds,
            "variants": {"baseline": row, "base": {**row, "test_gauc_seeds": [g + 0.01 for g in gauc]}}}


def test_merged_query_ceiling_runs_are_one_run_of_all_their_seeds():
    import numpy as np
    import pytest

    from bench.query_ceiling import merge_results

    merged = merge_results([_part([0, 1], [0.80, 0.82]), _part([2, 3, 4], [0.79, 0.81, 0.83])])
    assert merged["seeds"] == [0, 1, 2, 3, 4]
    assert merged["overrides"] == ["sim.scale=medium", "ranker.seeds=[0, 1, 2, 3, 4]"]
    base = merged["variants"]["baseline"]
    assert base["test_gauc_seeds"] == [0.80, 0.82, 0.79, 0.81, 0.83]
    assert base["test_gauc_mean"] == pytest.approx(0.81)
    assert base["test_gauc_std"] == pytest.approx(np.std([0.80, 0.82, 0.79, 0.81, 0.83], ddof=1))
    assert base["epochs_mean"] == pytest.approx((2 * 2 + 3 * 3) / 5)  # weighted by each part's seeds
    assert base["test_gauc_halves"] == [[[g - 0.01, g + 0.01]] for g in [0.80, 0.82, 0.79, 0.81, 0.83]]  # by seed, in order
    assert merged["variants"]["base"]["test_gauc_mean"] == pytest.approx(0.82)
    with pytest.raises(ValueError, match="seeds repeat"):
        merge_results([_part([0, 1], [0.8, 0.8]), _part([1, 2], [0.8, 0.8])])
    with pytest.raises(ValueError, match="overrides other than ranker.seeds"):
        merge_results([_part([0, 1], [0.8, 0.8]), _part([2, 3], [0.8, 0.8], overrides=("sim.scale=small",))])


def test_spread_decomposition_separates_the_seeds_from_the_test_window():
    import numpy as np
    import pytest

    rng = np.random.default_rng(0)
    n_seeds, n_splits, seeds_sd, window_sd = 400, 40, 0.010, 0.006
    quality = rng.normal(0.8, seeds_sd, n_seeds)
    full = quality + rng.normal(0, window_sd, n_seeds)
    # on a half of the users, a seed's own errors count twice as much as on the whole window
    halves = quality[:, None, None] + rng.normal(0, window_sd * np.sqrt(2), (n_seeds, n_splits, 2))
    seeds_var, window_var = spread_decomposition(halves.tolist(), full.tolist())
    assert np.sqrt(seeds_var) == pytest.approx(seeds_sd, rel=0.1)
    assert np.sqrt(window_var) == pytest.approx(window_sd, rel=0.2)
    assert seeds_var + window_var == pytest.approx(np.var(full, ddof=1))
    # halves that disagree (a negative covariance): no seeds' part, the whole variance is the window's
    full = [0.80, 0.82, 0.80, 0.82]
    halves = [[[f + d, f - d]] for f, d in zip(full, [0.01, -0.01, -0.01, 0.01])]
    seeds_var, window_var = spread_decomposition(halves, full)
    assert seeds_var == 0.0 and window_var == pytest.approx(np.var(full, ddof=1))


def test_spread_parts_projects_z_for_a_longer_test_window():
    # baseline: halves that agree, so its spread is all seeds (a longer window keeps it);
    # candidate: +0.05, all window (a 10x window divides its variance by 10)
    base_full = [0.80, 0.82, 0.80, 0.82]
    cand_full = [f + 0.05 for f in base_full]
    base = {m + "_seeds": base_full for m, _ in HEADLINE} | {m + "_halves": [[[f, f]] for f in base_full] for m, _ in HEADLINE}
    base |= {m + "_mean": 0.81 for m, _ in HEADLINE}
    cand = {m + "_seeds": cand_full for m, _ in HEADLINE} | {m + "_mean": 0.86 for m, _ in HEADLINE}
    cand |= {m + "_halves": [[[f + d, f - d]] for f, d in zip(cand_full, [0.01, -0.01, -0.01, 0.01])] for m, _ in HEADLINE}
    table = spread_parts({"baseline": base, "candidate": cand}, longer=10, resamples=20)
    rows = {line.split(" | ")[0]: line for line in table.splitlines() if line.startswith("| ")}
    assert "seeds 0.0115 · window 0.0000" in rows["| baseline"]
    # z = 0.05 / sqrt(0.0115^2 + 0.0115^2 / 10) = 4.13
    assert "seeds 0.0000 · window 0.0115 (z ×10: +4.1," in rows["| candidate"]
