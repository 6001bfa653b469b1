"""A trained model in MLflow's Model Registry: one logged model with two flavors, registered as a
new version of a registered model (`tuner best --register`).

- `python_function`: tuner/store/pyfunc.py as MLflow "models from code" (no pickle), with the
  checkpoint, the tokenizer and the generation settings: `mlflow.pyfunc.load_model(uri)
  .predict(["Once upon a time"])` returns text;
- `pytorch`: the module exported by torch.export (MLflow's pickle-free "pt2" format):
  `mlflow.pytorch.load_model(uri)` returns it, token ids in, logits out.

The logged model is an output of the trial run that trained it (MLflow's lineage); the version
carries tags and a description.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuner.errors import UserError, reason

ARTIFACT = "model"  # the logged model's name
TORCH_DATA = "pytorch"  # the folder of the pytorch flavor's exported module, in the model
VERSION = "<version>"  # in a description: the number MLflow gives the new version


@dataclass(frozen=True)
class Registration:
    """What one version holds: the trained module (a TransformerLM on the CPU) and an example of
    its input (token ids, batch × sequence) that torch.export traces it with, the checkpoint file
    it was loaded from, the tokenizer's folder (vocab.json, merges.txt, meta.json), the generation
    settings (tuner/store/pyfunc.py reads them), the version's tags and its description, where
    VERSION stands for the version's number."""

    module: Any
    example: Any  # a numpy int64 array
    checkpoint: Path
    tokenizer: Path
    generation: dict[str, Any]
    tags: dict[str, str]
    description: str


def check_name(client: Any, name: str) -> None:
    """UserError when the store refuses `name` as a registered model's (a new name or one it
    holds passes)."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException as err:
        if err.error_code == "INVALID_PARAMETER_VALUE":
            raise UserError(f"--register {name!r}: MLflow refuses it as a model name "
                            f"({reason(err.message)})") from None
        if err.error_code != "RESOURCE_DOES_NOT_EXIST":  # the store failing: not the name's
            raise


def register(client: Any, name: str, run: Any, what: Registration) -> str:
    """Log `what` as a model of trial run `run` and register it as a new version of `name` (the
    registered model made first when missing); the version's number."""
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
    """The MLflow model folder of `what` in `folder`: the pyfunc flavor, then the exported module
    beside it as the pytorch flavor, in one MLmodel."""
    import mlflow
    import numpy as np
    import torch
    from mlflow.models import Model, ModelSignature
    from mlflow.types import Schema, TensorSpec

    path = folder / ARTIFACT
    requirements = [f"mlflow=={mlflow.__version__}", f"torch=={torch.__version__.split('+')[0]}",
                    "numpy", "regex"]  # and this package, which is not on PyPI: see the docs
    mlflow.pyfunc.save_model(path, python_model=str(Path(__file__).with_name("pyfunc.py")),
                             artifacts={"checkpoint": str(what.checkpoint),
                                        "tokenizer": str(what.tokenizer)},
                             model_config=what.generation, pip_requirements=requirements)
    vocab = what.module.config.vocab_size
    signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.int64), (-1, -1))]),
                               outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1, vocab))]))
    exported = folder / "exported"
    mlflow.pytorch.save_model(what.module, exported, serialization_format="pt2",
                              input_example=what.example, signature=signature,
                              pip_requirements=requirements)
    shutil.copytree(exported / "data", path / TORCH_DATA)
    model = Model.load(path)
    model.add_flavor("pytorch", model_data=TORCH_DATA, pytorch_version=str(torch.__version__),
                     code=None)
    model.save(path / "MLmodel")
    return path
