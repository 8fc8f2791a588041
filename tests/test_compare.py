"""floe compare: policies x layer counts x seeds, mean and t-interval per cell."""
import csv
import json
import math
import random
import statistics

import pytest
from helpers import RANKINGS

from floe.cli import main
from floe.experiments.compare import CompareConfig, paired_differences, plan, reference_policy
from floe.method.stats import mean_ci, t_cdf, t_quantile
from floe.store.runs import open_run


@pytest.mark.parametrize("df, expected", [(1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622),
                                          (30, 2.0423), (1000, 1.9623)])
def test_t_quantiles_match_the_tables(df, expected):
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=1e-4)


def test_t_cdf_closed_forms():
    # df=1 is the Cauchy distribution; df=2 has F(t) = 1/2 + t / (2 sqrt(2 + t^2)).
    for t in (-3.0, -0.5, 0.0, 0.7, 4.0):
        assert t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-10)
        assert t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-10)


def test_mean_ci_uses_the_t_distribution():
    values = [0.30, 0.34, 0.29, 0.35]
    ci = mean_ci(values)
    half = t_quantile(0.975, 3) * statistics.stdev(values) / 2
    assert ci["mean"] == pytest.approx(statistics.fmean(values))
    assert ci["half_width"] == pytest.approx(half) and ci["ci_low"] == pytest.approx(ci["mean"] - half)
    assert mean_ci([0.5])["half_width"] is None


def test_paired_differences_pair_cells_by_k_and_seed():
    def cell(policy, k, seed, loss):
        return {"policy": policy, "k": k, "seed": seed, "metrics": {"val_loss": loss}}
    results = [cell("floe", 2, 1, 3.0), cell("floe", 2, 2, 3.5), cell("probe", 2, 1, 2.5),
               cell("probe", 2, 2, 3.2), cell("all", 4, 1, 2.0), cell("probe", 1, 1, 9.0)]
    (diff,) = paired_differences(results, "floe", 0.95)
    # probe - floe per seed: -0.5 and -0.3; "all" (another k) and k=1 (no floe cell) have no pair.
    assert (diff["k"], diff["policy"], diff["metric"]) == (2, "probe", "val_loss")
    assert diff["values"] == pytest.approx([-0.5, -0.3]) and diff["mean"] == pytest.approx(-0.4)
    assert diff["half_width"] == pytest.approx(mean_ci([-0.5, -0.3])["half_width"])
    assert reference_policy(["all", "random", "floe"]) == "floe"
    assert reference_policy(["random", "deepest"]) == "random" and reference_policy(["all"]) is None


def test_plan_and_bad_grids():
    cells = plan(CompareConfig(ks=[2, 3], policies=["floe", "random"]), n_layers=4)
    assert cells == [(4, "all"), (3, "floe"), (3, "random"), (2, "floe"), (2, "random")]
    with pytest.raises(ValueError, match="larger than the model's 4 layers"):
        plan(CompareConfig(ks=[5]), n_layers=4)
    with pytest.raises(ValueError, match="unknown policy"):
        CompareConfig(policies=["floe", "best"])


def test_compare_on_the_tiny_model(tiny_args, score_run, capsys):
    args = ["compare", "--score-run", score_run, *[a for a in tiny_args if a != "--quiet"],
            "--ks", "2", "--policies", "floe,random", "--seeds", "1,2", "--tasks", "arc-easy",
            "--limit", "4", "--lr", "1e-2", "--quiet", "--json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    run = open_run(out["run"])
    summary = run.read_json("compare.json")
    results = summary["results"]
    assert len(results) == 3 * 2  # (all, floe@2, random@2) x 2 seeds
    floe = [r for r in results if r["policy"] == "floe"]
    assert all(r["layers"] == sorted(RANKINGS["floe"][:2]) for r in floe)
    assert {r["seed"] for r in floe} == {1, 2} and floe[0]["train_run"] != floe[1]["train_run"]
    assert all(r["layers"] == [0, 1, 2, 3] for r in results if r["policy"] == "all")
    # Random layers are drawn anew per seed, and the training runs say so (where the draw is
    # FLoE's top 2, FLoE's training of that seed serves both).
    random_rows = [r for r in results if r["policy"] == "random"]
    for r in random_rows:
        assert r["layers"] == sorted(random.Random(r["seed"]).sample(range(4), 2))
        same = next(f for f in floe if f["seed"] == r["seed"])
        selection = open_run(r["train_run"]).config["selection"]
        assert (r["train_run"] == same["train_run"] if r["layers"] == same["layers"] else
                selection["policy"] == "random" and selection["random_seed"] == r["seed"])
    assert any(r["layers"] != floe[0]["layers"] for r in random_rows)
    # Each cell's mean and interval come from its per-seed values.
    cell = next(c for c in summary["cells"] if c["policy"] == "floe" and c["metric"] == "val_loss")
    values = [r["metrics"]["val_loss"] for r in floe]
    assert cell["values"] == values and cell["mean"] == pytest.approx(statistics.fmean(values))
    assert cell["half_width"] == pytest.approx(mean_ci(values)["half_width"])
    with open(run.file("compare.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(summary["cells"]) and {"arc-easy/acc", "val_loss"} <= {r["metric"] for r in rows}
    assert "| 2 |" in summary["tables"]["val_loss"] and "±" in summary["tables"]["val_loss"]
    assert summary["base"]["metrics"]["val_loss"] > 0
    # Random minus FLoE, paired by training seed.
    assert summary["differences"]["reference"] == "floe"
    diff = next(c for c in summary["differences"]["cells"] if c["metric"] == "val_loss")
    rand = {r["seed"]: r["metrics"]["val_loss"] for r in results if r["policy"] == "random"}
    assert diff["policy"] == "random" and diff["values"] == pytest.approx(
        [rand[r["seed"]] - r["metrics"]["val_loss"] for r in floe])
    assert "val_loss minus floe, paired by seed" in out["table"]


def test_tables_show_perplexity_and_loss_differences():
    """Perplexities to 4 significant figures and losses to 4 decimals: two policies a few
    hundredths apart print apart (at one decimal both printed 11.0)."""
    from floe.experiments.compare import format_table

    def cell(policy, metric, mean, half_width):
        return {"k": 4, "policy": policy, "metric": metric, "n": 3, "mean": mean, "half_width": half_width}
    rows = [cell("floe", "perplexity", 11.0312, 0.0123), cell("spread", "perplexity", 11.0487, None),
            cell("floe", "val_loss", 2.40078, 0.00112), cell("spread", "val_loss", 2.40237, 0.0009),
            cell("floe", "arc-easy/acc", 0.4567, 0.0123)]
    ppl = format_table(rows, "perplexity", ["floe", "spread"])
    assert "| 4 | 11.03 ± 0.01230 | 11.05 |" in ppl
    assert "| 4 | 2.4008 ± 0.0011 | 2.4024 ± 0.0009 |" in format_table(rows, "val_loss", ["floe", "spread"])
    assert "| 4 | 45.67 ± 1.23 |" in format_table(rows, "arc-easy/acc", ["floe"])
    diff = format_table([cell("spread", "perplexity", -0.0175, 0.0042)], "perplexity", ["spread"])
    assert "| 4 | -0.01750 ± 0.004200 |" in diff
    big = format_table([cell("floe", "perplexity", 1250.37, 12.5)], "perplexity", ["floe"])
    assert "| 4 | 1250 ± 12.50 |" in big


def test_a_shared_compare_keeps_the_key_and_a_bad_storage_is_one_line(tiny_args, score_run, tiny_model_dir,
                                                                     qa_file, capsys):
    from helpers import tiny_configs

    from floe.eval.evaluate import EvalConfig
    from floe.experiments.compare import compare_key
    from floe.store.runs import list_runs
    setup, scored = tiny_configs(tiny_model_dir, qa_file), open_run(score_run)
    shared = CompareConfig(storage="postgresql://floe:secret@db/studies", study_name="c")
    assert compare_key(scored, setup, EvalConfig(), shared, None) == compare_key(
        scored, setup, EvalConfig(), CompareConfig(), None)  # the storage only shares the work
    before = {r.id for r in list_runs()}
    code = main(["compare", "--score-run", score_run, *tiny_args, "--ks", "2", "--storage",
                 "postgresql://floe:secret@127.0.0.1:1/studies"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "Connection refused" in err and len(err.splitlines()) == 1 and "secret" not in err
    assert {r.id for r in list_runs()} == before


def test_policies_that_pick_the_same_layers_share_one_training(tiny_args, score_run, capsys):
    # At k = L every policy picks every layer: one training per seed serves both policies.
    args = ["compare", "--score-run", score_run, *tiny_args, "--ks", "4", "--policies", "floe,deepest",
            "--no-include-all", "--seeds", "5", "--tasks", "", "--json"]
    assert main(args) == 0
    results = open_run(json.loads(capsys.readouterr().out)["run"]).read_json("compare.json")["results"]
    floe, deepest = sorted(results, key=lambda r: r["policy"] != "floe")
    assert (floe["policy"], deepest["policy"]) == ("floe", "deepest") and floe["layers"] == deepest["layers"]
    assert floe["train_run"] == deepest["train_run"] and floe["metrics"] == deepest["metrics"]
    assert open_run(floe["train_run"]).config["selection"]["policy"] == "floe"  # the first cell trained it
