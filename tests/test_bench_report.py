"""bench/report_results.py: the tables of docs/results.md, from compare results."""
import pytest

from bench.report_results import compare_table, overview_row, versus_table
from floe.pipeline.policies import layer_ranges


def _cell(policy, k, seed, loss, layers):
    return {"policy": policy, "k": k, "seed": seed, "layers": layers, "metrics": {"val_loss": loss}}


RESULTS = [_cell("floe", 2, s, 3.0 + 0.01 * s, [2, 3]) for s in (1, 2, 3)] + \
          [_cell("probe", 2, s, 2.5 + 0.02 * s, [0, 1]) for s in (1, 2, 3)] + \
          [_cell("random", 2, s, 3.0 - 0.1 * (s == 2), [s, s + 1]) for s in (1, 2, 3)] + \
          [_cell("all", 4, s, 2.0, [0, 1, 2, 3]) for s in (1, 2, 3)]


def test_layer_runs_are_ranges():
    assert layer_ranges([0, 1, 2, 5, 7, 8]) == "0-2, 5, 7, 8"


def test_compare_table_pairs_each_policy_with_floe():
    table = compare_table(RESULTS, base=4.0)
    probe = next(line for line in table.splitlines() if line.startswith("| probe"))
    # probe - floe per seed: -0.49, -0.48, -0.47 -> mean -0.48, an interval far from 0.
    assert "| 0, 1 | 2.5400" in probe and "-0.4800" in probe and probe.endswith("* |")
    assert "per seed" in next(line for line in table.splitlines() if line.startswith("| random"))
    assert "All layers: val loss 2.0000 ± 0.0000; base model 4.0000." in table


def test_versus_table_signs_say_who_is_better():
    table = versus_table(RESULTS, "probe")
    floe = next(line for line in table.splitlines() if line.startswith("| floe"))
    assert "-0.4800" in floe  # probe minus floe: the probe's loss is lower
    assert "| probe |" not in table


def test_overview_row_gives_agreement_differences_and_cheap_probe_match():
    probe = {"agreement": {"floe": {"spearman": -0.25, "spearman_ci": [-0.6, 0.2]}},
             "gain": [1.0, 2.0, 3.0, 4.0]}
    cheap = {"gain": [4.0, 3.0, 2.0, 1.0]}
    at_k4 = [{**c, "k": 4} for c in RESULTS if c["policy"] in ("floe", "probe")]
    cheap_cells = [{**c, "policy": "cheap probe"} for c in at_k4 if c["policy"] == "probe"]
    row = overview_row("tiny-set", probe, cheap, at_k4 + cheap_cells).split(" | ")
    assert row[0] == "| tiny-set" and row[1] == "-0.25 [-0.60, +0.20]" and row[2] == "n/a"
    assert row[3] == row[5] and row[3].startswith("-0.4800 ± ") and row[3].endswith(" *")
    assert row[4] == row[6] == ""  # no cell at k=8
    assert row[-1] == "-1.00 |"  # the reversed ranking


def test_budget_transfer_and_ladder_table():
    from bench.report_budget import ladder_table, transfer
    default = {"layers": [0, 1, 2, 3, 4, 5], "gain": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]}
    same = transfer(default, {"layers": [5, 4, 3, 2, 1, 0], "gain": [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]})
    assert same["spearman"] == pytest.approx(1.0) and same["n"] == 6 and same["top8_overlap"] == 6
    reversed_ = transfer(default, {"layers": [0, 1, 2, 3, 4, 5], "gain": [0.6, 0.5, 0.4, 0.3, 0.2, None]})
    assert reversed_["spearman"] == pytest.approx(-1.0) and reversed_["n"] == 5  # the unmeasured layer left out
    row = {"W": 256, "steps": 32, "examples": 256, "floe": {"spearman": -0.25, "spearman_ci": [-0.6, 0.2]},
           "adapter-norm": {"spearman": 0.8, "spearman_ci": [0.5, 0.95]}, "lora-drop": None, "deepest": None,
           "floe@default": {"spearman": 0.1, "spearman_ci": [None, None]}, "floe top 8": [3, 5, 6, 7, 25, 26, 27, 28]}
    line = ladder_table([row]).splitlines()[-1]
    assert line == ("| 256 | 32 | -0.25 [-0.60, +0.20] | +0.80 [+0.50, +0.95] | n/a | n/a | no better than chance | "
                    "+0.10 | 3, 5-7, 25-28 |")
    # A ranking whose ρ is above 0 but whose partial ρ given depth is not: said plainly, with the figure.
    row["floe"] = {"spearman": 0.44, "spearman_ci": [0.03, 0.72], "partial_spearman": 0.1,
                   "partial_spearman_ci": [-0.3, 0.45]}
    assert "| no better than depth (partial ρ +0.10 [-0.30, +0.45]) |" in ladder_table([row])
    row["floe"] |= {"partial_spearman": 0.5, "partial_spearman_ci": [0.2, 0.7]}
    assert "| predicts the gains (partial ρ +0.50 [+0.20, +0.70]) |" in ladder_table([row])


def test_budget_costs_count_a_set_search_apart_from_its_probe():
    """A probe run whose set search was added later: its row is the probe's own seconds, and a
    second row adds the search (not its curves), each as a share of the full-layer training."""
    import bench.report_budget as rb
    probes = {"probe-a": {"seconds": 40.0},
              "probe-b": {"seconds": 50.0, "set_search": {"search_seconds": 150.0, "curve_seconds": 99.0}}}
    refs = {"training at T": 500.0, "a longer epoch": 1000.0}
    rows = rb.cost_rows({}, {"default": probes["probe-b"], "at T": probes["probe-a"]}, refs)
    assert [(r["selection"], r["seconds"], r["shares"]["training at T"]) for r in rows] == [
        ("default", 50.0, 0.1), ("default + its set search", 200.0, 0.4), ("at T", 40.0, 0.08)]
    assert [r["shares"]["a longer epoch"] for r in rows] == [0.05, 0.2, 0.04]  # the share falls as training grows
    table = rb.cost_table(rows, refs)
    assert "| default + its set search | 200 | 40.0% | 20.0% |" in table
    assert "| (a longer epoch) | 1000 | | 100 % |" in table


def test_stepped_seconds_ignore_pauses_and_restarts():
    from bench.report_results import stepped_seconds

    def steps(times, total=4):
        return [{"event": "step", "step": i + 1, "total_steps": total, "time": t} for i, t in enumerate(times)]
    assert stepped_seconds(steps([0.0, 2.0, 4.0, 6.0])) == pytest.approx(8.0)
    paused = steps([0.0, 2.0, 900.0, 902.0])  # a kill -STOP of 15 minutes between steps 2 and 3
    assert stepped_seconds(paused) == pytest.approx(8.0)
    restarted = steps([0.0, 2.0]) + [{"event": "start"}] + steps([5000.0, 5002.0, 5004.0, 5006.0])
    assert stepped_seconds(restarted) == pytest.approx(8.0)
    assert stepped_seconds(steps([0.0, 2.0])) is None  # too few steps: the caller takes the wall time


def test_set_goal_counts_ties_and_strict_wins():
    from bench.report_sets import goal_count
    layers = {2: [0, 1], 4: [0, 1, 2, 3]}
    cells = [_cell(p, 2, s, 3.0, layers[2]) for p in ("probe", "probe-set") for s in (1, 2, 3)]
    cells += [_cell("probe", 4, s, 2.5 + 0.01 * s, layers[4]) for s in (1, 2, 3)]
    cells += [_cell("probe-set", 4, s, 2.3 + 0.012 * s, [0, 1, 2, 5]) for s in (1, 2, 3)]
    goal = goal_count(cells)
    worse = goal_count([{**c, "metrics": {"val_loss": 5.0 - c["metrics"]["val_loss"]}} if c["policy"] == "probe-set"
                        else c for c in cells])
    assert worse["strictly_above"] == [4] and 4 not in worse["strictly_below"]
    assert goal == {"cells": 2, "same_layers": [2], "at_or_below": [2, 4], "strictly_below": [4],
                    "strictly_above": []}



def test_calibration_line_says_when_too_few_sets_to_rank():
    from bench.report_sets import calibration_line
    two = {"spearman": None, "spearman_ci": [None, None], "mean_gap": -0.2, "cells": [{}, {}],
           "conditions": {"max_samples": [32, 1024]}}
    assert calibration_line(two).startswith("Calibration: Spearman n/a (fewer than 3 sets) over 2 distinct sets; "
                                            "trained minus predicted -0.200 nats")
    ranked = {**two, "spearman": 0.9, "spearman_ci": [0.5, 1.0], "cells": [{}] * 4}
    assert "Spearman +0.90 [+0.50, +1.00] over 4" in calibration_line(ranked)

def test_budget_report_judges_by_each_task_metric_and_tables_any_metric():
    from bench.report_budget import benchmark_metrics
    metrics = {"val_loss": 3.0, "perplexity": 20.0, "floe_arc_easy/acc": 0.5, "floe_arc_easy/acc_norm": 0.45,
               "floe_arc_easy/acc_norm_stderr": 0.02, "floe_piqa/acc": 0.6, "floe_piqa/acc_stderr": 0.01}
    assert benchmark_metrics(metrics) == ["floe_arc_easy/acc_norm", "floe_piqa/acc"]
    cells = [{**c, "metrics": {"floe_piqa/acc": c["metrics"]["val_loss"] / 10}} for c in RESULTS]
    table = compare_table(cells, None, metric="floe_piqa/acc")
    assert "| k=2: layers | floe_piqa/acc | minus floe |" in table and "base model" not in table
    assert "| 0, 1 | 0.2540" in next(line for line in table.splitlines() if line.startswith("| probe"))


def test_full_probe_check_scores_each_ranking_on_the_layers_measured():
    """The full probe at T checks the joint reading on the layers it has measured: an agreeing
    ranking gets ρ = +1 and all 3 of the top 3, a reversed one ρ = -1 and none; an unmeasured
    layer is left out, and too few layers give no rows at all."""
    from bench.report_budget import full_probe_rows, full_probe_table
    per_seed = {42: {0: 0.1, 3: 0.6, 6: 0.3, 12: 0.2}, 43: {0: 0.1, 3: 0.4, 6: 0.5}}
    full = {"layers": [0, 3, 6, 9, 12], "gain": [0.1, 0.5, 0.4, None, 0.2], "seeds": [42, 43],
            "cells": [{"layer": k, "seed": s, "gain": g} for s, gains in per_seed.items() for k, g in gains.items()]}
    rest = [1, 2, 4, 5, 7, 8, 10, 11]
    agree, reverse = [3, 6, 12, 0, 9, *rest], [0, 12, 6, 3, 9, *rest]
    rows = full_probe_rows(full, {"joint": agree, "reversed": reverse})
    assert [r["spearman"] for r in rows] == [pytest.approx(1.0), pytest.approx(-1.0)]
    assert [r["top3"] for r in rows] == [3, 2]  # of the full probe's best 3, 6, 12: reversed ranks 0, 12, 6 first
    table = full_probe_table(full, rows)
    assert "7 of 10 trainings" in table and "9:" not in table  # the unmeasured layer has no gain
    # The seeds agree on 0 < 6 < 3 or 0 < 3 < 6: over the 3 layers both measured, ρ = +0.5.
    assert "its two seeds agree at ρ +0.50 over 3 layers" in table
    assert "| joint | +1.00" in table and "| 3/3 |" in table
    assert full_probe_rows({**full, "gain": [0.1, None, None, None, 0.2]}, {"joint": agree}) == []
