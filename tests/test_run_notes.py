"""What a study writes for people on its runs: the descriptions MLflow's UI shows first on a run's
page, and a trial's text sample."""

from __future__ import annotations

import math

from tuner.search.record.run_notes import sample_text, study_note, trial_note
from tuner.store.rows import TrialRow


def row(trial_id: str, val_loss: float, status: str = "completed", **params: str) -> TrialRow:
    return TrialRow(trial_id, f"run-{trial_id}", params, val_loss, 409600, status,
                    usable=status in ("completed", "stopped"))


def test_the_study_note_names_the_winner_its_margin_and_both_trials_values() -> None:
    rows = [row("aaa", 0.3721, lr_max="0.005714", batch_size="8"),
            row("bbb", 0.3805, "stopped", lr_max="0.003756", batch_size="16")]
    note = study_note(rows, {"stopped": 7, "completed": 3})
    assert note.startswith("**Best: trial aaa**, best val_loss 0.3721, 0.0084 below the "
                           "runner-up, trial bbb (0.3805).\n")
    assert "- `batch_size` (B) = 8 (16)\n- `lr_max` (α_max) = 0.005714 (0.003756)\n" in note
    assert "10 trials: 3 completed, 7 stopped." in note


def test_a_runner_up_that_diverged_gives_no_margin() -> None:
    note = study_note([row("aaa", 0.5, lr_max="0.001"), row("bbb", 0.4, "diverged")],
                      {"completed": 1, "diverged": 1})
    assert note.startswith("**Best: trial aaa**, best val_loss 0.5000.\n")
    assert "- `lr_max` (α_max) = 0.001\n" in note and "runner-up" not in note
    assert study_note([row("bbb", math.inf, "failed")], {"failed": 1}).startswith(
        "No trial reached a finite val_loss")


def test_the_trial_note_leads_with_its_outcome_then_the_searched_values() -> None:
    note = trial_note({"warmup_fraction": 0.0143412, "optimizer": "sgd"},
                      "stopped by ASHA at rung 1 (122,880 tokens)", 0.76851)
    assert note.startswith("**stopped by ASHA at rung 1 (122,880 tokens)**; best val_loss "
                           "0.7685\n")
    assert ("- `optimizer` (opt) = sgd\n- `warmup_fraction` (T_warmup/T_total) = 0.01434"
            in note)  # by name
    failed = trial_note({}, "failed: ConfigError: first line\nTraceback …", math.inf)
    assert failed.startswith("**failed: ConfigError: first line**\n")
    assert "searched no parameter" in failed


def test_a_sample_says_its_tokens_and_shows_its_prompt() -> None:
    assert sample_text(409600, 800, "Once upon a time", " there was a cat.") == (
        '# sample at 409,600 tokens (step 800)\n# prompt: "Once upon a time"\n'
        "Once upon a time there was a cat.\n")
