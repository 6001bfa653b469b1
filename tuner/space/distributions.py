"""Search distributions of a study file: `{loguniform: [lo, hi]}`, `{uniform: …}`, `{int: …}`,
`{choice: […]}`, `{grid: […]}`, each with its Optuna define-by-run suggestion; and
`{transfer: […]}`, the model sizes every sample of a transfer study trains at (not sampled)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

if TYPE_CHECKING:
    from optuna.trial import BaseTrial

Scalar = bool | int | float | str | None
MAX_OPTIONS = 4096  # an int range with more values is treated as continuous by the checks


def fmt(value: Any) -> str:
    """A compact YAML-like rendering of a constant: 0.001, 1e-08, null, true."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def fmt_given(value: Any) -> str:
    """`fmt`, but a string quoted: a message on a value the file gave ('1e-3' is text there)."""
    return repr(value) if isinstance(value, str) else fmt(value)


def either(values: Any) -> str:
    """'a', 'a or b', 'a, b or c'."""
    texts = [fmt(v) for v in values]
    return " or ".join(filter(None, [", ".join(texts[:-1]), texts[-1]]))


class Distribution(BaseModel):
    """A searched value; subclasses are keyed by the one YAML key that names them."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    key: ClassVar[str]

    def suggest(self, trial: BaseTrial, name: str) -> Any:
        """Ask the Optuna trial for a value of parameter `name`."""
        raise NotImplementedError

    def options(self) -> list[Any] | None:
        """Every value it can take when finite (categoricals, small int ranges), else None."""
        return None

    def span(self) -> tuple[float, float] | None:
        """The smallest and largest numeric value it can take (None: it takes no numbers)."""
        raise NotImplementedError

    def to_yaml(self) -> dict[str, Any]:
        """The YAML form, e.g. {'loguniform': [0.0001, 0.01]}."""
        return self.model_dump(mode="json", by_alias=True)


class _Range(Distribution):
    """A numeric interval [lo, hi] with lo < hi."""

    @property
    def lo(self) -> float:
        return getattr(self, self.key)[0]

    @property
    def hi(self) -> float:
        return getattr(self, self.key)[1]

    def span(self) -> tuple[float, float]:
        return self.lo, self.hi

    @model_validator(mode="before")
    @classmethod
    def _numbers(cls, data: Any) -> Any:
        """YAML's true, or a quoted '1e-3', is no bound or step (pydantic would take them as
        numbers)."""
        if isinstance(data, dict):
            bounds = data.get(cls.key)
            given = [*(bounds if isinstance(bounds, list) else []), data.get("step")]
            flag = next((v for v in given if isinstance(v, (bool, str))), None)
            if flag is not None:
                raise ValueError(f"bounds and step must be numbers, got {fmt_given(flag)}")
        return data

    @model_validator(mode="after")
    def _ordered(self) -> _Range:
        if not (math.isfinite(self.lo) and math.isfinite(self.hi)):
            raise ValueError(f"bounds must be finite numbers, got [{fmt(self.lo)}, {fmt(self.hi)}]")
        if self.lo >= self.hi:
            raise ValueError(f"needs lo < hi, got [{fmt(self.lo)}, {fmt(self.hi)}]")
        return self


class LogUniform(_Range):
    key: ClassVar[str] = "loguniform"
    loguniform: tuple[float, float] = Field(description="[lo, hi], 0 < lo < hi: on a log scale")

    @model_validator(mode="after")
    def _positive(self) -> LogUniform:
        if self.lo <= 0:
            raise ValueError(f"needs lo > 0 (a log scale), got lo = {fmt(self.lo)}")
        return self

    def suggest(self, trial: BaseTrial, name: str) -> float:
        return trial.suggest_float(name, self.lo, self.hi, log=True)

    def __str__(self) -> str:
        return f"loguniform({fmt(self.lo)}, {fmt(self.hi)})"


class Uniform(_Range):
    key: ClassVar[str] = "uniform"
    uniform: tuple[float, float] = Field(description="[lo, hi], lo < hi: on a linear scale")

    def suggest(self, trial: BaseTrial, name: str) -> float:
        return trial.suggest_float(name, self.lo, self.hi)

    def __str__(self) -> str:
        return f"uniform({fmt(self.lo)}, {fmt(self.hi)})"


class IntRange(_Range):
    key: ClassVar[str] = "int"
    int_: tuple[int, int] = Field(alias="int", description="[lo, hi], lo < hi: whole numbers")
    log: bool = Field(False, description="search on a log scale (needs lo ≥ 1 and step 1)")
    step: int = Field(1, ge=1, description="spacing of the values lo, lo+step, …, hi")

    @property
    def lo(self) -> int:
        return self.int_[0]

    @property
    def hi(self) -> int:
        return self.int_[1]

    @model_validator(mode="after")
    def _steps(self) -> IntRange:
        if self.log and (self.lo < 1 or self.step != 1):
            raise ValueError("log: true needs lo ≥ 1 and step 1")
        if (self.hi - self.lo) % self.step:
            raise ValueError(f"hi − lo = {self.hi - self.lo} must be a multiple of step "
                             f"{self.step}")
        return self

    def options(self) -> list[int] | None:
        values = range(self.lo, self.hi + 1, self.step)
        return list(values) if len(values) <= MAX_OPTIONS else None

    def first(self, count: int) -> list[int]:
        """The range's first `count` values (all of them if it has fewer)."""
        return list(range(self.lo, self.hi + 1, self.step)[:count])

    def suggest(self, trial: BaseTrial, name: str) -> int:
        return trial.suggest_int(name, self.lo, self.hi, step=self.step, log=self.log)

    def __str__(self) -> str:
        extra = (" log" if self.log else "") + (f" step {self.step}" if self.step != 1 else "")
        return f"int({self.lo}, {self.hi}){extra}"


class _Options(Distribution):
    """A finite list of distinct scalar values."""

    def options(self) -> list[Any]:
        return list(getattr(self, self.key))

    def span(self) -> tuple[float, float] | None:
        numbers = [v for v in self.options()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)]
        return (min(numbers), max(numbers)) if numbers else None

    @model_validator(mode="after")
    def _distinct(self) -> _Options:
        values = self.options()
        repeated = [v for i, v in enumerate(values) if v in values[:i]]
        if repeated:
            raise ValueError(f"lists {fmt(repeated[0])} twice")
        return self

    def suggest(self, trial: BaseTrial, name: str) -> Any:
        return trial.suggest_categorical(name, self.options())

    def __str__(self) -> str:
        return f"{self.key}({', '.join(map(fmt, self.options()))})"


class Choice(_Options):
    key: ClassVar[str] = "choice"
    choice: list[Scalar] = Field(min_length=1, description="the values a searcher picks from")


class Grid(_Options):
    key: ClassVar[str] = "grid"
    grid: list[Scalar] = Field(min_length=1, description="values enumerated by the grid searcher")


class Transfer(_Options):
    key: ClassVar[str] = "transfer"
    transfer: list[Scalar] = Field(min_length=2, description="model sizes (d_model or "
                                      "num_layers): every sample trains at each, the first "
                                      "being the proxy the searcher learns from")


TRANSFER_FIELDS = ("d_model", "num_layers")  # the sizes a transfer study may list

DISTRIBUTIONS: dict[str, type[Distribution]] = {
    cls.key: cls for cls in (LogUniform, Uniform, IntRange, Choice, Grid, Transfer)}


def parse_distribution(raw: dict[Any, Any]) -> Distribution:
    """Build the distribution a YAML mapping names; ValueError says what is wrong with it."""
    keys = [k for k in raw if k in DISTRIBUTIONS]
    if len(keys) != 1:
        forms = ", ".join(f"{{{k}: …}}" for k in DISTRIBUTIONS)
        got = f"keys {', '.join(map(str, raw))}" if raw else "an empty mapping"
        raise ValueError(f"a distribution is exactly one of {forms}; got {got}")
    key = keys[0]
    cls = DISTRIBUTIONS[key]
    try:
        return cls.model_validate(raw)
    except ValidationError as err:
        problems = []
        for e in err.errors():
            where = ".".join(map(str, e["loc"][1:] if e["loc"][:1] == (key,) else e["loc"]))
            if e["type"] in ("too_short", "too_long", "missing") and e["loc"][:1] == (key,):
                where, text = "", ("needs [lo, hi]" if issubclass(cls, _Range)
                                   else "needs at least two sizes" if cls is Transfer
                                   else "needs at least one value")
            elif e["type"] in ("tuple_type", "list_type") and e["loc"] == (key,):  # one value
                where, text = "", ("needs [lo, hi]" if issubclass(cls, _Range)
                                   else "needs a list of values")
            elif e["type"] == "int_from_float" and e["loc"] in ((key, 0), (key, 1)):
                where, text = "", (f"{('lower', 'upper')[e['loc'][1]]} bound must be a whole "
                                   f"number, got {e['input']}")
            elif e["type"] == "extra_forbidden":
                where, text = "", f"has no setting {where!r}"
            else:
                text = e["msg"].removeprefix("Value error, ")
            problems.append(f"{where}: {text}" if where else text)
        raise ValueError(f"{key} {'; '.join(dict.fromkeys(problems))}") from None
