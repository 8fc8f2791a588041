"""bench/budget_study.sh end to end on a tiny model and the embedded data sets: every step of the
study from one command, its tables from bench.report_budget, and a rerun that computes nothing
again (issue 23: "the study runs from one command")."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def study(env: dict, **more: str) -> str:
    done = subprocess.run(["bash", "bench/budget_study.sh"], cwd=ROOT, env={**env, **more}, capture_output=True,
                          text=True, timeout=1200)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert ": error:" not in done.stderr, done.stderr[-3000:]  # a failed step is logged, and the study goes on
    return done.stdout


def summaries(out: Path) -> dict[str, str]:
    """Each summary's run id (a summary's text may grow: a probe's lists the compares made since)."""
    return {p.stem: json.loads(p.read_text())["run"] for p in sorted(out.glob("*.json")) if p.stat().st_size}


def test_the_budget_study_runs_every_step_from_one_command_and_resumes(cache, tiny_model_dir, tmp_path, monkeypatch):
    """Every step on medical (a ladder of W = 16, 32; T = 16 examples, one training seed), then the
    paper's protocol with the general set's W = 64 analysis; run again, nothing new is computed."""
    out, name = tmp_path / "out", tiny_model_dir.name
    env = {**os.environ, "FLOE_CACHE": str(cache), "STUDY_OUT": str(out), "STUDY_KEEP": str(tmp_path / "keep"),
           "MODELS": str(tiny_model_dir), "T_EXAMPLES": "16", "VAL": "8", "KS": "2", "SEEDS": "42",
           "FULL_LAYERS": "0,1,3", "JUDGE_TASKS": "arc-easy", "JUDGE_LIMIT": "2", "DEVICE": "cpu",
           "STORAGE": f"sqlite:///{tmp_path}/cells.sqlite3"}
    log = study(env, DATASETS="medical", LADDER="16 32")
    paper = dict(DATASETS="general medical", LADDER="64", STEPS="paper-protocol")
    log += study(env, **paper)
    medical = [f"analyze-{name}-medical-{w}" for w in (64, 16, 32)] + [
        f"{kind}-{name}-medical" for kind in ("probe-default", "probe-T", "compare-T", "compare-T-probe-default",
                                              "compare-T-probe-set", "compare-T-judged", "probe-T-full")]
    expected = {*medical, f"analyze-{name}-general-64", f"compare-T-{name}-general-to-medical",
                f"compare-T-judged-{name}-general-to-medical"}
    found = summaries(out)
    assert set(found) == expected, (sorted(expected ^ set(found)), log)
    runs = sorted((cache / "runs").iterdir())

    # Resumed: the analyses are not run again, every other step finds its run cached.
    assert study(env, **paper).count("analyze W=64") == 2
    assert summaries(out) == found and sorted((cache / "runs").iterdir()) == runs

    import bench.report_budget as rb
    monkeypatch.setattr(rb, "RESULTS", out)
    report = rb.report(f"{name}-medical")
    assert "| 16 | 2 |" in report and "| 32 | 4 |" in report  # the ladder: one epoch of batch 8 over W
    assert "Full single-layer probe at T (6 of 6 trainings: layers 0, 1, 3, seeds 42, 43" in report
    # Against the full probe: every policy at the largest W, the warm-up policies at the smallest too.
    for row in ("| floe (W=64) |", "| lora-drop (W=64) |", "| floe (W=16) |", "| adapter-norm (W=16) |", "| deepest |"):
        assert row in report, (row, report)
    assert "| lora-drop (W=16) |" not in report and "| floe (W=32) |" not in report
    for row in ("| probe at T |", "| probe at default budget |", "| probe-set at default budget |", "| floe |",
                "Transfer of the ground truth", "share of the full-layer training at T", "Judged by arc-easy/acc_norm"):
        assert row in report, (row, report)
    # The paper's protocol in the held-out loss's table, its paired differences and the benchmark's table.
    assert report.count(f"| {rb.PAPER_ROW} |") == 3

    # Before any compare (Gemma's study ran only the ladder and the probes) the costs still have a
    # reference: the largest warm-up, itself a full-layer epoch.
    early = tmp_path / "early"
    early.mkdir()
    for stem in (*[f"analyze-{name}-medical-{w}" for w in (64, 16, 32)], f"probe-default-{name}-medical",
                 f"probe-T-{name}-medical"):
        (early / f"{stem}.json").write_text((out / f"{stem}.json").read_text())
    monkeypatch.setattr(rb, "RESULTS", early)
    report = rb.report(f"{name}-medical")
    assert "share of a full-layer epoch over 16 examples" in report and "no compare yet" in report, report
    assert "share of a full-layer epoch over 64 examples" in report  # the largest W: the default 64
    assert "| floe |" not in report and "share of the full-layer training at T" not in report
