"""The MLflow pyfunc model of a registered winner (`tuner best --register`): prompts in, their
continuations out, by the trainer's own generation (model/generate.py).

MLflow runs this file when it loads the model ("models from code"), so the model holds no pickle:
its artifacts are the trial's checkpoint (read with weights_only), its tokenizer's files, the
sha256 of each (checked before any is read: a file altered or swapped since registration is
refused, named), and its generation settings (the model config: `mlflow.pyfunc.load_model(uri,
model_config={...})` overrides them). It needs torch, MLflow and this package; nothing of tuner
imports it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mlflow.models import set_model
from mlflow.pyfunc import PythonModel


class TextGenerator(PythonModel):
    """A trained TransformerLM and its tokenizer: `predict(["Once upon a time"])` returns the
    text each prompt is continued with (without the prompt)."""

    def load_context(self, context: Any) -> None:
        from model.checkpoint import read_checkpoint
        from model.config import train_config_from_dict
        from model.layers import TransformerLM
        from model.tokenizer import Tokenizer

        check_digests(context.artifacts)
        self.settings = context.model_config  # max_new_tokens, temperature, top_p, seed, device
        state = read_checkpoint(context.artifacts["checkpoint"])  # weights_only: runs no code
        self.model = TransformerLM(train_config_from_dict(state["config"]).model)
        self.model.load_state_dict(state["model"])
        self.model.to(self.settings["device"]).eval()
        self.tokenizer = Tokenizer.from_dir(context.artifacts["tokenizer"])

    def predict(self, context: Any, model_input: list[str]) -> list[str]:
        """Each prompt's continuation, sampled as the settings say from a generator seeded anew
        for each: a prompt gives the same text every time."""
        import torch

        from model.generate import generate

        how = self.settings
        return [generate(self.model, self.tokenizer, prompt, int(how["max_new_tokens"]),
                         temperature=float(how["temperature"]), top_p=float(how["top_p"]),
                         generator=torch.Generator().manual_seed(int(how["seed"])))
                for prompt in model_input]


def check_digests(artifacts: dict[str, str]) -> None:
    """ValueError naming the first file whose sha256 is not the one recorded at registration."""
    from model.checkpoint import file_sha256

    for key, recorded in json.loads(Path(artifacts["sha256"]).read_text()).items():
        artifact, _, name = key.partition("/")
        path = Path(artifacts[artifact], name)
        if file_sha256(path) != recorded:
            raise ValueError(f"{path}: not the file registered (its sha256 differs from the one "
                             "recorded then): the model's files were altered since")


set_model(TextGenerator())
