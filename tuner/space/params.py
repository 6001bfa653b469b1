"""The parameter tables of a study file, derived from the trainer's `HParam` definitions, and the
parsing of one parameter's YAML value: a constant in range, or a distribution whose values are."""

from __future__ import annotations

import contextlib
import typing
from functools import partial
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from model.config import (
    EXACT_FLOAT,
    HPARAMS,
    MODEL_HPARAMS,
    RELATIVE_HPARAMS,
    STUDY_BUDGET_KEYS,
    TRAIN_HPARAMS,
    HParam,
    TrainConfig,
)
from tuner.space.distributions import (
    DISTRIBUTIONS,
    TRANSFER_FIELDS,
    Distribution,
    IntRange,
    LogUniform,
    Transfer,
    Uniform,
    either,
    fmt,
    fmt_given,
    parse_distribution,
)

# budget field → trainer parameter; the budget is fixed per study, never searched
BUDGET_NAMES = STUDY_BUDGET_KEYS
BUDGET_DEFS: dict[str, HParam] = {key: TRAIN_HPARAMS[name] for key, name in BUDGET_NAMES.items()}
MODEL_DEFS: dict[str, HParam] = dict(MODEL_HPARAMS)


def _hparam_defs() -> dict[str, HParam]:
    defs: dict[str, HParam] = {}
    for name, hp in TRAIN_HPARAMS.items():
        if name not in BUDGET_NAMES.values():
            defs[name] = hp
            if name in RELATIVE_HPARAMS:  # listed after the parameter it sets
                defs[RELATIVE_HPARAMS[name].name] = RELATIVE_HPARAMS[name]
    return defs


HPARAM_DEFS: dict[str, HParam] = _hparam_defs()
ALL_DEFS: dict[str, HParam] = {**MODEL_DEFS, **HPARAM_DEFS}
"""Every parameter a study can search, by readable name (the Optuna parameter names)."""


def used_values(config: TrainConfig) -> dict[str, Any]:
    """Readable name → value of each hyperparameter `config` trains with: those whose condition
    holds (no momentum under AdamW) and that are set. None is a value only where it turns the
    setting off (τ); elsewhere it stands for a default derived from others (T_cycle = T_total,
    d_ff ≈ 8/3·d_model), which the config does not use as such. eval_interval only without
    eval_tokens."""
    values = config.to_dict()
    values.update(values.pop("model"))

    def used(name: str) -> bool:
        hp = HPARAMS[name]
        if hp.when is not None and values[hp.when[0]] not in hp.when[1]:
            return False
        if values[name] is None and not hp.off:
            return False
        return not (name == "eval_interval" and values["eval_tokens"] is not None)

    return {name: values[name] for name in HPARAMS if used(name)}


def parse_value(raw: Any, hp: HParam, searchable: bool = True) -> Any:
    """A YAML value of `hp` → a constant of its kind or a Distribution; ValueError says why not."""
    if isinstance(raw, dict):
        if not searchable:
            raise ValueError(f"{hp.symbol} is fixed per study: give a constant, not a distribution")
        return _check_distribution(parse_distribution(raw), hp)
    if isinstance(raw, list):
        raise ValueError(f"{hp.symbol} is one value, got a list; to search it write "
                         "{choice: [...]}" + (" or {grid: [...]}" if searchable else ""))
    return _constant(raw, hp)


def _constant(raw: Any, hp: HParam, role: str = "") -> Any:
    value = _coerce(raw, hp)
    problem = hp.check(value)
    if problem:
        raise ValueError(f"{hp.symbol} {problem}" + (f" ({role})" if role else ""))
    return value


def _coerce(raw: Any, hp: HParam) -> Any:
    raw = hp.from_yaml(raw)
    if hp.kind is float and isinstance(raw, int) and not isinstance(raw, bool):
        return float(raw)
    if hp.kind is int and isinstance(raw, float) and raw.is_integer() and abs(raw) <= EXACT_FLOAT:
        return int(raw)
    return raw


def _check_distribution(dist: Distribution, hp: HParam) -> Distribution:
    if isinstance(dist, Transfer) and hp.name not in TRANSFER_FIELDS:
        raise ValueError(f"{{transfer: [...]}} lists model sizes, and {hp.symbol} is not one: "
                         f"transfer {' or '.join(TRANSFER_FIELDS)}, and search {hp.symbol} with "
                         "a distribution")
    if isinstance(dist, (LogUniform, Uniform)) and hp.kind is not float:
        hint = "{int: [lo, hi]} or {choice: [...]}" if hp.kind is int else "{choice: [...]}"
        raise ValueError(f"{hp.symbol} takes {_kind_text(hp)}: search it with {hint}, "
                         f"not {dist.key}")
    if isinstance(dist, IntRange) and hp.kind not in (int, float):
        raise ValueError(f"{hp.symbol} takes {_kind_text(hp)}: search it with {{choice: [...]}}")
    options = dist.options() if dist.key in ("choice", "grid", "transfer") else None
    if options is None:
        _constant(dist.lo, hp, f"the lower bound of {dist.key}")
        _constant(dist.hi, hp, f"the upper bound of {dist.key}")
        return dist
    values = [_constant(v, hp, f"in the {dist.key}") for v in options]
    return type(dist).model_validate({dist.key: values})


_LOGGED = {"None": None, "True": True, "False": False}  # str() of values, as MLflow's params hold


def shown_value(name: str, value: Any) -> str:
    """A searched value as tables and progress lines show it: in the study file's words (true,
    null; off for τ), numbers to four significant digits; a logged param's text read back first."""
    if isinstance(value, str) and value in _LOGGED:
        value = _LOGGED[value]
    elif isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = int(value) if value.lstrip("-").isdigit() else float(value)
    if value is None and name in ALL_DEFS and ALL_DEFS[name].off:
        return "off"
    return f"{value:.4g}" if isinstance(value, float) else fmt(value)


def symbol(name: str) -> str:
    """The symbol of a study parameter (SYMBOLS.md: α_max, T_warmup/T_total), else its name."""
    return ALL_DEFS[name].symbol if name in ALL_DEFS else name


def _kind_text(hp: HParam) -> str:
    if hp.choices is not None:
        return "one of " + ", ".join(map(fmt, hp.choices))
    return {int: "whole numbers", float: "numbers", bool: "true or false"}.get(hp.kind, "text")


def describe(hp: HParam) -> str:
    """One sentence for schema tooltips: what it does, its valid range, default and condition."""
    text = f"{hp.symbol}: {hp.description}. Valid: {hp.range_text()}. Default: {fmt(hp.default)}."
    if hp.when:
        parent, values = hp.when
        text += f" Used only when {parent} is {either(values)}."
    return text


def constant_schema(hp: HParam) -> dict[str, Any]:
    """JSON Schema of one constant value of `hp`, bounds included."""
    if hp.choices is not None:
        schema: dict[str, Any] = {"enum": list(hp.choices)}
    elif hp.kind in (int, float):
        schema = {"type": "integer" if hp.kind is int else "number"}
        if hp.low is not None:
            schema["exclusiveMinimum" if hp.low_open else "minimum"] = hp.low
        if hp.high is not None:
            schema["exclusiveMaximum" if hp.high_open else "maximum"] = hp.high
    else:
        schema = {"type": {bool: "boolean"}.get(hp.kind, "string")}
    return {"anyOf": [schema, {"type": "null"}]} if hp.optional else schema


def value_schema(hp: HParam, searchable: bool) -> dict[str, Any]:
    """JSON Schema of a YAML value of `hp`: a constant, or each distribution that fits its kind."""
    const = constant_schema(hp)
    if not searchable:
        return const
    pair = {"type": "array", "items": const, "minItems": 2, "maxItems": 2}
    listed = {"type": "array", "items": const, "minItems": 1, "uniqueItems": True}
    forms = {"choice": listed, "grid": listed}
    if hp.name in TRANSFER_FIELDS:
        forms["transfer"] = {**listed, "minItems": 2}
    if hp.kind in (int, float):
        forms["int"] = {**pair, "items": {**const, "type": "integer"}} if "type" in const else pair
    if hp.kind is float:
        forms["loguniform"] = {**pair, "items": {**const, "exclusiveMinimum": 0}}
        forms["uniform"] = pair
    options = []
    for key in DISTRIBUTIONS:
        if key in forms:
            props = {key: forms[key]}
            if key == "int":
                props |= {"log": {"type": "boolean"}, "step": {"type": "integer", "minimum": 1}}
            options.append({"type": "object", "properties": props, "required": [key],
                            "additionalProperties": False})
    return {"anyOf": [const, *options]}


class Section(BaseModel):
    """A study-file section: unknown keys are errors; `aliases` maps other keys to field names."""

    # inf, .inf, 1e400 and nan are no value of a numeric setting (a parameter checks its own)
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False,
                              json_schema_extra=lambda s, cls: cls._alias_schema(s))
    aliases: ClassVar[dict[str, str]] = {}
    defs: ClassVar[dict[str, HParam]] = {}

    @model_validator(mode="before")
    @classmethod
    def _canonical_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not cls.aliases:
            return data
        out: dict[Any, Any] = {}
        written: dict[Any, Any] = {}
        for key, value in data.items():
            name = cls.aliases.get(key, key)
            if name in out:
                raise PydanticCustomError("space", "{message}", {
                    "message": f"{name} is given twice (as {written[name]} and as {key})",
                    "key": key})  # where the second is: its line
            out[name], written[name] = value, key
        return out

    @classmethod
    def _alias_schema(cls, schema: dict[str, Any]) -> None:
        props = schema.get("properties", {})
        for alias, name in cls.aliases.items():
            props[alias] = {**props[name], "description": f"Same as {name}. "
                            + props[name].get("description", "")}

    @field_validator("*", mode="before")
    @classmethod
    def _a_number(cls, value: Any, info: ValidationInfo) -> Any:
        """YAML's true, or a quoted '4', is no value of a numeric setting (pydantic would take
        them as numbers)."""
        kinds = _kinds(cls.model_fields[info.field_name].annotation)
        if (isinstance(value, bool) and kinds & {int, float} and bool not in kinds
                or isinstance(value, str) and kinds & {int, float} and not kinds & {str, Path}):
            raise ValueError(f"must be a number, got {fmt_given(value)}")
        return value

    def given(self) -> dict[str, Any]:
        """The values the study file sets (not defaulted), by field name in field order."""
        return {n: getattr(self, n) for n in type(self).model_fields if n in self.model_fields_set}

    def searched(self) -> dict[str, Distribution]:
        """The fields whose value is a distribution the searcher samples (not a transfer list)."""
        return {n: v for n, v in self.given().items()
                if isinstance(v, Distribution) and not isinstance(v, Transfer)}

    def transferred(self) -> dict[str, Transfer]:
        """The fields whose value is a transfer list."""
        return {n: v for n, v in self.given().items() if isinstance(v, Transfer)}


def _kinds(annotation: Any) -> set[Any]:
    """The types an annotation admits: int | None → {int, NoneType}."""
    args = typing.get_args(annotation)
    return set().union(*map(_kinds, args)) if args else {annotation}


def section_fields(defs: dict[str, HParam], searchable: bool) -> dict[str, Any]:
    """`create_model` field definitions for a section whose keys are the parameters in `defs`."""
    return {name: (Annotated[Any,
                             BeforeValidator(partial(parse_value, hp=hp, searchable=searchable)),
                             WithJsonSchema(value_schema(hp, searchable))],
                   Field(hp.default, title=hp.symbol, description=describe(hp)))
            for name, hp in defs.items()}


def section_aliases(defs: dict[str, HParam]) -> dict[str, str]:
    """Each parameter's other keys (trainer name, symbol, aliases) → its field name."""
    return {key: field for field, hp in defs.items()
            for key in (hp.name, hp.symbol, *hp.aliases) if key != field}
