"""`tuner space validate | show | schema` through `python -m tuner`: exit codes and messages.

Each bad study file exits 2 with `FILE:LINE: yaml.path: message` and starts nothing: the working
folder holds nothing but the study file afterwards (no MLflow store, no Ray results). So does a bad
command-line option of any command."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted((REPO / "search_spaces").glob("*.yaml"))

GOOD = """\
data:
  source: synthetic
model:
  vocab_size: 512
  context_length: 32
  d_model: 32
  num_layers: 1
  num_heads: 2
hparams:
  lr_max: {loguniform: [1.0e-4, 1.0e-2]}
  B: {choice: [8, 16]}
budget:
  total_iters: 200
  eval_tokens: 5120
"""


def tuner(*args: str, cwd: Path, columns: int = 200) -> subprocess.CompletedProcess:
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "COLUMNS": str(columns)}
    return subprocess.run([sys.executable, "-m", "tuner", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)


# (id, the study's text, the line the error is on, the YAML path, a fragment of the message)
BAD = [
    ("malformed-yaml", GOOD.replace("  B: {choice: [8, 16]}", "  B: {choice: [8, 16]"), 12, "",
     "not valid YAML"),
    ("unknown-key", GOOD + "search:\n  schedular: asha\n", 16, "search.schedular",
     "unknown key 'schedular' (did you mean 'scheduler'?)"),
    ("wrong-type", GOOD.replace("total_iters: 200", "total_iters: many"), 13, "budget.total_iters",
     "T_total must be a number, got 'many'"),
    ("lo-not-below-hi", GOOD.replace("[1.0e-4, 1.0e-2]", "[1.0e-2, 1.0e-4]"), 10, "hparams.lr_max",
     "loguniform needs lo < hi, got [0.01, 0.0001]"),
    ("loguniform-lo-not-positive", GOOD.replace("[1.0e-4, 1.0e-2]", "[0, 1.0e-2]"), 10,
     "hparams.lr_max", "loguniform needs lo > 0"),
    ("range-of-one-value", GOOD.replace("[1.0e-4, 1.0e-2]", "5"), 10, "hparams.lr_max",
     "loguniform needs [lo, hi]"),  # not pydantic's "Input should be a valid tuple"
    ("int-range-of-fractions", GOOD.replace("{choice: [8, 16]}", "{int: [0.5, 16]}"), 11,
     "hparams.batch_size", "int lower bound must be a whole number, got 0.5"),
    ("choice-of-one-value", GOOD.replace("{choice: [8, 16]}", "{choice: 8}"), 11,
     "hparams.batch_size", "choice needs a list of values"),
    ("beta2-is-1", GOOD.replace("  B:", "  β2: 1\n  B:"), 11, "hparams.beta2",
     "β2 must be in [0, 1), got 1.0"),
    ("negative-clip", GOOD.replace("  B:", "  τ: -0.5\n  B:"), 11, "hparams.grad_clip",
     "τ must be > 0 (or off), got -0.5"),
    ("empty-choice", GOOD.replace("[8, 16]", "[]"), 11, "hparams.batch_size",
     "choice needs at least one value"),
    ("momentum-for-adamw", GOOD.replace("  B:", "  optimizer: adamw\n  momentum: 0.9\n  B:"), 12,
     "hparams.momentum", "γ_momentum is used only when optimizer is sgd, lars or rmsprop"),
    ("floor-of-step-schedule", GOOD.replace("  B:", "  schedule: step\n  lr_min_ratio: 0.1\n  B:"),
     12, "hparams.lr_min_ratio", "α_min/α_max is used only when schedule is cosine, "
     "cosine_restarts, plateau or wsd"),
    ("warmup-fraction-1", GOOD.replace("  B:", "  warmup_fraction: 1.0\n  B:"), 11,
     "hparams.warmup_fraction", "T_warmup/T_total must be in [0, 1), got 1.0"),
    ("steps-apart-with-searched-batch", GOOD.replace("eval_tokens: 5120", "eval_interval: 20"),
     14, "budget.eval_interval", "batch_size searched: every 20 steps is a different number of "
     "tokens for each trial, so the asha scheduler would compare trials at unequal tokens; set "
     "budget.eval_tokens instead (e.g. 10240, every 20 steps at the largest batch)"),
    ("steps-and-tokens",
     GOOD.replace("eval_tokens: 5120", "eval_tokens: 5120\n  eval_interval: 20"), 14,
     "budget.eval_tokens", "give eval_interval (steps) or eval_tokens, not both"),
    ("no-report-before-the-end", GOOD.replace("eval_tokens: 5120", "eval_tokens: 51200"), 14,
     "budget.eval_tokens", "a trial of 51200 tokens would not report before it ends"),
    ("startup-trials-of-random-search",
     GOOD + "search:\n  algorithm: random\n  startup_trials: 5\n", 17, "search.startup_trials",
     "used by the tpe, gp and bohb searchers only, and this study uses random"),
    ("heads-do-not-divide", GOOD.replace("num_heads: 2", "num_heads: 3"), 8, "model.num_heads",
     "num_heads=3 must divide d_model=32"),
    # too many to check combination by combination (8,161 values; 1,017 × 4 heads × 8 layers)
    ("heads-do-not-divide-a-long-range", GOOD.replace("d_model: 32", "d_model: {int: [32, 8192]}"),
     8, "model.num_heads", "num_heads=2 must divide d_model=33"),
    ("odd-heads-of-a-long-range", GOOD.replace("d_model: 32", "d_model: {int: [64, 8192], step: 8}")
     .replace("num_heads: 2", "num_heads: {choice: [2, 4, 8, 16]}")
     .replace("num_layers: 1", "num_layers: {int: [1, 8]}"), 8, "model.num_heads",
     "RoPE needs an even head size (d_model/num_heads = 9) (when d_model=72, num_heads=8)"),
    ("true-as-a-bound", GOOD.replace("[1.0e-4, 1.0e-2]", "[false, 1.0e-2]"), 10, "hparams.lr_max",
     "loguniform bounds and step must be numbers, got false"),
    ("true-as-a-count", GOOD + "search:\n  num_samples: true\n", 16, "search.num_samples",
     "must be a number, got true"),
    ("infinite-reduction", GOOD + "search:\n  asha: {reduction_factor: .inf}\n", 16,
     "search.asha.reduction_factor", "input should be a finite number, got inf"),
    ("infinite-exponent", GOOD + "resources:\n  cpus_per_trial: 1e400\n", 16,
     "resources.cpus_per_trial", "input should be a finite number, got inf"),
    ("trainer-seed-past-32-bits",
     GOOD.replace("eval_tokens: 5120", "eval_tokens: 5120\n  seed: 1.0e+23"), 15, "budget.seed",
     "seed must be in [0, 4294967295]"),
    ("searcher-seed-past-32-bits", GOOD + "search:\n  seed: 4294967296\n", 16, "search.seed",
     "input should be less than or equal to 4294967295"),
    ("width-typo", GOOD.replace("d_model: 32", "d_model: 6400000000"), 6, "model.d_model",
     "d_model must be in [1, 65536], got 6400000000"),
    ("hyperband-section", GOOD + "search:\n  scheduler: hyperband\n  hyperband: {}\n", 17,
     "search.hyperband", "unknown key 'hyperband': HyperBand takes its grace_period and "
     "reduction_factor from search.asha"),
    ("empty-tracking-uri", GOOD + "tracking:\n  uri: ''\n", 16, "tracking.uri",
     "string should have at least 1 character, got ''"),
    ("empty-experiment", GOOD + "tracking:\n  experiment: ''\n", 16, "tracking.experiment",
     "string should have at least 1 character, got ''"),
    ("batch-range-past-its-bound", GOOD.replace("{choice: [8, 16]}", "{int: [8, 100000000000]}"),
     11, "hparams.batch_size",
     "B must be in [1, 1048576], got 100000000000 (the upper bound of int)"),
    ("empty-range", GOOD.replace("{loguniform: [1.0e-4, 1.0e-2]}", "{uniform: []}"), 10,
     "hparams.lr_max", "uniform needs [lo, hi]\n"),  # once
    ("empty-distribution", GOOD.replace("{choice: [8, 16]}", "{}"), 11, "hparams.batch_size",
     "a distribution is exactly one of {loguniform: …}, {uniform: …}, {int: …}, {choice: …}, "
     "{grid: …}, {transfer: …}; got an empty mapping"),
    ("fractional-count", GOOD + "search:\n  num_samples: 2.5\n", 16, "search.num_samples",
     "input should be a valid integer, got a number with a fractional part (2.5)"),
    # quoted, a number stays text (docs/study-file.md), in every kind of setting
    ("quoted-constant", GOOD.replace("  B:", "  β2: '0.99'\n  B:"), 11, "hparams.beta2",
     "β2 must be a number, got '0.99'"),
    ("quoted-bound", GOOD.replace("[1.0e-4, 1.0e-2]", "['1e-4', 1.0e-2]"), 10, "hparams.lr_max",
     "loguniform bounds and step must be numbers, got '1e-4'"),
    ("quoted-count", GOOD + "search:\n  num_samples: '4'\n", 16, "search.num_samples",
     "must be a number, got '4'"),
    ("null-section", GOOD.replace("hparams:\n  lr_max: {loguniform: [1.0e-4, 1.0e-2]}\n"
                                  "  B: {choice: [8, 16]}\n", "hparams: null\n"), 9, "hparams",
     "must be a mapping of keys to values, got nothing (null)"),
]


def test_forks_past_the_budget_are_refused_naming_the_most_that_fit(tmp_path: Path) -> None:
    """`budget.forks: 1000` passed `tuner space validate`, then every trial failed as it started
    (exit 1): refused by both commands, before Ray starts, naming the most forks that fit; that
    many pass, and the trainer takes one more as the check does (refused)."""
    from model.config import ConfigError
    from tuner.space import load_study

    wsd = GOOD.replace("  B: {choice: [8, 16]}\n", "  B: {choice: [8, 16]}\n  schedule: wsd\n")
    (tmp_path / "study.yaml").write_text(wsd + "  forks: 1000\n")
    for args in (["space", "validate", "study.yaml"], ["search", "--space", "study.yaml"]):
        result = tuner(*args, cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert ("budget.forks: K_fork=1000: the shortest fork's run, of 0 steps "
                "(⌊T_total/(K_fork+1)⌋, T_total 200), would decay for no step; at most 39 fit "
                "this budget") in result.stderr
        assert os.listdir(tmp_path) == ["study.yaml"]  # no store, no Ray's folder
    (tmp_path / "study.yaml").write_text(wsd + "  forks: 39\n")
    study = load_study(tmp_path / "study.yaml")
    config = study.trial_config({"batch_size": 8, "lr_max": 1e-3}, tmp_path)
    config.validate()
    with pytest.raises(ConfigError, match="K_fork=40"):
        replace(config, forks=40).validate()


SHORT = [  # (id, the study, the one line both commands print)
    # the probe's advice for 8,192 tokens at context 64 was B {choice: [32, 64, 128]}: 1 step
    ("trials-of-one-step", GOOD.replace("context_length: 32", "context_length: 64").replace(
        "[8, 16]", "[32, 64, 128]").replace("total_iters: 200", "tokens: 8192").replace(
        "eval_tokens: 5120", "eval_tokens: 2048"),
     ("budget.tokens: at B 128 and context 64 a trial of 8,192 tokens is 1 step (8,192 tokens a "
      "step), and a trial needs 10 at least (a warmup or first rung of 10% is a step): train "
      "longer, or use a smaller B")),
    ("an-evaluation-a-step-at-the-largest-b", GOOD.replace("[8, 16]", "[8, 16, 512]"),
     ("hparams.batch_size: B can be 512: at B 512 and context 32 a trial of 3,276,800 tokens is "
      "200 steps (16,384 tokens a step), and 640 evaluations (every 5,120 tokens) need a step "
      "each; search smaller B's, or train longer")),
]


@pytest.mark.parametrize("text, message", [s[1:] for s in SHORT], ids=[s[0] for s in SHORT])
def test_trials_too_short_for_their_schedule_are_refused_by_both_commands(
        tmp_path: Path, text: str, message: str) -> None:
    """A study whose trials, at its largest B and context, are shorter than 10 steps or than a
    step per evaluation: `space validate` and `search` exit 2 with one line naming the field (B
    where a smaller one would do, else the budget) and the steps it leaves; nothing is made.
    `search` says it after the memory check (tests/test_memory_fit.py)."""
    (tmp_path / "study.yaml").write_text(text)
    for args, prefix in ((["space", "validate", "study.yaml"], "study.yaml: "),
                         (["search", "--space", "study.yaml"], "")):
        result = tuner(*args, cwd=tmp_path)
        assert result.returncode == 2, result.stdout + result.stderr
        assert " ".join(result.stderr.split()) == f"error: {prefix}{message}", result.stderr
        assert os.listdir(tmp_path) == ["study.yaml"]  # no store, no Ray's folder


@pytest.mark.parametrize("text, line, path, fragment", [b[1:] for b in BAD],
                         ids=[b[0] for b in BAD])
def test_a_bad_study_exits_2_naming_file_line_and_path(tmp_path: Path, text: str, line: int,
                                                       path: str, fragment: str) -> None:
    (tmp_path / "study.yaml").write_text(text)
    result = tuner("space", "validate", "study.yaml", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    where = f"study.yaml:{line}: {path}: " if path else f"study.yaml:{line}: "
    assert f"error: {where}{fragment}" in result.stderr
    assert result.stdout == "" and os.listdir(tmp_path) == ["study.yaml"]  # nothing started


@pytest.mark.parametrize(("args", "message"), [
    (["search", "--space", "study.yaml", "--num-samples", "0"],
     "Invalid value for '--num-samples': Input should be greater than or equal to 1"),
    (["search", "--space", "study.yaml", "--storage", "study.yaml"],
     "Invalid value for '--storage': study.yaml is a file, not a folder"),
    (["search", "--space", "study.yaml", "--storage", ""],  # a Path of it: the current folder
     "Invalid value for '--storage': empty: give a folder (. for the current one)"),
    (["report", "--study", "s", "--out", "s3://bucket/reports"],  # (--storage takes one)
     "Invalid value for '--out': s3://bucket/reports is a URI: give a folder of a file"),
    (["report", "--study", "s", "--out", ""],
     "Invalid value for '--out': empty: give a folder"),
    (["data", "prepare", "--source", "synthetic", "--vocab-size", "300", "--cache-dir", ""],
     "Invalid value for '--cache-dir': empty: give a folder"),
    (["search", "--space", "study.yaml", "--sead", "1"], "No such option: --sead"),
    (["space", "show"], "Missing argument 'path'"),
    (["serach"], "No such command 'serach'")], ids=lambda v: "-".join(v) if isinstance(v, list)
    else None)
def test_a_bad_option_exits_2_naming_it(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "study.yaml").write_text(GOOD)
    result = tuner(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert f"Error: {message}" in result.stderr and "Traceback" not in result.stderr
    assert os.listdir(tmp_path) == ["study.yaml"]


@pytest.mark.parametrize("flag, text", [
    ("--name", "n" * 101), ("--tracking-uri", ""), ("--tracking-uri", "sqlite://"),
    ("--tracking-uri", "sqlite:///:memory:")],
    ids=["name-past-100", "empty-uri", "in-memory-uri", "in-memory-uri-file-form"])
def test_a_flag_that_would_fail_the_study_after_ray_starts_exits_2(tmp_path: Path, flag: str,
                                                                  text: str) -> None:
    """A name past 100 characters (too long for a folder beside Tune's suffixes), an empty
    tracking URI (an unset shell variable; it was ignored) and an in-memory one (the study ran,
    its records gone with the driver) are refused up front."""
    (tmp_path / "study.yaml").write_text(GOOD)
    result = tuner("search", "--space", "study.yaml", flag, text, cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.startswith(f"error: {flag}: "), result.stderr
    assert ("at most 100 of them" if flag == "--name" else "at least 1 character" if not text
            else "is an in-memory database") in result.stderr
    assert os.listdir(tmp_path) == ["study.yaml"]


def test_a_file_whose_stem_is_no_study_name_takes_the_name_flag(tmp_path: Path) -> None:
    """A file that gives no name takes its stem, and a copy's ("lm copy") is no study name: the
    message says where the name came from, and --name stands in for it."""
    (tmp_path / "lm copy.yaml").write_text(GOOD)
    result = tuner("space", "validate", "lm copy.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert "the study takes the file's name when it gives none: add name: to it (or pass " \
           "tuner search --name)" in result.stderr
    (tmp_path / "ray" / "lm2").mkdir(parents=True)
    (tmp_path / "ray" / "lm2" / "tuner.pkl").touch()  # a study lm2 there: refused by its name
    result = tuner("search", "--space", "lm copy.yaml", "--name", "lm2", "--storage", "ray",
                   cwd=tmp_path)
    assert result.returncode == 2
    assert "study 'lm2' already exists in" in " ".join(result.stderr.split()), result.stderr


def test_yaml_nested_too_deeply_exits_2(tmp_path: Path) -> None:
    (tmp_path / "study.yaml").write_text(GOOD + "description: " + "[" * 5000 + "]" * 5000 + "\n")
    result = tuner("space", "validate", "study.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == "error: study.yaml: not valid YAML: nested too deeply\n"


BOMB = ("&i [&h [&g [&f [&e [&d [&c [&b [&a [x, x, x, x, x, x, x, x, x]"
        + "".join(f", *{n}, *{n}, *{n}, *{n}, *{n}, *{n}, *{n}, *{n}]" for n in "abcdefgh"))
"""A YAML alias "billion laughs": 9**9 strings when expanded, a few hundred bytes as written."""


def test_a_yaml_alias_bomb_is_quoted_short(tmp_path: Path) -> None:
    """Its repr in the message would take minutes and gigabytes: the message quotes it shortened."""
    (tmp_path / "study.yaml").write_text(GOOD + f"search:\n  num_samples: {BOMB}\n")
    result = tuner("space", "validate", "study.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert "search.num_samples: input should be a valid integer, got [[[...]" in result.stderr
    assert len(result.stderr) < 1000
    (tmp_path / "train.yaml").write_text(f"data: {tmp_path}\ntotal_iters: 10\nbeta2: {BOMB}\n")
    trainer = subprocess.run([sys.executable, "-m", "model.train", "--config", "train.yaml"],
                             cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
                             capture_output=True, text=True, timeout=60, check=False)
    assert trainer.returncode == 2
    assert trainer.stderr.startswith("error: beta2: β2 must be a number, got [[[...]")


def test_an_error_quoting_a_uri_masks_its_password(tmp_path: Path) -> None:
    (tmp_path / "study.yaml").write_text(GOOD + 'tracking: "postgresql://u:s3cret@db/mlflow"\n')
    result = tuner("space", "validate", "study.yaml", cwd=tmp_path)
    assert result.returncode == 2 and "postgresql://u:***@db/mlflow" in result.stderr
    assert "s3cret" not in result.stderr


def test_a_password_in_a_section_given_as_a_list_is_masked_before_it_is_cut(
        tmp_path: Path) -> None:
    """The message shortens a long value: its password is masked first, or the cut (which drops
    the `@` that marks it) would leave part of it in clear."""
    uri = "postgresql://admin:Kq8vZ2mR7xW4pL9nT3bY6c@db-primary.prod.internal.example.com/mlflow"
    (tmp_path / "study.yaml").write_text(GOOD + f"tracking:\n  - uri: {uri}\n")
    result = tuner("space", "validate", "study.yaml", cwd=tmp_path)
    assert result.returncode == 2 and "tracking: must be a mapping" in result.stderr
    assert "Kq8vZ" not in result.stderr and "postgresql://admin:***@" in result.stderr


@pytest.mark.parametrize("value", ["2024-02-30", '!!int "abc"', "1" * 5000])
def test_a_yaml_value_its_tag_cannot_build_exits_2_naming_the_file(tmp_path: Path,
                                                                    value: str) -> None:
    (tmp_path / "study.yaml").write_text(GOOD + f"description: {value}\n")
    result = tuner("space", "validate", "study.yaml", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "study.yaml" in result.stderr and "not valid YAML: " in result.stderr


def test_an_output_path_that_cannot_be_written_exits_2_naming_it(tmp_path: Path) -> None:
    result = tuner("space", "schema", "--out", "missing/schema.json", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "error: missing/schema.json: No such file or directory" in result.stderr
    assert os.listdir(tmp_path) == []


def test_aliases_used_a_billion_times_over_are_checked_once(tmp_path: Path) -> None:
    """A YAML alias is one node: walking it at every use (10^9 here) would never finish."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    (tmp_path / "study.yaml").write_text(GOOD + "\n".join(lines) + "\n")
    result = tuner("space", "validate", "study.yaml", cwd=tmp_path)
    assert result.returncode == 2 and "a8: unknown key 'a8'" in result.stderr


def test_a_missing_study_file_exits_2(tmp_path: Path) -> None:
    result = tuner("space", "show", "absent.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert "absent.yaml: cannot read the study file" in result.stderr
    assert os.listdir(tmp_path) == []


def test_a_study_or_data_file_that_is_not_a_regular_file_exits_2_unread(tmp_path: Path) -> None:
    """/dev/zero was read without end (a MemoryError) and a FIFO waited for ever for a writer.
    The commands run with their memory and time bounded, so that a regression fails here."""
    import resource

    def one_gib() -> None:
        resource.setrlimit(resource.RLIMIT_DATA, (1 << 30, 1 << 30))

    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "data.yaml").write_text(GOOD.replace(
        "source: synthetic", "source: files\n  input: /dev/zero\n  valid: fifo"))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    study_file = "cannot read the study file: not a regular file"
    for args, said in ((["space", "show", "/dev/zero"], f"/dev/zero: {study_file}"),
                       (["space", "validate", "fifo"], f"fifo: {study_file}"),
                       (["search", "--space", "fifo"], f"fifo: {study_file}"),
                       (["space", "validate", "data.yaml"], "data.input: /dev/zero is not a "
                                                            "regular file"),
                       (["space", "validate", "data.yaml"], "data.valid: fifo is not a regular")):
        result = subprocess.run([sys.executable, "-m", "tuner", *args], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=60, preexec_fn=one_gib)
        assert result.returncode == 2 and said in result.stderr, result.stderr
    assert sorted(os.listdir(tmp_path)) == ["data.yaml", "fifo"]


def test_validate_lists_every_error_of_every_file(tmp_path: Path) -> None:
    (tmp_path / "good.yaml").write_text(GOOD)
    (tmp_path / "bad.yaml").write_text(GOOD.replace("  B:", "  β2: 1\n  betta1: 0.9\n  B:"))
    result = tuner("space", "validate", "good.yaml", "bad.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert "good.yaml: ok: study good searches lr_max, batch_size" in result.stdout
    errors = result.stderr.splitlines()
    assert errors == ["error: bad.yaml:11: hparams.beta2: β2 must be in [0, 1), got 1.0",
                      "error: bad.yaml:12: hparams.betta1: unknown key 'betta1' "
                      "(did you mean 'beta1'?)"]


def test_validate_checks_the_dataset_folder_as_search_does(tmp_path: Path,
                                                            byte_dataset: Path) -> None:
    """A model too small for the folder's vocabulary, or a folder that is no dataset, fails
    `validate` as it would fail `tuner search`."""
    (tmp_path / "fits.yaml").write_text(GOOD.replace(
        "source: synthetic", f"path: {byte_dataset}").replace("vocab_size: 512", "vocab_size: 256"))
    (tmp_path / "small.yaml").write_text(GOOD.replace(
        "source: synthetic", f"path: {byte_dataset}").replace("vocab_size: 512", "vocab_size: 200"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty.yaml").write_text(GOOD.replace("source: synthetic", "path: empty"))
    result = tuner("space", "validate", "fits.yaml", "small.yaml", "empty.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert "fits.yaml: ok: study fits" in result.stdout
    errors = " ".join(result.stderr.split())
    assert (f"error: small.yaml:4: model.vocab_size: 200 is smaller than the dataset's vocabulary "
            f"(256 in {byte_dataset / 'meta.json'})") in errors
    assert f"error: empty.yaml: {tmp_path / 'empty' / 'meta.json'}: missing" in errors


def test_the_shipped_studies_validate() -> None:
    """From the repository's root, where their comments run them (transfer.yaml's text file is
    a path from there)."""
    result = tuner("space", "validate", *map(str, SHIPPED), cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(": ok: ") == len(SHIPPED)


def test_show_tabulates_symbol_name_value_range_and_description(tmp_path: Path) -> None:
    result = tuner("space", "show", str(REPO / "search_spaces" / "lm.yaml"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for column in ("symbol", "name", "value or distribution", "valid range", "description"):
        assert column in out
    assert "α_max" in out and "lr_max" in out and "loguniform(0.0001, 0.01)" in out
    assert "β2" in out and "[0, 1)" in out and "decay of the second-moment average" in out
    assert "γ_momentum" not in out  # adamw never uses it
    rows = {line.split("│")[2].strip() for line in out.splitlines() if line.count("│") > 3}
    assert not rows & {"eval_interval", "total_iters"}  # eval_tokens and tokens are set
    assert "decay_all" in out and "true, false" in out  # its range said "any"
    assert "bohb + asha, 256 trials" in out


def test_show_in_80_columns_cuts_no_value(tmp_path: Path) -> None:
    """Symbol and name share a column; long values and descriptions wrap instead of ending in …"""
    result = tuner("space", "show", str(REPO / "search_spaces" / "lm.yaml"), cwd=tmp_path,
                   columns=80)
    assert result.returncode == 0, result.stderr
    from rich.cells import cell_len  # terminal cells: "v̂" is two code points in one cell

    assert max(map(cell_len, result.stdout.splitlines())) <= 80 and "…" not in result.stdout
    assert "symbol / name" in result.stdout
    for name in ("warmup_fraction", "lr_min_ratio", "weight_decay", "context_length"):
        assert re.search(rf"^│ {name} +│", result.stdout, re.MULTILINE), name


def test_schema_prints_the_json_schema(tmp_path: Path) -> None:
    result = tuner("space", "schema", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    schema = json.loads(result.stdout)
    assert schema["$schema"].startswith("https://json-schema.org/")
    hparams = schema["$defs"]["HParamsSection"]
    assert hparams["additionalProperties"] is False
    assert {"beta2", "β2", "grad_clip", "τ", "lr", "α_max"} <= set(hparams["properties"])
    assert set(schema["required"]) == {"data", "budget"}
