"""Reading a study file: YAML with safe_load semantics, keeping each node's line for messages."""

from __future__ import annotations

import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from model.config import ConfigError, duplicate_keys, parse_yaml
from tuner.errors import UserError
from tuner.space.errors import Issue, SpaceError
from tuner.space.schema import Study, build_study

MAX_BYTES = 2**20


def load_study(source: str | Path | Mapping[str, Any], name: str | None = None) -> Study:
    """Read and validate a study file, or a mapping of its sections as YAML would give them (from
    Python); SpaceError lists every problem with its path (and a file's line). A study that gives
    no name takes `name` (a --name), else its file's stem (a mapping's: "study")."""
    if isinstance(source, Mapping):
        return _from_mapping(source, name)
    path = Path(source)
    try:
        if not stat.S_ISREG(path.stat().st_mode):  # /dev/zero never ends; a FIFO waits for ever
            raise SpaceError(path, [Issue("", None, "cannot read the study file: not a regular "
                                                    "file; name a YAML file")])
        with path.open("rb") as file:
            raw = file.read(MAX_BYTES + 1)
        if len(raw) > MAX_BYTES:
            raise SpaceError(path, [Issue("", None, f"the study file is over {MAX_BYTES // 2**20} "
                                                    "MiB: a study file holds settings, not data")])
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) else "not UTF-8 text"
        raise SpaceError(path, [Issue("", None, f"cannot read the study file: {reason}")]) from None
    try:
        root, data = parse_yaml(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        problem = getattr(err, "problem", None) or str(err)
        raise SpaceError(path, [Issue("", mark.line + 1 if mark else None,
                                      f"not valid YAML: {problem}")]) from None
    except RecursionError:
        raise SpaceError(path, [Issue("", None, "not valid YAML: nested too deeply")]) from None
    except (ValueError, OverflowError) as err:  # a tag's value it cannot build: 2024-02-30, say
        raise SpaceError(path, [Issue("", None, f"not valid YAML: {err}")]) from None
    if not isinstance(data, dict):
        found = "empty" if data is None else f"a {type(data).__name__}"
        raise SpaceError(path, [Issue("", 1, f"a study file is a mapping of sections (data, "
                                             f"model, hparams, budget, …); this one is {found}")])
    duplicates = [Issue(key, line, f"given twice (first on line {first})")
                  for key, line, first in duplicate_keys(root)]
    if duplicates:
        raise SpaceError(path, duplicates)
    given = "name" in data
    data.setdefault("name", name or path.stem)
    try:
        return build_study(data, source_path=path, source_text=text,
                           locate=lambda loc: _line(root, loc))
    except SpaceError as err:
        if given:
            raise
        raise SpaceError(path, [_name_from(issue, flag=bool(name)) if issue.path == "name"
                                else issue for issue in err.issues]) from None


def _from_mapping(source: Mapping[str, Any], name: str | None) -> Study:
    """A study given as a mapping, checked as the same study written as a YAML file is (its
    messages name each setting, with no line); its YAML text is what MLflow records."""
    try:
        text = yaml.safe_dump(_plain(source), sort_keys=False, allow_unicode=True)
    except yaml.YAMLError as err:  # a value YAML cannot hold: an object, a numpy number
        raise SpaceError(None, [Issue("", None, f"not a study: {err}")]) from None
    data = yaml.safe_load(text)
    given = "name" in data
    if name:
        data.setdefault("name", name)
    try:
        return build_study(data, source_text=text)
    except SpaceError as err:
        if given or not name:
            raise
        raise SpaceError(None, [_name_from(issue, flag=True) if issue.path == "name" else issue
                                for issue in err.issues]) from None


def _plain(value: Any) -> Any:
    """`value` with its tuples as lists and its mappings as dicts, which YAML writes as such."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def located(study: Study, err: ConfigError) -> UserError:
    """A trainer's ConfigError on a study's setting (`model.vocab_size`), told at its line in
    the study file; others as they are."""
    if study.source_text is None or err.field.split(".")[0] not in Study.model_fields:
        return UserError(str(err))  # a file's problem (its path), not a setting's
    if study.source_path is None:  # given as a mapping: its text has no line the user wrote
        return SpaceError(None, [Issue(err.field, None, err.message)])
    root, _ = parse_yaml(study.source_text)
    line = _line(root, tuple(err.field.split(".")))
    return SpaceError(study.source_path, [Issue(err.field, line, err.message)])


def _name_from(issue: Issue, flag: bool) -> Issue:
    """An issue with a name the file does not give, told as the flag's or the file name's."""
    if flag:
        return issue._replace(path="--name", line=None)
    return issue._replace(message=f"{issue.message}; the study takes the file's name when it gives "
                                  "none: add name: to it (or pass tuner search --name)")


def _line(root: yaml.Node, loc: tuple[str | int, ...]) -> int | None:
    """1-based line of the deepest node `loc` reaches (a key's own line for a mapping entry)."""
    node, line, cls = root, root.start_mark.line + 1, Study  # cls: the section model at node
    for part in loc:
        if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
            continue
        if not isinstance(node, yaml.MappingNode):
            break
        aliases = getattr(cls, "aliases", {})
        entry = next(((k, v) for k, v in node.value if k.value == str(part)),  # as written,
                     next(((k, v) for k, v in node.value if aliases.get(k.value) == part), None))
        if entry is None:
            break
        node, line = entry[1], entry[0].start_mark.line + 1
        field = getattr(cls, "model_fields", {}).get(part) if isinstance(part, str) else None
        cls = field.annotation if field else None
    return line
