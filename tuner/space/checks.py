"""The checks that span fields or sections of a study, each naming a YAML path: conditions,
α_min ≤ α_max, warmup < total, the model's shape, grid vs searcher, scheduler, resources, data."""

from __future__ import annotations

import itertools
import math
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model.bpe import DEFAULT_SPECIAL_TOKENS, check_special_tokens, check_vocab_size
from model.config import RELATIVE_FORMS, ConfigError, HParam, ModelConfig, fraction_of
from tuner.errors import UserError
from tuner.space.convert import (
    candidates,
    iter_grid,
    searched,
    span,
    steps_range,
    tokens_range,
    value,
)
from tuner.space.distributions import Distribution, Grid, IntRange, either, fmt
from tuner.space.params import ALL_DEFS, BUDGET_DEFS, MODEL_DEFS

if TYPE_CHECKING:
    from tuner.space.sections import StudySections

Loc = tuple[str | int, ...]
MAX_MODEL_COMBINATIONS = 20_000  # beyond this the model's shape is checked per sample only
SHAPE_FIELDS = ("d_model", "num_heads", "positions")  # the model fields ModelConfig relates
MAX_GRID = 100_000  # grid points, each a trial (and counted one by one to check this)
SCHEDULER_SETTINGS = {"asha": ("asha", "pasha", "hyperband"), "median": ("median",),
                      "topk": ("topk",), "pbt": ("pbt",)}
PBT_DEFAULT_PERTURB = ("lr_max", "beta2", "weight_decay")
PBT_GROUPS = ("optimizer", "regularization", "schedule")  # what can change as a trial trains
STARTUP_SEARCHERS = ("tpe", "gp", "bohb")  # the searchers that wait for search.startup_trials


def study_issues(study: StudySections) -> list[tuple[Loc, str]]:
    """Every cross-field problem of a study whose fields are each valid on their own."""
    issues = [*_data(study), *_exclusive(study), *_conditions(study), *_model_shape(study),
              *_lr_floor(study), *_search(study), *_transfer(study), *_resources(study)]
    budget = study.budget
    if (budget.tokens is None) == (budget.total_iters is None):
        return [*issues, (("budget",), "give tokens or total_iters (T_total), not both"
                          if budget.tokens else "set tokens or total_iters (T_total): how long a "
                          "full trial trains")]
    return [*issues, *_steps(study), *_evaluations(study), *_scheduler_tokens(study)]


def _section(name: str) -> str:
    return "model" if name in MODEL_DEFS else "hparams"


def _data(study: StudySections) -> list[tuple[Loc, str]]:
    data = study.data
    given = data.model_fields_set - {"path"}
    if (data.path is None) == (data.source is None):
        return [(("data",), "give path or source, not both" if data.path else "set path (a "
                 "prepared dataset folder) or source (files, synthetic or tinystories)")]
    if data.path is not None:
        issues = [(("data", key), "only used with source, not with path") for key in sorted(given)]
        if not data.path.is_dir():
            where = "" if data.path.is_absolute() else \
                f" (read from the current folder, {Path.cwd()})"
            issues.append((("data", "path"), f"no dataset folder at {data.path}{where}"))
        return issues
    issues = []
    if data.source == "files" and data.input is None:
        issues.append((("data", "source"), "source files needs input: a training text file"))
    for key in ("input", "valid"):
        file = getattr(data, key)
        if file is not None and data.source != "files":
            issues.append((("data", key), "only used with source files"))
        elif file is not None and not file.exists():
            issues.append((("data", key), f"no file at {file}"))
        elif file is not None and not stat.S_ISREG(file.stat().st_mode):  # /dev/zero, a FIFO
            issues.append((("data", key), f"{file} is not a regular file; name a text file"))
    for key in ("synthetic_bytes", "seed"):
        if getattr(data, key) is not None and data.source != "synthetic":
            issues.append((("data", key), "only used with source synthetic"))
    if data.valid_fraction is not None and (data.valid is not None or data.source == "tinystories"):
        issues.append((("data", "valid_fraction"), "not used: the validation text is "
                       + ("the valid file" if data.valid is not None else "TinyStories' own")))
    model_vocab = int(span(study, "vocab_size")[0])
    where = ("data", "vocab_size") if data.vocab_size is not None else ("model", "vocab_size")
    specials = DEFAULT_SPECIAL_TOKENS if data.special_tokens is None else data.special_tokens
    try:
        check_special_tokens(specials)
    except ValueError as err:
        issues.append((("data", "special_tokens"), str(err)))
    if data.tokenizer is None:  # a BPE tokenizer of this size is trained
        try:
            check_vocab_size(data.vocab_size or model_vocab, specials)
        except ValueError as err:
            issues.append((where, str(err)))
    else:
        issues += _tokenizer_size(data.tokenizer, specials, data.vocab_size or model_vocab, where)
    if data.vocab_size is not None and data.vocab_size > model_vocab:
        issues.append((where, f"a tokenizer of {data.vocab_size} tokens needs model.vocab_size ≥ "
                       f"{data.vocab_size}, got {model_vocab}"))
    return issues


def _tokenizer_size(folder: Path, specials: list[str] | tuple[str, ...], vocab_size: int,
                    where: Loc) -> list[tuple[Loc, str]]:
    """The tokenizer the data section names must have the vocabulary size the dataset is given
    (data.vocab_size, or model.vocab_size, which may be larger: padded)."""
    from tuner.datasets import read_tokenizer  # numpy and the tokenizer: only when named

    try:
        size = read_tokenizer(folder, specials).vocab_size
    except UserError as err:
        return [(("data", "tokenizer"), str(err))]
    if size == vocab_size:
        return []
    return [(where, (f"the tokenizer in {folder} has {size} tokens (special tokens included), "
                     f"not {vocab_size}: set data.vocab_size: {size} (model.vocab_size may be "
                     "larger)"))]


def _exclusive(study: StudySections) -> list[tuple[Loc, str]]:
    given = study.hparams.model_fields_set
    return [(("hparams", form), f"give {name} or {form}, not both")
            for form, name in RELATIVE_FORMS.items() if name in given and form in given]


def unused(study: StudySections) -> set[Loc]:
    """The settings this study never uses, which its file may not give: another scheduler's
    section, startup_trials of a searcher without a start-up phase, the twin of a relative form
    given (warmup_iters beside warmup_fraction), and every parameter whose condition no value of
    its parent meets (momentum under AdamW)."""
    search = study.search
    found: set[Loc] = {("search", key) for key, users in SCHEDULER_SETTINGS.items()
                       if search.scheduler not in users}
    if search.searcher not in STARTUP_SEARCHERS:
        found.add(("search", "startup_trials"))
    given = study.hparams.model_fields_set
    for form, name in RELATIVE_FORMS.items():  # one of a pair given: the other is not used
        found |= {("hparams", other) for one, other in ((form, name), (name, form)) if one in given}
    return found | {(_section(name), name) for name in ALL_DEFS if _unmet(study, name)}


def _unmet(study: StudySections, name: str, defs: dict[str, HParam] = ALL_DEFS
           ) -> list[object] | None:
    """The values the parameter's parent can take when none meets its condition, else None."""
    when = defs[name].when
    possible = None if when is None else candidates(study, when[0])
    return possible if possible is not None and not set(possible) & set(when[1]) else None


def _conditions(study: StudySections) -> list[tuple[Loc, str]]:
    issues = []
    for section, defs in ((study.model, ALL_DEFS), (study.hparams, ALL_DEFS),
                          (study.budget, BUDGET_DEFS)):
        for name in section.given():
            possible = _unmet(study, name, defs)
            if possible is not None:
                (parent, values), symbol = defs[name].when, defs[name].symbol
                where = ("budget", name) if defs is BUDGET_DEFS else (_section(name), name)
                issues.append((where, f"{symbol} is used only when {parent} "
                               f"is {either(values)}, but {parent} is {either(possible)}: "
                               "remove it"))
    return issues


def _model_shape(study: StudySections) -> list[tuple[Loc, str]]:
    """ModelConfig's rules over every combination of the fields they relate (d_model, num_heads,
    positions); the other fields, each checked alone as the file reads, at one value. Of a
    d_model range, its first 2·h values for the largest h: they hold every remainder that
    dividing by h and an even head size depend on."""
    counts = {name: MAX_MODEL_COMBINATIONS if name in SHAPE_FIELDS else 1 for name in MODEL_DEFS}
    if isinstance(value(study, "d_model"), IntRange):
        counts["d_model"] = 2 * max(_shape_options(study, "num_heads", MAX_MODEL_COMBINATIONS))
    options = {name: _shape_options(study, name, count) for name, count in counts.items()}
    if math.prod(len(o) for o in options.values()) > MAX_MODEL_COMBINATIONS:
        return []
    searched_names = [n for n in SHAPE_FIELDS if isinstance(value(study, n), Distribution)]
    problems: dict[str, str] = {}
    for combo in itertools.product(*options.values()):
        shape = dict(zip(options, combo, strict=True))
        try:
            ModelConfig(**shape).validate()
        except ConfigError as err:
            unsaid = [f"{n}={fmt(shape[n])}" for n in searched_names if f"{n}=" not in err.message]
            problems.setdefault(err.field, err.message + (f" (when {', '.join(unsaid)})" if unsaid
                                                          else ""))
    return [(tuple(field.split(".")), message) for field, message in problems.items()]


def _shape_options(study: StudySections, name: str, count: int) -> list[Any]:
    """The first `count` values a model field can take (its bounds are checked as the file is
    read); a range's from its start, a choice's in the order given."""
    v = value(study, name)
    if not isinstance(v, Distribution):
        return [v]
    if isinstance(v, IntRange):
        return v.first(count)
    return (v.options() or [v.span()[0]])[:count]


def _lr_floor(study: StudySections) -> list[tuple[Loc, str]]:
    floor, peak = span(study, "lr_min"), span(study, "lr_max")
    if floor is None or floor[1] <= peak[0]:
        return []
    if floor[0] == floor[1] and peak[0] == peak[1]:
        message = f"α_min={fmt(floor[1])} must not exceed α_max={fmt(peak[0])}"
    else:
        message = (f"α_min can be {fmt(floor[1])} while α_max can be {fmt(peak[0])}: every sample "
                   "needs α_min ≤ α_max (search lr_min_ratio instead)")
    return [(("hparams", "lr_min"), message)]


def _steps(study: StudySections) -> list[tuple[Loc, str]]:
    hparams = study.hparams
    fewest, most = steps_range(study)
    issues = []
    warmup = span(study, "warmup_iters")[1]
    if "warmup_iters" in hparams.model_fields_set and warmup >= fewest:
        fixed = not isinstance(hparams.warmup_iters, Distribution) and fewest == most
        issues.append((("hparams", "warmup_iters"), f"T_warmup={warmup} must be below T_total="
                       f"{fewest}" if fixed else f"T_warmup can be {fmt(warmup)} but T_total can "
                       f"be {fewest}: warmup must end before training does"))
    if "warmup_fraction" in hparams.model_fields_set:
        warmup = fraction_of(span(study, "warmup_fraction")[1], most)
    cycle = span(study, "cycle_iters")
    if cycle is not None and "cycle_iters" in hparams.model_fields_set and cycle[0] <= warmup:
        issues.append((("hparams", "cycle_iters"), f"T_cycle can be {fmt(cycle[0])}, but it must "
                       f"exceed T_warmup, which can be {fmt(warmup)}"))
    if "decay_fraction" in hparams.model_fields_set:
        issues += _decay_after_warmup(study, fewest, most)
    if study.budget.forks and "wsd" in (candidates(study, "schedule") or []):
        issues += _forks(study, fewest, most)
    return issues


def _forks(study: StudySections, fewest: int, most: int) -> list[tuple[Loc, str]]:
    """The shortest WSD fork, the run of ⌊T_total/(K_fork+1)⌋ steps, must start its decay after
    the main run's warmup and decay for a step at least (as the trainer checks each trial): the
    message names the most forks that fit."""
    forks = study.budget.forks
    problem = _fork_problem(study, forks, fewest, most)
    if problem is None:
        return []
    fits = next((k for k in range(forks - 1, 0, -1)
                 if _fork_problem(study, k, fewest, most) is None), 0)
    advice = (f"at most {fits} fit{'s' if fits == 1 else ''} this budget" if fits
              else "none fits this budget (train longer, or set forks: 0)")
    return [(("budget", "forks"), f"K_fork={forks}: {problem}; {advice}")]


def _fork_problem(study: StudySections, forks: int, fewest: int, most: int) -> str | None:
    """Why `forks` forks cannot work for some T_total from `fewest` to `most` (None: they can)."""
    low, high = span(study, "decay_fraction")
    fraction = "warmup_fraction" in study.hparams.model_fields_set
    for total in (fewest, most):
        shortest = total // (forks + 1)
        warmup = (fraction_of(span(study, "warmup_fraction")[1], total) if fraction
                  else span(study, "warmup_iters")[1])
        start = shortest - fraction_of(high, shortest)
        if fraction_of(low, shortest) == 0:
            return (f"the shortest fork's run, of {shortest} steps (⌊T_total/(K_fork+1)⌋, "
                    f"T_total {total}), would decay for no step")
        if start < max(warmup, 1):
            return (f"the shortest fork's run, of {shortest} steps (⌊T_total/(K_fork+1)⌋, "
                    f"T_total {total}), would start its decay at step {start}, inside the "
                    f"warmup of {warmup} steps")
    return None


def _decay_after_warmup(study: StudySections, fewest: int, most: int) -> list[tuple[Loc, str]]:
    """WSD's decay, T_total − ⌊f_decay·T_total⌋ on, must not start inside the warmup."""
    decay = span(study, "decay_fraction")[1]
    fraction = "warmup_fraction" in study.hparams.model_fields_set
    for total in (fewest, most):
        warmup = (fraction_of(span(study, "warmup_fraction")[1], total) if fraction
                  else span(study, "warmup_iters")[1])
        start = total - fraction_of(decay, total)
        if start < warmup:
            return [(("hparams", "decay_fraction"), f"f_decay can be {fmt(decay)}, so WSD's decay "
                     f"can start at step {start}, inside a warmup of {fmt(warmup)} steps")]
    return []


def _evaluations(study: StudySections) -> list[tuple[Loc, str]]:
    """Evaluations in steps or tokens; a scheduler needs reports before the end, at the same
    token counts for every trial (a searched batch size or context needs eval_tokens)."""
    budget, scheduler = study.budget, study.search.scheduler
    if budget.eval_tokens is not None and "eval_interval" in budget.model_fields_set:
        return [(("budget", "eval_tokens"), "give eval_interval (steps) or eval_tokens, not both")]
    if scheduler == "none":
        return []
    if budget.eval_tokens is not None:
        key, every, unit = "eval_tokens", budget.eval_tokens, "tokens"
        fewest = tokens_range(study)[0]
    else:
        key, every, unit = "eval_interval", budget.eval_interval, "steps"
        fewest = steps_range(study)[0]
    if every >= fewest:
        return [(("budget", key), f"a trial of {fewest} {unit} would not report before it ends "
                 f"({key} {every}), so the {scheduler} scheduler could not compare trials")]
    if key == "eval_tokens":
        return []
    varied = [name for name in ("batch_size", "context_length") if name in searched(study)]
    if varied:
        (_, b_hi), (_, c_hi) = span(study, "batch_size"), span(study, "context_length")
        return [(("budget", "eval_interval"), f"{' and '.join(varied)} searched: every "
                 f"{budget.eval_interval} steps is a different number of tokens for each trial, so "
                 f"the {scheduler} scheduler would compare trials at unequal tokens; set "
                 f"budget.eval_tokens instead (e.g. {int(budget.eval_interval * b_hi * c_hi)}, "
                 f"every {budget.eval_interval} steps at the largest batch)")]
    return []


def _search(study: StudySections) -> list[tuple[Loc, str]]:
    search, space = study.search, searched(study)
    issues = []
    for name, dist in space.items():
        loc = (_section(name), name)
        if isinstance(dist, Grid) and search.searcher != "grid":
            issues.append((loc, "{grid: [...]} is enumerated by search.algorithm grid only, and "
                           f"this study uses {search.searcher}: write {{choice: [...]}}"))
        elif search.searcher == "grid" and not isinstance(dist, Grid):
            issues.append((loc, f"search.algorithm grid enumerates {{grid: [...]}} values; "
                           f"{dist.key} cannot be enumerated"))
    if search.startup_trials is not None and search.searcher not in STARTUP_SEARCHERS:
        issues.append((("search", "startup_trials"), "used by the tpe, gp and bohb searchers only, and "
                       f"this study uses {search.searcher}"))
    if search.searcher == "grid" and not space:
        issues.append((("search", "algorithm"), "grid has nothing to enumerate: no parameter "
                       "is {grid: [...]}"))
    elif search.searcher == "grid" and not issues:
        size = sum(1 for _ in itertools.islice(iter_grid(study), MAX_GRID + 1))
        if size > MAX_GRID:
            issues.append((("search", "algorithm"), (
                f"the grid has more than {MAX_GRID:,} points, each a trial: give fewer grid "
                "values, or search the space with tpe or random")))
        elif search.num_samples is not None and search.num_samples > size:
            issues.append((("search", "num_samples"), (
                f"{search.num_samples} trials, but the grid has {size} points and runs each once: "
                f"set at most {size}, or leave num_samples out")))
    for key, users in SCHEDULER_SETTINGS.items():
        if key in search.model_fields_set and search.scheduler not in users:
            issues.append((("search", key), f"settings of the {' and '.join(users)} scheduler, but "
                           f"the scheduler is {search.scheduler}"))
    if search.scheduler == "hyperband" and search.max_concurrent is not None:
        issues.append((("search", "max_concurrent"), "hyperband pauses trials until their bracket "
                       "catches up, so only the resources may bound how many run at once: "
                       "remove max_concurrent"))
    if search.scheduler in ("hyperband", "pasha") and "brackets" in search.asha.model_fields_set:
        why = "hyperband sizes its brackets itself" if search.scheduler == "hyperband" else \
            "pasha grows one bracket's top rung"
        issues.append((("search", "asha", "brackets"), f"only used by the asha scheduler: {why}"))
    if search.scheduler == "topk" and search.topk.k is not None and search.num_samples is not None \
            and search.topk.k >= search.num_samples:
        issues.append((("search", "topk", "k"), f"{search.topk.k} of {search.num_samples} trials "
                       "would let every trial train to the end: set k below num_samples, or "
                       "use scheduler none"))
    if search.scheduler == "hyperband" and not float(search.asha.reduction_factor).is_integer():
        why = "hyperband needs a whole number: Ray rounds its rungs down, short of the budget"
        issues.append((("search", "asha", "reduction_factor"), why))
    if search.scheduler == "pbt":
        issues += _pbt(study, space)
    if search.start_near is not None:
        issues += _start_near(search)
    if search.warm_start is not None and (search.scheduler == "pbt" or not space):
        why = "pbt draws its population without a searcher" if space else "nothing is searched"
        issues.append((("search", "warm_start"), f"{why}: there is nothing to warm-start"))
    return issues


def _start_near(search: Any) -> list[tuple[Loc, str]]:
    """A prior-centred start needs an earlier study, leaves a grid its own points, and fits
    within the study's samples."""
    loc = ("search", "start_near")
    if search.warm_start is None:
        return [(loc, "starts near an earlier study's best: give search.warm_start in the "
                 "file too")]
    if search.algorithm == "grid":
        return [(loc, "grid runs its own points: use another searcher to start near a best")]
    if search.num_samples is not None and search.start_near > search.num_samples:
        return [(loc, f"{search.start_near} trials, but the study runs {search.num_samples}: "
                 "set at most num_samples")]
    return []


def _transfer(study: StudySections) -> list[tuple[Loc, str]]:
    """A transfer study lists one size, trains every sample to the full budget at each (the
    α–loss curves compare only so), and its trials are not a searcher's history to start from."""
    listed = list(study.model.transferred())
    if not listed:
        return []
    issues: list[tuple[Loc, str]] = [(("model", name), f"transfer one size at a time: "
                                      f"{listed[0]} is transferred already")
                                     for name in listed[1:]]
    search = study.search
    if search.scheduler != "none":
        issues.append((("search", "scheduler"), f"a transfer study trains every sample to the "
                       f"full budget at each {listed[0]}, so that its loss curves compare: set "
                       f"none (or leave the scheduler out), not {search.scheduler}"))
    if search.warm_start is not None:
        issues.append((("search", "warm_start"), "a transfer study's searcher learns from its "
                       "first size only: start it fresh"))
    if listed[0] == "d_model" and "d_ff" in study.model.model_fields_set \
            and study.model.d_ff is not None:
        issues.append((("model", "d_ff"), "d_ff would stay fixed while d_model transfers: "
                       "remove it (≈8/3·d_model at each width)"))
    return issues


def _scheduler_tokens(study: StudySections) -> list[tuple[Loc, str]]:
    fewest, issues = tokens_range(study)[0], []
    for key, setting in (("asha", "grace_period"), ("median", "grace_period"),
                         ("topk", "budget"), ("pbt", "perturbation_interval")):
        tokens = getattr(getattr(study.search, key), setting)
        if tokens is not None and tokens >= fewest:
            issues.append((("search", key, setting), f"{tokens} tokens must be below a full "
                           f"trial's {fewest}"))
    return issues


def _pbt(study: StudySections, space: dict[str, Distribution]) -> list[tuple[Loc, str]]:
    search, issues = study.search, []
    if "algorithm" in search.model_fields_set and search.algorithm != "random":
        issues.append((("search", "algorithm"), f"pbt draws its population at random, not with "
                       f"{search.algorithm}: remove search.algorithm or set it to random"))
    names = search.pbt.params
    if names is None:
        if any(name in space for name in PBT_DEFAULT_PERTURB):
            return issues
        return issues + [(("search", "scheduler"), "pbt perturbs searched parameters, by default "
                          "α_max, β2 and λ, and none of them is searched: list them in "
                          "search.pbt.params")]
    for i, name in enumerate(names):
        hp = ALL_DEFS.get(name)
        if name not in space:
            issues.append((("search", "pbt", "params", i), f"{name} is not searched, so PBT "
                           "cannot perturb it"))
        elif hp.group not in PBT_GROUPS or hp.choices is not None or hp.kind is bool:
            issues.append((("search", "pbt", "params", i), f"PBT changes a trial's "
                           f"hyperparameters as it trains: {name} cannot change mid-run (PBT "
                           "perturbs optimizer, regularization and schedule numbers)"))
        elif hp.kind is not float:
            issues.append((("search", "pbt", "params", i), f"PBT scales a value by 0.8 or 1.2, "
                           f"and {name} takes whole numbers: perturb a real-valued setting "
                           "(warmup_fraction, say, rather than warmup_iters)"))
    return issues


def _resources(study: StudySections) -> list[tuple[Loc, str]]:
    res = study.resources
    if res.device == "cpu" and res.gpus_per_trial > 0:
        return [(("resources", "gpus_per_trial"), "device cpu uses no GPU: set 0")]
    if res.device == "cuda" and res.gpus_per_trial == 0:
        return [(("resources", "device"), "device cuda needs gpus_per_trial > 0 (a trial with no "
                 "GPU sees none)")]
    return []
