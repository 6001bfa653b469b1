"""The search-space schema: study files, validation with YAML paths and lines, Optuna sampling,
grids and the conversion of a sample into a trainer config."""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import optuna
import pytest

from model.config import HPARAMS, TrainConfig
from tuner.errors import UserError
from tuner.search.searchers.algorithms import optuna_sampler
from tuner.space import SpaceError, Study, load_study, study_json_schema
from tuner.space.distributions import Choice, LogUniform, Uniform
from tuner.space.params import ALL_DEFS, shown_value, used_values

SPACES = Path(__file__).resolve().parents[1] / "search_spaces"
SHIPPED = sorted(SPACES.glob("*.yaml"))

optuna.logging.set_verbosity(optuna.logging.ERROR)


def study_text(hparams: str = "", *, model: str = "", budget: str = "", search: str = "",
               extra: str = "") -> str:
    """A small valid study with extra YAML lines (each already indented) in its sections."""
    return ("data:\n  source: synthetic\n"
            "model:\n  vocab_size: 512\n  context_length: 32\n  d_model: 32\n  num_layers: 1\n"
            f"  num_heads: 2\n{model}"
            f"hparams:\n  lr_max: 0.001\n{hparams}"
            f"budget:\n  {budget or 'total_iters: 200'}\n  eval_tokens: 5120\n"
            f"search:\n  num_samples: 4\n{search}{extra}")


def write(tmp_path: Path, text: str, name: str = "study.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def line_of(text: str, needle: str) -> int:
    """1-based line of the first line containing `needle`."""
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def issues_of(tmp_path: Path, text: str) -> list[tuple[str, int | None, str]]:
    with pytest.raises(SpaceError) as caught:
        load_study(write(tmp_path, text))
    return caught.value.issues


def active(name: str, params: dict) -> bool:
    """Whether the trainer uses `name` given the sampled optimizer and schedule (its `when`)."""
    when = ALL_DEFS[name].when
    return when is None or params.get(when[0], HPARAMS[when[0]].default) in when[1]


# --- the shipped studies ----------------------------------------------------------------------


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_study_samples_into_valid_trainer_configs(path: Path, tmp_path: Path) -> None:
    study = load_study(path)
    assert study.name == path.stem and study.source_path == path
    assert study.source_text == path.read_text()
    optuna_study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(5):
        trial = optuna_study.ask()
        config = study.trial_config(study.sample(trial), tmp_path)
        assert isinstance(config, TrainConfig) and config.data == str(tmp_path)
        optuna_study.tell(trial, config.lr_max)


def test_shipped_studies_are_the_ones_promised() -> None:
    assert {p.stem for p in SHIPPED} >= {"lm", "quickstart", "optimizers", "ablations"}
    lm = load_study(SPACES / "lm.yaml")
    m = lm.model
    assert (m.vocab_size, m.d_model, m.num_layers, m.num_heads, m.d_ff, m.context_length,
            m.rope_theta) == (10000, 512, 4, 16, 1344, 256, 10000.0)
    assert lm.budget.tokens == 327_680_000 and lm.data.source == "tinystories"
    assert set(lm.searched()) == {"lr_max", "lr_min_ratio", "warmup_fraction", "beta2",
                                  "weight_decay", "grad_clip", "batch_size"}
    assert isinstance(lm.hparams.lr_max, LogUniform)
    assert (lm.search.algorithm, lm.search.scheduler) == ("bohb", "asha")
    assert lm.search.study_budget.full_trials == 64 and lm.search.num_samples > 64
    assert 0 < lm.resources.gpus_per_trial < 1

    quick = load_study(SPACES / "quickstart.yaml")
    assert quick.data.source == "synthetic" and quick.search.study_budget.full_trials == 10
    assert quick.search.max_concurrent == 2 and quick.resources.cpus_per_trial == 1
    assert quick.resources.gpus_per_trial == 0 and isinstance(quick.hparams.batch_size, Choice)

    optimizers = load_study(SPACES / "optimizers.yaml")
    assert set(optimizers.hparams.optimizer.options()) == set(HPARAMS["optimizer"].choices)
    ablations = load_study(SPACES / "ablations.yaml")
    assert {"norm", "positions", "ffn"} <= set(ablations.searched())


# --- keys, values and errors ------------------------------------------------------------------


def test_keys_accept_the_name_the_symbol_or_an_alias(tmp_path: Path) -> None:
    by_name = load_study(write(tmp_path, study_text(
        "  beta2: 0.95\n  grad_clip: 0.5\n  batch_size: {choice: [8, 16]}\n"
        "  warmup_fraction: 0.1\n")))
    by_symbol = load_study(write(tmp_path, study_text(
        "  β2: 0.95\n  τ: 0.5\n  B: {choice: [8, 16]}\n  T_warmup/T_total: 0.1\n"
    ).replace("num_heads:", "h:").replace("lr_max:", "lr:")))
    assert by_symbol.hparams.given() == by_name.hparams.given()
    assert by_symbol.model.num_heads == 2 and by_symbol.hparams.lr_max == 0.001


def test_a_parameter_given_twice_is_an_error(tmp_path: Path) -> None:
    text = study_text("  α_max: 0.002\n")
    [(path, line, message)] = issues_of(tmp_path, text)
    assert path == "hparams" and line == line_of(text, "α_max:")  # the second, where it is
    assert "lr_max is given twice" in message


def test_an_issue_names_the_file_the_yaml_path_and_the_line(tmp_path: Path) -> None:
    text = study_text("  beta2: 1.0\n")
    with pytest.raises(SpaceError) as caught:
        load_study(write(tmp_path, text))
    err = caught.value
    assert isinstance(err, UserError)
    line = line_of(text, "beta2")
    assert err.issues == [("hparams.beta2", line, "β2 must be in [0, 1), got 1.0")]
    assert str(err) == (f"{tmp_path / 'study.yaml'}:{line}: "
                        "hparams.beta2: β2 must be in [0, 1), got 1.0")


def test_every_error_of_a_file_is_listed_in_file_order(tmp_path: Path) -> None:
    text = study_text("  beta2: 1.0\n  grad_clip: -1\n  betta1: 0.9\n",
                      search="  num_samples: many\n").replace("  num_samples: 4\n", "")
    issues = issues_of(tmp_path, text)
    assert [(p, line) for p, line, _ in issues] == [
        ("hparams.beta2", line_of(text, "beta2")),
        ("hparams.grad_clip", line_of(text, "grad_clip")),
        ("hparams.betta1", line_of(text, "betta1")), ("search.num_samples", line_of(text, "many"))]
    assert "did you mean 'beta1'" in issues[2].message


@pytest.mark.parametrize("hparams, key, fragment", [
    ("  lr_min: {loguniform: [1.0e-5, 1.0e-2]}\n", "lr_min", "every sample needs α_min ≤ α_max"),
    ("  lr_min: 0.0001\n  lr_min_ratio: 0.1\n", "lr_min_ratio", "not both"),
    ("  warmup_iters: 200\n", "warmup_iters", "T_warmup=200 must be below T_total=200"),
    ("  warmup_iters: {int: [0, 250]}\n", "warmup_iters", "T_warmup can be 250"),
    ("  warmup_iters: 50\n  cycle_iters: 40\n", "cycle_iters", "must exceed T_warmup"),
    ("  momentum: 0.9\n", "momentum", "used only when optimizer is sgd, lars or rmsprop"),
    ("  schedule: step\n  cycle_iters: 100\n", "cycle_iters", "but schedule is step"),
    ("  schedule: wsd\n  warmup_fraction: 0.5\n  decay_fraction: {uniform: [0.2, 0.6]}\n",
     "decay_fraction", "WSD's decay can start at step 80, inside a warmup of 100 steps"),
    ("  optimizer: {choice: [adamw, adam]}\n  lars_trust: 0.01\n", "lars_trust",
     "but optimizer is adamw or adam"),
    ("  beta2: {grid: [0.9, 0.99]}\n", "beta2", "search.algorithm grid only"),
])
def test_cross_field_errors_name_the_parameter(tmp_path: Path, hparams: str, key: str,
                                               fragment: str) -> None:
    text = study_text(hparams)
    [(path, line, message)] = issues_of(tmp_path, text)
    assert (path, line) == (f"hparams.{key}", line_of(text, f"  {key}:"))
    assert fragment in message


def test_an_empty_special_token_is_an_error(tmp_path: Path) -> None:
    text = study_text().replace("  source: synthetic\n",
                                "  source: synthetic\n  special_tokens: ['<|eot|>', '']\n")
    [(path, line, message)] = issues_of(tmp_path, text)
    assert path == "data.special_tokens[1]" and line == line_of(text, "special_tokens")
    assert "at least 1 character" in message


def test_data_paths_under_home_are_read_as_a_shell_would(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "in.txt").write_text("Once upon a time.\n")
    text = study_text().replace("  source: synthetic\n",
                                "  source: files\n  input: ~/in.txt\n  cache_dir: ~/cache\n")
    study = load_study(write(tmp_path, text))
    assert study.data.input == tmp_path / "in.txt" and study.data.cache_dir == tmp_path / "cache"
    [(path, _, message)] = issues_of(tmp_path, text.replace("~/cache", "~nosuchuser/cache"))
    assert path == "data.cache_dir" and message.startswith("cannot expand '~nosuchuser/cache'")


def test_the_grid_searcher_needs_grid_values(tmp_path: Path) -> None:
    text = study_text("  B: {int: [1, 64]}\n", search="  algorithm: grid\n")
    [(path, line, message)] = issues_of(tmp_path, text)
    assert (path, line) == ("hparams.batch_size", line_of(text, "B:"))
    assert "int cannot be enumerated" in message


def test_a_warm_start_needs_a_searcher_and_a_searched_space(tmp_path: Path) -> None:
    text = study_text(search="  warm_start: earlier\n")  # every value fixed
    [(path, _, message)] = issues_of(tmp_path, text)
    assert path == "search.warm_start" and "nothing is searched" in message
    assert load_study(write(tmp_path, study_text("  B: {choice: [8, 16]}\n",
                                                 search="  warm_start: earlier\n"))).searched()


def test_model_shape_is_checked_for_every_searched_combination(tmp_path: Path) -> None:
    text = study_text(model="  norm: {choice: [pre, post]}\n").replace(
        "num_heads: 2", "num_heads: {choice: [2, 3]}")
    [(path, line, message)] = issues_of(tmp_path, text)
    assert (path, line) == ("model.num_heads", line_of(text, "num_heads"))
    assert "num_heads=3 must divide d_model=32" in message


def test_a_condition_can_hold_for_some_samples(tmp_path: Path) -> None:
    study = load_study(write(tmp_path, study_text(
        "  optimizer: {choice: [adamw, sgd]}\n  momentum: {uniform: [0.8, 0.99]}\n")))
    assert list(study.searched()) == ["optimizer", "momentum"]


def test_yaml_1_1_spellings_are_read_as_meant(tmp_path: Path) -> None:
    study = load_study(write(tmp_path, study_text(
        "  eps: 1e-8\n  grad_clip: off\n  weight_decay: {loguniform: [1e-4, 1e-1]}\n")))
    assert study.hparams.eps == 1e-8 and study.hparams.grad_clip is None
    assert study.hparams.weight_decay.span() == (1e-4, 1e-1)


def test_exponents_are_numbers_in_whole_number_settings_too(tmp_path: Path) -> None:
    """YAML 1.2 reads 1e5 as a number, PyYAML (1.1) as a string, which the integer fields and
    the search settings refused ("must be a number, got '1e5'"); a quoted '1e5' stays text."""
    study = load_study(write(tmp_path, study_text(
        "  B: {choice: [8, 1.6e1]}\n", budget="tokens: 1.024e5",
        search="  scheduler: asha\n  asha: {grace_period: 2.048e4}\n")))
    assert study.budget.tokens == 102400 and study.search.asha.grace_period == 20480
    assert study.hparams.batch_size.options() == [8, 16]
    [(_, _, message)] = issues_of(tmp_path, study_text(budget="tokens: '1e5'"))
    assert "got '1e5'" in message


def test_numbers_read_as_yaml_1_2_reads_them(tmp_path: Path) -> None:
    """PyYAML (YAML 1.1) reads 010 as octal 8 and 1:30 as base 60, 90: values the writer did not
    mean, taken silently. They are 10 and the text '1:30', as in YAML 1.2; .5e1 is a number."""
    study = load_study(write(tmp_path, study_text(
        "  B: {choice: [08, 016]}\n  eps: .5e-8\n", budget="tokens: 0102400\n  seed: 010")))
    assert study.hparams.batch_size.options() == [8, 16] and study.hparams.eps == 5e-9
    assert study.budget.tokens == 102400 and study.budget.seed == 10
    [(path, _, message)] = issues_of(tmp_path, study_text(budget="tokens: 1:30"))
    assert path == "budget.tokens" and "got '1:30'" in message


def test_a_budget_is_tokens_or_total_iters(tmp_path: Path) -> None:
    text = study_text().replace("  total_iters: 200\n", "")
    [(path, line, message)] = issues_of(tmp_path, text)
    assert (path, line) == ("budget", line_of(text, "budget:"))
    assert message.startswith("set tokens or total_iters")
    [(path, _, message)] = issues_of(tmp_path, study_text(budget="tokens: 4096\n  T_total: 9"))
    assert (path, message) == ("budget", "give tokens or total_iters (T_total), not both")


def test_a_budget_is_an_exact_whole_number_within_bounds(tmp_path: Path) -> None:
    """5e28 read as a float is 49999999999999995716575428608, which an exported study wrote: a
    budget is at most 10**15, and a whole number past 2**53 must be given in digits."""
    text = study_text().replace("num_heads: 2", "num_heads: 5e28")
    [(path, _, message)] = issues_of(tmp_path, text)
    assert path == "model.num_heads" and "must be written in digits, got 5e+28" in message
    for tokens in ("5e28", "5" + "0" * 28, "1" + "0" * 400):
        [(path, _, message)] = issues_of(tmp_path, study_text(budget=f"tokens: {tokens}"))
        assert path == "budget.tokens" and "must be in [1, 1000000000000000]" in message
    study = load_study(write(tmp_path, study_text(budget="tokens: 1e15")))
    assert study.budget.tokens == 10**15 and isinstance(study.budget.tokens, int)


def test_a_study_file_and_its_texts_have_a_size_limit(tmp_path: Path) -> None:
    """A 50 MB description was taken, and `space show` printed it: a file is at most 1 MiB, a
    description or URI at most 10,000 characters."""
    text = study_text(extra=f"description: {'x' * 10_001}\n")
    [(path, line, message)] = issues_of(tmp_path, text)
    assert (path, line) == ("description", line_of(text, "description:"))
    assert message.startswith("string should have at most 10000 characters, got 'xxx")
    [(path, _, message)] = issues_of(tmp_path, study_text(
        extra=f"tracking: {{uri: 'sqlite:///{'x' * 10_000}'}}\n"))
    assert path == "tracking.uri" and "at most 10000 characters" in message
    [(path, line, message)] = issues_of(tmp_path, study_text(extra=f"# {'x' * 2**20}\n"))
    assert (path, line) == ("", None)
    assert message == "the study file is over 1 MiB: a study file holds settings, not data"
    assert load_study(write(tmp_path, study_text(extra=f"description: {'x' * 10_000}\n")))


def test_sections_other_than_parameters_are_checked(tmp_path: Path) -> None:
    text = study_text(
        extra="resources:\n  gpus_per_trial: 1.5\ntracking:\n  log_checkpoints: all\n")
    issues = issues_of(tmp_path, text)
    assert [p for p, _, _ in issues] == ["resources.gpus_per_trial", "tracking.log_checkpoints"]
    two = issues_of(tmp_path, study_text(extra="resources:\n  gpus_per_trial: 2\n"))
    message = "2: a trial trains on one GPU, so give at most 1 (a fraction such as 0.25 shares one)"
    assert [(p, m) for p, _, m in two] == [("resources.gpus_per_trial", message)]
    text = study_text(search="  scheduler: pbt\n  pbt:\n    params: [beta2]\n",
                      extra="data:\n  path: /nonexistent/dataset\n").replace(
        "data:\n  source: synthetic\n", "", 1)
    issues = issues_of(tmp_path, text)
    assert {(p, line) for p, line, _ in issues} == {
        ("data.path", line_of(text, "path:")),
        ("search.pbt.params[0]", line_of(text, "    params:"))}


def test_pbt_samples_at_random_and_perturbs_only_what_can_change_mid_run(tmp_path: Path) -> None:
    searched = ("  beta2: {uniform: [0.9, 0.99]}\n  batch_size: {choice: [8, 16]}\n"
                "  optimizer: {choice: [adamw, adam]}\n  warmup_iters: {int: [0, 20]}\n")
    text = study_text(searched, search="  algorithm: tpe\n  scheduler: pbt\n  startup_trials: 3\n"
                      "  pbt:\n    params: [beta2, batch_size, optimizer, warmup_iters]\n")
    issues = issues_of(tmp_path, text)
    assert [p for p, _, _ in issues] == ["search.algorithm", "search.startup_trials",
                                         "search.pbt.params[1]", "search.pbt.params[2]",
                                         "search.pbt.params[3]"]
    assert "this study uses random" in issues[1][2]
    assert "cannot change mid-run" in issues[2][2] and "cannot change mid-run" in issues[3][2]
    assert "warmup_iters takes whole numbers" in issues[4][2]
    study = load_study(write(tmp_path, study_text(searched, search="  scheduler: pbt\n")))
    assert study.search.searcher == "random" and study.search.pbt.params == ["beta2"]


def test_hyperband_takes_no_concurrency_limit_nor_brackets(tmp_path: Path) -> None:
    """HyperBand pauses trials until their bracket catches up: a limit would starve it. It sizes
    its own brackets: ASHA's count would do nothing."""
    issues = issues_of(tmp_path, study_text(search="  scheduler: hyperband\n  max_concurrent: 2\n"
                                                   "  asha:\n    brackets: 4\n"
                                                   "    reduction_factor: 2.5\n"))
    assert [p for p, _, _ in issues] == ["search.max_concurrent", "search.asha.brackets",
                                         "search.asha.reduction_factor"]


def test_data_settings_another_source_ignores_are_errors(tmp_path: Path) -> None:
    """A seed only seeds the synthetic corpus; a validation share needs no validation text."""
    text = study_text().replace("  source: synthetic\n", f"  source: files\n  input: {__file__}\n"
                                f"  valid: {__file__}\n  valid_fraction: 0.1\n  seed: 3\n")
    assert [p for p, _, _ in issues_of(tmp_path, text)] == ["data.valid_fraction", "data.seed"]
    text = study_text().replace("synthetic\n", "tinystories\n  valid_fraction: 0.1\n")
    assert [(p, m) for p, _, m in issues_of(tmp_path, text)] == [
        ("data.valid_fraction", "not used: the validation text is TinyStories' own")]


def test_a_trained_tokenizer_counts_the_default_special_token(tmp_path: Path) -> None:
    """prepare keeps <|endoftext|> unless data.special_tokens says otherwise: 256 tokens leave no
    room for it (found by validation, not by `tuner search` naming a flag it lacks)."""
    text = study_text().replace("vocab_size: 512", "vocab_size: 256")
    assert [(p, m) for p, _, m in issues_of(tmp_path, text)] == [
        ("model.vocab_size", ("vocab_size=256 is smaller than 256 bytes + 1 special tokens; "
                              "use at least 257"))]
    load_study(write(tmp_path, text.replace("  source: synthetic\n",
                                            "  source: synthetic\n  special_tokens: []\n")))


def test_a_special_token_of_one_byte_is_refused(tmp_path: Path) -> None:
    text = study_text().replace("  source: synthetic\n",
                                "  source: synthetic\n  special_tokens: ['$']\n")
    assert [(p, m) for p, _, m in issues_of(tmp_path, text)] == [
        ("data.special_tokens", ("'$' is a single byte, a token already; a special token "
                                 "needs two bytes or more"))]


def test_a_given_tokenizer_must_have_the_datasets_vocabulary_size(tmp_path: Path) -> None:
    """A tokenizer of 257 tokens (bytes and <|endoftext|>) for a model of 512: the dataset's
    size is the tokenizer's, which data.vocab_size gives (the model may be padded past it)."""
    from model.tokenizer import Tokenizer

    Tokenizer({i: bytes([i]) for i in range(256)}, []).save(tmp_path / "tok")
    text = study_text().replace("  source: synthetic\n",
                                f"  source: synthetic\n  tokenizer: {tmp_path / 'tok'}\n")
    assert [(p, m) for p, _, m in issues_of(tmp_path, text)] == [
        ("model.vocab_size", (f"the tokenizer in {tmp_path / 'tok'} has 257 tokens (special "
                              "tokens included), not 512: set data.vocab_size: 257 "
                              "(model.vocab_size may be larger)"))]
    load_study(write(tmp_path, text.replace("  source: synthetic\n",
                                            "  source: synthetic\n  vocab_size: 257\n")))
    missing = text.replace(str(tmp_path / "tok"), str(tmp_path / "none"))
    assert [p for p, _, _ in issues_of(tmp_path, missing)] == ["data.tokenizer"]


def test_trials_are_ranked_by_val_loss_only(tmp_path: Path) -> None:
    """Stopping, searching, divergence and the best trial all minimise val_loss."""
    issues = issues_of(tmp_path, study_text(search="  metric: val_ppl\n  mode: max\n"))
    assert [p for p, _, _ in issues] == ["search.metric", "search.mode"]


# --- sampling ---------------------------------------------------------------------------------


def conditional_study(tmp_path: Path) -> Study:
    return load_study(write(tmp_path, study_text(
        "  optimizer: {choice: [adamw, sgd, lars]}\n"
        "  lr_max: {loguniform: [1.0e-4, 1.0e-1]}\n"
        "  lr_min_ratio: {uniform: [0.0, 0.5]}\n"
        "  beta2: {uniform: [0.9, 0.999]}\n"
        "  momentum: {uniform: [0.5, 0.99]}\n"
        "  lars_trust: {loguniform: [1.0e-4, 1.0e-2]}\n"
        "  warmup_fraction: {uniform: [0.0, 0.2]}\n"
        "  B: {int: [4, 32], step: 4}\n").replace("  lr_max: 0.001\n", "")))


SAMPLERS = ("tpe", "bohb", "random", "cmaes", "qmc", "gp")  # grid: tests/test_search_algorithms.py

@pytest.mark.parametrize("name", ["random", "qmc", "tpe"])
def test_another_seed_draws_other_trials(name: str) -> None:
    """QMC's seed scrambles its sequence: unscrambled, every seed draws the same points."""
    def draws(seed: int) -> list[float]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # QMC is experimental
            study = optuna.create_study(sampler=optuna_sampler(name, seed))
            study.optimize(lambda t: t.suggest_float("x", 1e-4, 1e-2, log=True), n_trials=5)
        return [t.params["x"] for t in study.trials]

    assert draws(0) == draws(0)
    assert all(a != b for a, b in zip(draws(0)[1:], draws(1)[1:]))


def test_pbt_population_draws_stepped_ints_from_the_space(tmp_path: Path) -> None:
    """PBT's population comes from Tune's domains: a stepped int keeps the space's values
    lo + k·step (Tune's qrandint would round to multiples of step instead)."""
    import numpy as np

    from tuner.search.searchers.algorithms import tune_space

    study = load_study(write(tmp_path, study_text("  warmup_iters: {int: [12, 36], step: 8}\n")))
    domain = tune_space(study)["warmup_iters"]
    drawn = {domain.sample(random_state=np.random.RandomState(seed)) for seed in range(40)}
    assert drawn == {12, 20, 28, 36}


@pytest.mark.parametrize(("grace", "max_t"), [(300000, 1), (180000, 1), (136534, 1), (136533, 3),
                                              (40960, 9), (45511, 9), (45512, 3)])
def test_hyperband_runs_to_the_full_budget(tmp_path: Path, grace: int, max_t: int) -> None:
    """HyperBand's max_t is a power of η (3) units, the budget: Ray truncates max_t·η^-s to set a
    bracket's rungs, so a budget of 10 grace periods stopped its survivors at 9."""
    from tuner.search.searchers.algorithms import build_scheduler, time_unit

    search = f"  scheduler: hyperband\n  asha: {{grace_period: {grace}}}\n"
    study = load_study(write(tmp_path, study_text(budget="tokens: 409600", search=search)
                             .replace("  eval_tokens: 5120\n", "  eval_tokens: 40960\n")))
    scheduler = build_scheduler(study)
    assert scheduler._max_t_attr == max_t
    assert scheduler._max_t_attr * time_unit(study) == pytest.approx(study.full_trial_tokens())
    assert time_unit(study) >= grace  # no trial stops before its grace period


def test_a_grid_runs_each_point_once(tmp_path: Path) -> None:
    text = study_text("  B: {grid: [8, 16]}\n", search="  algorithm: grid\n")
    assert load_study(write(tmp_path, text.replace("  num_samples: 4\n", ""))
                      ).search.num_samples == 2
    [(path, _, message)] = issues_of(tmp_path, text)
    assert path == "search.num_samples" and "4 trials, but the grid has 2 points" in message


def test_startup_trials_sets_when_tpe_starts_modelling() -> None:
    def suggestions(startup_trials: int | None) -> list[float]:
        study = optuna.create_study(sampler=optuna_sampler("tpe", 0, startup_trials))
        study.optimize(lambda t: (t.suggest_float("x", 0.0, 1.0) - 0.3) ** 2, n_trials=6)
        return [t.params["x"] for t in study.trials]

    default, early = suggestions(None), suggestions(3)
    assert early[:3] == default[:3]  # the same seeded random start-up
    assert all(a != b for a, b in zip(early[3:], default[3:]))  # then TPE's, not random, draws


@pytest.mark.parametrize("name", SAMPLERS)
def test_every_optuna_sampler_draws_valid_conditional_samples(name: str, tmp_path: Path) -> None:
    if name == "cmaes":
        pytest.importorskip("cmaes")
    study = conditional_study(tmp_path)
    space = study.searched()

    def objective(trial: optuna.trial.Trial) -> float:
        params = study.sample(trial)
        assert set(params) == {n for n in space if active(n, params)}
        for n, v in params.items():
            if isinstance(space[n], (LogUniform, Uniform)):
                assert space[n].lo <= v <= space[n].hi
        config = study.trial_config(params, tmp_path)
        assert config.batch_size % 4 == 0 and config.lr_min <= config.lr_max
        return config.lr_max * config.batch_size

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # experimental-sampler and independent-sampling notices
        optuna_study = optuna.create_study(sampler=optuna_sampler(name, 0, startup_trials=3))
        optuna_study.optimize(objective, n_trials=5)
    assert len(optuna_study.trials) == 5
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in optuna_study.trials)


def test_conditional_parameters_follow_their_parent(tmp_path: Path) -> None:
    study = conditional_study(tmp_path)
    optuna_study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    seen = set()
    for _ in range(40):
        trial = optuna_study.ask()
        params = study.sample(trial)
        seen.add(params["optimizer"])
        assert ("momentum" in params) == (params["optimizer"] in ("sgd", "lars"))
        assert ("lars_trust" in params) == (params["optimizer"] == "lars")
        assert ("beta2" in params) == (params["optimizer"] == "adamw")
        optuna_study.tell(trial, 0.0)
    assert seen == {"adamw", "sgd", "lars"}


def test_grid_enumerates_conditional_points_for_the_grid_searcher(tmp_path: Path) -> None:
    study = load_study(write(tmp_path, study_text(
        "  optimizer: {grid: [adamw, sgd]}\n  momentum: {grid: [0.8, 0.9, 0.95]}\n"
        "  beta2: {grid: [0.95, 0.99]}\n", search="  algorithm: grid\n").replace(
        "  num_samples: 4\n", "")))
    points = study.grid_points()
    assert len(points) == 2 + 3 and study.search.num_samples == 5
    assert {"optimizer": "sgd", "momentum": 0.9} in points
    assert {"optimizer": "adamw", "beta2": 0.99} in points

    space = {name: dist.options() for name, dist in study.searched().items()}
    optuna_study = optuna.create_study(sampler=optuna.samplers.GridSampler(space, seed=0))
    optuna_study.optimize(lambda t: study.trial_config(study.sample(t), tmp_path).lr_max,
                          n_trials=2 * 3 * 2)
    sampled = [t.params for t in optuna_study.trials]
    assert all(p in sampled for p in points)


def test_a_grid_too_large_to_run_is_refused_without_building_it(tmp_path: Path) -> None:
    """20^7 points (1.28·10^9) would take every byte of memory to list: counted to the limit."""
    values = "{grid: [" + ", ".join(str(0.01 * k) for k in range(1, 21)) + "]}"
    names = ("beta1", "weight_decay", "dropout", "label_smoothing", "grad_clip",
             "warmup_fraction", "lr_min_ratio")
    text = study_text("".join(f"  {name}: {values}\n" for name in names),
                      search="  algorithm: grid\n").replace("  num_samples: 4\n", "")
    [(path, line, message)] = issues_of(tmp_path, text)
    assert (path, line) == ("search.algorithm", line_of(text, "algorithm: grid"))
    assert message.startswith("the grid has more than 100,000 points, each a trial")


# --- conversion -------------------------------------------------------------------------------


def test_a_sample_becomes_a_concrete_trainer_config(tmp_path: Path) -> None:
    study = load_study(write(tmp_path, study_text(
        "  lr_min_ratio: 0.2\n  warmup_fraction: {uniform: [0.0, 0.5]}\n  B: {choice: [8, 16]}\n",
        budget="tokens: 40960", extra="resources:\n  device: cpu\n")))
    config = study.trial_config({"warmup_fraction": 0.25, "batch_size": 16}, tmp_path / "data")
    assert config.total_tokens == 40960 and config.steps == 40960 // (16 * 32)
    assert config.warmup_iters == int(0.25 * config.steps)
    assert config.lr_min == pytest.approx(0.2 * 0.001)
    assert (config.batch_size, config.model.d_model, config.eval_tokens) == (16, 32, 5120)
    assert config.device == "cpu" and config.data == str(tmp_path / "data")
    assert not config.deterministic
    assert config.peak_flops is None  # the GPU's own peak, looked up by its name
    assert config.compile == "auto"  # on a GPU, not on the CPU
    exact = load_study(write(tmp_path, study_text(
        extra="resources:\n  deterministic: true\n  peak_flops: 1.25e14\n  compile: true\n"),
        "exact.yaml"))
    assert exact.trial_config({}, tmp_path).deterministic
    assert exact.trial_config({}, tmp_path).peak_flops == 1.25e14  # a GPU it does not know
    assert exact.trial_config({}, tmp_path).compile


@pytest.mark.parametrize(("gpus", "device"), [(0, "cpu"), (0.25, "auto")])
def test_auto_device_takes_cuda_only_with_a_gpu_reserved(tmp_path: Path, gpus: float,
                                                         device: str) -> None:
    """Ray lets a trial without GPUs see its node's: `auto` trains such a trial on the CPU."""
    study = load_study(write(tmp_path, study_text(
        extra=f"resources:\n  device: auto\n  gpus_per_trial: {gpus}\n")))
    assert study.trial_config({}, tmp_path).device == device


def test_a_value_whose_condition_fails_is_dropped_from_the_trial(tmp_path: Path) -> None:
    """PBT draws every searched parameter; β2 drawn for an SGD trial is not used or recorded."""
    study = load_study(write(tmp_path, study_text(
        "  optimizer: {choice: [adamw, sgd]}\n  beta2: {uniform: [0.9, 0.99]}\n")))
    assert study.used({"optimizer": "sgd", "beta2": 0.95}) == {"optimizer": "sgd"}
    assert study.used({"optimizer": "adamw", "beta2": 0.95}) == {"optimizer": "adamw",
                                                                 "beta2": 0.95}
    assert study.trial_config({"optimizer": "sgd", "beta2": 0.95}, tmp_path).beta2 == \
        HPARAMS["beta2"].default


def test_a_trial_records_only_the_parameters_its_config_trains_with(tmp_path: Path) -> None:
    """A trial run's params: those whose condition holds, and the budget fields set."""
    study = load_study(write(tmp_path, study_text(
        "  optimizer: {choice: [adamw, sgd]}\n  schedule: {choice: [cosine, step]}\n",
        budget="tokens: 40960")))
    sgd = used_values(study.trial_config({"optimizer": "sgd", "schedule": "step"}, tmp_path))
    assert {"momentum", "step_gamma", "step_size", "eval_tokens", "total_tokens"} <= set(sgd)
    assert not {"beta1", "beta2", "lars_trust", "cycle_iters", "plateau_factor", "total_iters",
                "eval_interval"} & set(sgd)
    adamw = used_values(study.trial_config({"optimizer": "adamw", "schedule": "cosine"}, tmp_path))
    assert {"beta1", "beta2", "lr_min", "d_model", "seed", "grad_clip"} <= set(adamw)
    assert not {"momentum", "step_gamma", "exp_rate"} & set(adamw)
    # None stands for T_total: no param (the rule: None only where it turns a setting off)
    assert "cycle_iters" not in adamw
    config = study.trial_config({"optimizer": "adamw", "schedule": "cosine"}, tmp_path)
    assert used_values(dataclasses.replace(config, grad_clip=None))["grad_clip"] is None  # off
    assert set(adamw) < set(HPARAMS) and adamw["d_model"] == 32


def test_an_invalid_sample_is_rejected_naming_the_parameter(tmp_path: Path) -> None:
    study = load_study(write(tmp_path, study_text(
        "  beta2: {uniform: [0.9, 0.999]}\n  warmup_iters: {int: [0, 100]}\n")))
    with pytest.raises(UserError, match="beta2"):
        study.trial_config({"beta2": 1.02}, tmp_path)  # e.g. a PBT perturbation
    with pytest.raises(UserError, match="warmup_iters"):
        study.trial_config({"warmup_iters": 300}, tmp_path)
    with pytest.raises(UserError, match="eps"):
        study.trial_config({"eps": 1e-6}, tmp_path)


def test_overrides_revalidate_and_resolved_is_plain_json(tmp_path: Path) -> None:
    study = load_study(write(tmp_path, study_text("  B: {choice: [8, 16]}\n")))
    other = study.with_overrides(name="other", num_samples=7, seed=None, tracking_uri="file:/tmp/x")
    assert (other.name, other.tracking.experiment) == ("other", "other")
    assert other.search.num_samples == 7
    assert other.tracking.uri == "file:/tmp/x" and other.source_text == study.source_text
    assert study.name == "study" and study.search.num_samples == 4
    with pytest.raises(SpaceError) as caught:
        study.with_overrides(max_concurrent=0)
    assert [(p, line) for p, line, _ in caught.value.issues] == [("--max-concurrent", None)]
    assert str(caught.value).startswith("--max-concurrent: ")  # the flag gave it, not the file
    bracketed = load_study(write(tmp_path, study_text(search="  asha:\n    brackets: 2\n"),
                                 "bracketed.yaml"))
    with pytest.raises(SpaceError) as caught:  # a flag's issue beside one of the file's
        bracketed.with_overrides(scheduler="hyperband", max_concurrent=2)
    assert sorted(str(caught.value).splitlines()) == [
        ("--max-concurrent: hyperband pauses trials until their bracket catches up, so only the "
         "resources may bound how many run at once: remove max_concurrent"),
        (f"{tmp_path / 'bracketed.yaml'}: search.asha.brackets: only used by the asha "
         "scheduler: hyperband sizes its brackets itself")]

    resolved = json.loads(json.dumps(study.resolved()))
    assert resolved["hparams"]["batch_size"] == {"choice": [8, 16]}
    assert resolved["tracking"]["experiment"] == "study"
    assert resolved["search"]["asha"]["grace_period"] == study.full_trial_tokens() // 9


def test_data_section_maps_onto_prepare_dataset(tmp_path: Path) -> None:
    study = load_study(write(tmp_path, study_text().replace(
        "  source: synthetic\n", "  source: synthetic\n  synthetic_bytes: 100000\n  seed: 3\n")))
    assert study.data.prepare_kwargs() == {"source": "synthetic", "synthetic_bytes": 100000,
                                           "seed": 3, "vocab_size": 512}


def test_json_schema_checks_study_files() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    import yaml

    schema = study_json_schema()
    validator = jsonschema.Draft202012Validator(schema)
    for path in SHIPPED:
        assert not list(validator.iter_errors(yaml.safe_load(path.read_text()))), path
    bad = yaml.safe_load(study_text("  β2: 1.0\n  betta1: 0.9\n  B: {choice: []}\n"))
    assert {tuple(e.path) for e in validator.iter_errors(bad)} == {
        ("hparams",), ("hparams", "β2"), ("hparams", "B")}
    sections = [schema, *schema["$defs"].values()]
    undescribed = [name for section in sections for name, field in section["properties"].items()
                   if not field.get("description")]
    assert not undescribed
    assert "[0, 1)" in schema["$defs"]["HParamsSection"]["properties"]["β2"]["description"]


@pytest.mark.parametrize(("name", "value", "text"), [
    ("grad_clip", None, "off"), ("grad_clip", "None", "off"), ("lr_min", None, "null"),
    ("decay_all", "True", "true"), ("decay_all", False, "false"), ("grad_clip", "1.0", "1"),
    ("lr_max", "0.0057142857", "0.005714"), ("batch_size", "16", "16"),
    ("optimizer", "adamw", "adamw")])
def test_searched_values_are_shown_in_the_study_files_words(name: str, value: object,
                                                            text: str) -> None:
    """Tables and progress lines showed Python's None and True, and a logged 1.0 as 1.0 beside
    the 1 of the live lines."""
    assert shown_value(name, value) == text


def test_a_switch_shows_its_range_as_true_or_false() -> None:
    assert ALL_DEFS["decay_all"].range_text() == "true, false"  # it said "any"


def test_pasha_and_topk_settings_are_checked_naming_the_field(tmp_path: Path) -> None:
    """PASHA reads ASHA's section but grows one bracket; top-K's budget is below a full trial and
    its k below num_samples; another scheduler's topk section is refused; defaults filled in."""
    issues = issues_of(tmp_path, study_text(search="  scheduler: pasha\n  asha:\n    brackets: 2\n"
                                                   "  topk:\n    k: 2\n"))
    assert [(p, m.split(":")[0]) for p, _, m in issues] == [
        ("search.asha.brackets", "only used by the asha scheduler"),
        ("search.topk", "settings of the topk scheduler, but the scheduler is pasha")]
    issues = issues_of(tmp_path, study_text(search="  scheduler: topk\n  topk:\n"
                                                   "    budget: 1000000000\n    k: 4\n"))
    assert [p for p, _, _ in issues] == ["search.topk.budget", "search.topk.k"]
    assert "must be below a full trial's" in issues[0][2]
    assert "4 of 4 trials would let every trial train to the end" in issues[1][2]
    topk = load_study(write(tmp_path, study_text(search="  scheduler: topk\n")))
    full = topk.full_trial_tokens()
    assert (topk.search.topk.budget, topk.search.topk.k) == (full // 9, 1)
    pasha = load_study(write(tmp_path, study_text(search="  scheduler: pasha\n")))
    assert pasha.search.asha.grace_period == int(full / 9)
