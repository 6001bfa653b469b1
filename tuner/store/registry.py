"""A trained model in MLflow's Model Registry: one logged model, registered as a new version of a
registered model (`tuner best --register`).

Its one flavor, `python_function`, is tuner/store/pyfunc.py as MLflow "models from code", with the
checkpoint, the tokenizer, the sha256 of each of their files, and the generation settings:
`mlflow.pyfunc.load_model(uri).predict(["Once upon a time"])` returns text. (A `pytorch` flavor,
the module exported by torch.export, was dropped: torch's pt2 loader unpickles entries an archive
marks so, which MLflow allows by default, and the checkpoint gives the module to whoever has this
package.)

The logged model is an output of the trial run that trained it (MLflow's lineage); the version
carries tags and a description.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuner.errors import UserError, reason

ARTIFACT = "model"  # the logged model's name
DIGESTS = "sha256"  # the artifact of the sha256 of each other artifact's files
VERSION = "<version>"  # in a description: the number MLflow gives the new version


@dataclass(frozen=True)
class Registration:
    """What one version holds: the checkpoint file, the tokenizer's folder (vocab.json,
    merges.txt, meta.json), the generation settings (tuner/store/pyfunc.py reads them), the
    version's tags and its description, where VERSION stands for the version's number."""

    checkpoint: Path
    tokenizer: Path
    generation: dict[str, Any]
    tags: dict[str, str]
    description: str


def check_name(client: Any, name: str, named: str = "--register") -> None:
    """UserError when the store refuses `name` as a registered model's (a new name or one it
    holds passes), naming it as the caller does (`named`: an option, or an argument)."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException as err:
        if err.error_code == "INVALID_PARAMETER_VALUE":
            raise UserError(f"{named} {name!r}: MLflow refuses it as a model name "
                            f"({reason(err)})") from None
        if err.error_code != "RESOURCE_DOES_NOT_EXIST":  # the store failing: not the name's
            raise


def register(client: Any, name: str, run: Any, what: Registration) -> str:
    """Log `what` as a model of trial run `run` and register it as a new version of `name` (the
    registered model made when missing); the version's number."""
    with _mlflow_quiet():
        return _register(client, name, run, what)


def _register(client: Any, name: str, run: Any, what: Registration) -> str:
    """`register`, which MLflow logs through."""
    import mlflow
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    logged = client.create_logged_model(run.info.experiment_id, name=ARTIFACT,
                                        source_run_id=run.info.run_id, params=run.data.params,
                                        tags=what.tags)
    with tempfile.TemporaryDirectory(prefix="tuner-register-") as tmp:
        client.log_model_artifacts(logged.model_id, str(_save(what, Path(tmp))))
    client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    client.log_outputs(run.info.run_id, [LoggedModelOutput(logged.model_id, step=0)])
    # MLflow's own registration (the registered model made when missing, the version linked to
    # the logged model both ways) works through the process's tracking URI: a database registry
    # looks a `models:/` source up there (its TODO in create_model_version). This store's, while
    # it does; then the process's own again.
    with _use_tracking_uri(client.tracking_uri):
        version = str(mlflow.register_model(f"models:/{logged.model_id}", name,
                                            tags=what.tags).version)
    client.update_model_version(name, version,
                                description=what.description.replace(VERSION, version))
    return version


def _save(what: Registration, folder: Path) -> Path:
    """The MLflow model folder of `what` in `folder`, with the sha256 of each file it loads."""
    import mlflow
    import torch

    from model.checkpoint import file_sha256

    digests = {"checkpoint": file_sha256(what.checkpoint)} | {
        f"tokenizer/{file.name}": file_sha256(file) for file in sorted(what.tokenizer.iterdir())}
    (folder / "sha256.json").write_text(json.dumps(digests, indent=1))
    path = folder / ARTIFACT
    requirements = [f"mlflow=={mlflow.__version__}", f"torch=={torch.__version__.split('+')[0]}",
                    "numpy", "regex"]  # and this package, which is not on PyPI: see the docs
    mlflow.pyfunc.save_model(path, python_model=str(Path(__file__).with_name("pyfunc.py")),
                             artifacts={"checkpoint": str(what.checkpoint),
                                        "tokenizer": str(what.tokenizer),
                                        DIGESTS: str(folder / "sha256.json")},
                             model_config=what.generation, pip_requirements=requirements)
    return path


@contextlib.contextmanager
def _mlflow_quiet() -> Iterator[None]:
    """Within: MLflow logs its errors only, not its INFO and WARNING lines about the project's
    uv files, pip's version and the requirements (given here, not inferred)."""
    logger = logging.getLogger("mlflow")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
