"""The cheap probe (one model load, successive halving) on 4 layers of the REAL SmolLM2, and
policy probe training its top 2."""
import json

import pytest

from floe.cli import main
from floe.store.runs import open_run

pytestmark = pytest.mark.real

SMALL = ["--device", "cpu", "--max-samples", "16", "--val-samples", "8", "--max-length", "64",
         "--batch-size", "4", "--quiet", "--json"]


def test_halving_probe_on_four_smollm2_layers_and_policy_probe(capsys):
    assert main(["probe", "--schedule", "halving", "--layers", "0,9,20,29", "--lr", "1e-3", *SMALL]) == 0
    out = json.loads(capsys.readouterr().out)
    probe = open_run(out["run"]).read_json("probe.json")
    assert out["model"] == "smollm2-135m" and sorted(probe["ranking"]) == [0, 9, 20, 29]
    # 16 samples / batch 4 = 4 steps: rungs of 2 and 4 steps on 4 and 2 layers.
    assert [(len(r["layers"]), r["steps"]) for r in probe["rungs"]] == [(4, 2), (2, 4)]
    assert probe["train_steps"] == 4 * 2 + 2 * 4
    assert all(g is not None and abs(g) < probe["base_val_loss"] for g in probe["gain"])
    first = dict(zip(probe["rungs"][0]["layers"], probe["rungs"][0]["gains"]))
    assert len(set(first.values())) == 4  # the layers were told apart
    last = dict(zip(probe["rungs"][-1]["layers"], probe["rungs"][-1]["gains"]))
    assert probe["ranking"][:2] == sorted(last, key=lambda k: -last[k])  # the last rung leads
    assert set(last) == set(sorted(first, key=lambda k: -first[k])[:2])  # the better half went on
    assert main(["train", "--policy", "probe", "--probe-run", out["run"], "--k", "2", *SMALL,
                 "--max-steps", "1"]) == 0
    trained = json.loads(capsys.readouterr().out)
    assert trained["layers"] == sorted(probe["ranking"][:2])
    print("real cheap probe:", json.dumps({k: probe[k] for k in ("ranking", "gain", "seconds", "train_steps")}),
          json.dumps([{"steps": r["steps"], "layers": r["layers"], "gains": r["gains"]} for r in probe["rungs"]]))


def test_joint_probe_set_search_on_four_smollm2_layers_and_policy_probe_set(capsys):
    """Issue 20 on the real model: the joint probe (all 30 adapters trained at once) reads
    4 layers, searches their sets and draws each ranking's curve; probe-set trains the search's set."""
    from floe.method.setsearch import suggested_k

    assert main(["probe", "--schedule", "joint", "--layers", "0,9,20,29", "--lr", "1e-3", "--set-search",
                 *SMALL]) == 0
    out = json.loads(capsys.readouterr().out)
    probe = open_run(out["run"]).read_json("probe.json")
    found = probe["set_search"]
    ks = [1, 2, 3, 4]
    assert found["ks"] == ks and set(found["curves"]) == {"probe", "forward", "backward", "deepest"}
    for name in ("forward", "backward"):
        assert sorted(found[name]["order"]) == [0, 9, 20, 29] and found[name]["ks"] == ks
    # k = 1 is the best single's reading; k = 4 the four adapters together, for every ranking.
    assert found["curves"]["probe"][0] == pytest.approx(probe["base_val_loss"] - max(probe["gain"]))
    assert len({c[-1] for c in found["curves"].values()}) == 1
    # Greedy forward starts from the best single, so its pair is at least as good as the top 2 singles.
    assert found["forward"]["order"][0] == probe["ranking"][0]
    assert found["curves"]["forward"][1] <= found["curves"]["probe"][1]
    assert found["mean_loss"][found["better"]] == min(found["mean_loss"].values())
    assert found["suggested"]["k"] == suggested_k(ks, found["curves"][found["better"]], found["base_loss"],
                                                  found["all_loss"], 0.9)
    assert main(["train", "--policy", "probe-set", "--probe-run", out["run"], "--k", "2", *SMALL,
                 "--max-steps", "1"]) == 0
    trained = json.loads(capsys.readouterr().out)
    assert trained["layers"] == sorted(found["ranking"][:2])
    print("real set search:", json.dumps({k: found[k] for k in ("curves", "better", "suggested", "mean_loss")}))
