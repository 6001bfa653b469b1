"""Setting one hyperparameter's value in a study file's text, the rest of the file (its comments,
layout and other keys) left as written."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

from model.config import parse_yaml
from tuner.errors import UserError
from tuner.space.loader import load_study
from tuner.space.sections import HParamsSection
from tuner.space.schema import Study


def set_hparam(path: Path, text: str, name: str, value: str) -> str:
    """`text` with hparams' `name` (under any of its keys: `lr_max`, `α_max`, `lr`) set to the
    YAML flow `value`: the old value replaced where it stands, or a line added before the
    section's first key; UserError (nothing written) where that cannot be done safely."""
    def refuse(why: str) -> UserError:
        return UserError(f"{path}: cannot set hparams.{name} in place ({why}); edit it by hand")

    try:
        root, _ = parse_yaml(text)
    except (yaml.YAMLError, ValueError, RecursionError) as err:
        raise refuse(f"not valid YAML: {' '.join(str(err).split())}") from None
    section = _entry(root, {"hparams"})
    if section is None:
        raise refuse("the file has no hparams section")
    key, hparams = section
    if not isinstance(hparams, yaml.MappingNode) or _decorated(text, hparams):
        raise refuse("hparams is not a plain mapping")
    keys = {name} | {alias for alias, field in HParamsSection.aliases.items() if field == name}
    found = _entry(hparams, keys)
    if found is not None:
        node = found[1]
        flat = isinstance(node, yaml.ScalarNode) or (node.flow_style and
                                                     node.start_mark.line == node.end_mark.line)
        if not flat or _decorated(text, node):
            raise refuse(f"its value spans lines, or has an anchor, alias or tag; write it on one "
                         f"line as {found[0].value}: {value}")
        return text[:node.start_mark.index] + value + text[node.end_mark.index:]
    if hparams.flow_style or not hparams.value:
        raise refuse("hparams is written in flow style {…} or empty")
    first = hparams.value[0][0].start_mark
    at = first.index - first.column  # the first key's line
    return text[:at] + " " * first.column + f"{name}: {value}\n" + text[at:]


def _entry(mapping: Any, keys: set[str]) -> tuple[Any, Any] | None:
    """The (key, value) nodes of the first of `keys` in a mapping node, or None."""
    if not isinstance(mapping, yaml.MappingNode):
        return None
    return next(((k, v) for k, v in mapping.value if k.value in keys), None)


def _decorated(text: str, node: Any) -> bool:
    """Whether a node is written with an anchor, an alias or a tag (the edit would lose or break
    them): its text starts with & * or !."""
    return text[node.start_mark.index:node.start_mark.index + 1] in ("&", "*", "!")


def check_replaceable(path: Path) -> None:
    """UserError naming the study file `path` when `write_checked` could not replace it: the file
    or its folder read-only (no write bit for anyone, which root's own access would pass over;
    or not writable for this user; or on a read-only or immutable file system)."""
    path = path.resolve()
    for what, where in (("the study file", path), ("its folder", path.parent)):
        if not where.stat().st_mode & 0o222 or not os.access(where, os.W_OK):
            shown = "it" if where == path else f"its folder {where}"
            raise UserError(f"{path}: {what} is read-only, so --write could not replace it; "
                            f"make {shown} writable, or probe without --write")


def write_checked(path: Path, text: str, study: Study) -> Study:
    """Write `text` over the study file `path` once it validates as a study of the same name
    (else UserError, nothing written), atomically and with the file's permissions; the study. A
    symbolic link keeps pointing at its file, which is the one edited."""
    path = path.resolve()  # replaced, a link would become a file and its target stay as it was

    def unreplaced(err: OSError) -> UserError:  # a folder turned read-only or full since checked
        return UserError(f"{path}: could not be replaced ({err.strerror or err}); it was left "
                         "as it was")

    try:
        with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent, suffix=".yaml",
                                         prefix=f".{path.stem}-", delete=False) as file:
            file.write(text)
    except OSError as err:
        raise unreplaced(err) from None
    try:
        try:
            edited = load_study(file.name, name=study.name)
        except UserError as err:
            raise UserError(f"{path}: the edited file would not validate ({err}); "
                            "it was left as it was") from None
        os.chmod(file.name, path.stat().st_mode & 0o7777)
        os.replace(file.name, path)
    except OSError as err:
        raise unreplaced(err) from None
    finally:
        Path(file.name).unlink(missing_ok=True)
    return edited
