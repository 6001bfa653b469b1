"""`tuner generate`: text from a trained checkpoint (a file or a trial run's verified artifact);
a checkpoint crafted to run code on load, or a truncated one, is refused with exit code 2."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest
from inspect_study import tuner, write_malicious_checkpoint

from model.config import ModelConfig, TrainConfig
from model.tokenizer import Tokenizer
from model.train import train

pytest_plugins = ["inspect_study"]  # the `recorded` study fixture


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, tokenized: Path) -> Path:
    out = tmp_path_factory.mktemp("trained")
    config = TrainConfig(model=ModelConfig(vocab_size=256, context_length=32, d_model=32,
                                           num_layers=1, num_heads=2, d_ff=64),
                         data=str(tokenized), lr_max=0.02, batch_size=8, total_iters=30,
                         eval_interval=30, eval_windows=4, sample_tokens=0, device="cpu")
    train(config, checkpoint_dir=out)
    return out / "checkpoint.pt"


def test_generate_from_checkpoint_is_seeded_text(checkpoint):
    args = ("generate", "--checkpoint", str(checkpoint), "--prompt", "ROMEO:",
            "--max-new-tokens", "24", "--seed", "3")
    code, out = tuner(*args)
    assert code == 0, out
    assert out.startswith("ROMEO:") and len(out.rstrip("\n")) > len("ROMEO:")
    assert tuner(*args) == (0, out)  # same seed, same text
    greedy = [tuner("generate", "--checkpoint", str(checkpoint), "--prompt", "ROMEO:",
                    "--temperature", "0", "--max-new-tokens", "24", "--seed", seed)
              for seed in ("1", "2")]
    assert greedy[0] == greedy[1] and greedy[0][0] == 0  # the likeliest tokens: no sampling
    assert len(greedy[0][1].rstrip("\n")) > len("ROMEO:")
    # An empty prompt starts from <|endoftext|>, which this byte-level tokenizer lacks
    code, out = tuner("generate", "--checkpoint", str(checkpoint), "--prompt", "")
    assert code == 2 and "--prompt: is empty, and the tokenizer has no end-of-text token to " \
        "start from" in " ".join(out.split()), out


def swap_two_tokens(folder: Path) -> None:
    """Swap the ids of two tokens in `folder`'s vocab.json: a tokenizer of the same size whose
    ids decode into other text."""
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    first, second = list(vocab)[10:12]
    vocab[first], vocab[second] = vocab[second], vocab[first]
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")


def test_a_tokenizer_other_than_the_one_trained_with_is_refused(tokenized, tmp_path):
    """The checkpoint records the sha256 of its tokenizer's files: a folder whose vocab.json
    was altered since (its meta.json, which still holds the old hash, trusted no more) would
    decode its ids into other text."""
    data = tmp_path / "data"
    shutil.copytree(tokenized, data)
    config = TrainConfig(model=ModelConfig(vocab_size=256, context_length=32, d_model=32,
                                           num_layers=1, num_heads=2, d_ff=64),
                         data=str(data), total_iters=4, eval_interval=4, eval_windows=2,
                         sample_tokens=0, device="cpu")
    train(config, checkpoint_dir=tmp_path / "run")
    args = ("generate", "--checkpoint", str(tmp_path / "run"), "--prompt", "A", "--max-new-tokens",
            "2")
    assert tuner(*args)[0] == 0
    swap_two_tokens(data)
    code, out = tuner(*args)
    assert code == 2 and f"{data / 'vocab.json'} and merges.txt: not the tokenizer" in " ".join(
        out.split()), out


def test_an_empty_prompt_with_an_end_of_text_id_beyond_the_model_exits_2(checkpoint, tmp_path):
    """The tokenizer's <|endoftext|> (id 256) is past the 256-token model's vocabulary: not its
    tokenizer, named as for a prompt's ids, not an IndexError."""
    Tokenizer({i: bytes([i]) for i in range(256)} | {256: b"<|endoftext|>"}, []).save(tmp_path)
    (tmp_path / "meta.json").write_text(json.dumps({"special_tokens": ["<|endoftext|>"]}))
    code, out = tuner("generate", "--checkpoint", str(checkpoint), "--data", str(tmp_path),
                      "--prompt", "")
    assert code == 2, out
    assert "has ids (e.g. 256) beyond the model's vocabulary of 256: not its tokenizer" in out


def test_generate_from_trial_run(recorded, tokenized, tmp_path):
    """The run's verified checkpoint artifact generates what that file does; the trial may be
    named by its run id, its trial id or its run name."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=recorded.uri)
    args = ("--prompt", "The ", "--data", str(tokenized), "--max-new-tokens", "16")
    code, out = tuner("generate", "--run", recorded.best_run_id, *args,
                      "--tracking-uri", recorded.uri)
    assert code == 0, out
    assert out.startswith("The ") and len(out.rstrip("\n")) > len("The ")
    artifact = client.download_artifacts(recorded.best_run_id, "checkpoint/checkpoint.pt",
                                         str(tmp_path))
    assert tuner("generate", "--checkpoint", artifact, *args) == (0, out)
    run = client.get_run(recorded.best_run_id)
    for name in (run.data.tags["tuner.trial_id"], run.info.run_name):
        assert tuner("generate", "--run", name, *args, "--tracking-uri", recorded.uri) == (0, out)


def test_trial_without_checkpoint_or_tokenizer_exits_2(recorded):
    code, out = tuner("generate", "--run", recorded.run_ids[1], "--prompt", "x",
                      "--tracking-uri", recorded.uri)  # stopped early: no checkpoint logged
    assert code == 2 and "has no checkpoint recorded" in out
    code, out = tuner("generate", "--run", recorded.best_run_id, "--prompt", "x",
                      "--tracking-uri", recorded.uri)  # byte_dataset has no vocab.json
    assert code == 2 and "no tokenizer" in out


def test_malicious_checkpoint_is_refused(tmp_path):
    evil, marker = tmp_path / "evil.pt", tmp_path / "pwned"
    write_malicious_checkpoint(evil, marker)
    with zipfile.ZipFile(evil) as archive:  # the payload is real: the pickle calls Path.touch
        pickled = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    assert b"touch" in pickled and marker.name.encode() in pickled
    code, out = tuner("generate", "--checkpoint", str(evil), "--prompt", "x")
    assert code == 2
    assert "not a loadable checkpoint" in out
    assert not marker.exists()


def test_truncated_checkpoint_is_refused(checkpoint, tmp_path):
    cut = tmp_path / "cut.pt"
    cut.write_bytes(checkpoint.read_bytes()[:4096])
    code, out = tuner("generate", "--checkpoint", str(cut), "--prompt", "x")
    assert code == 2 and "not a loadable checkpoint" in out


@pytest.mark.parametrize(("option", "value"), [("--temperature", "inf"),
                                               ("--seed", str(2**64)), ("--top-p", "1.5")])
def test_an_option_out_of_range_names_itself(checkpoint, option, value):
    code, out = tuner("generate", "--checkpoint", str(checkpoint), "--prompt", "x", option, value)
    assert code == 2 and option in out and "Traceback" not in out, out


@pytest.mark.parametrize("damage", ["nan_weights", "data_not_a_folder", "other_shape"])
def test_a_damaged_checkpoint_that_loads_is_refused_naming_it(checkpoint, tmp_path, damage):
    """Files torch.load reads but no text can come from: named, exit 2, no traceback."""
    import torch

    state = torch.load(checkpoint, weights_only=True)
    if damage == "nan_weights":
        state["model"] = {k: torch.full_like(v, float("nan")) for k, v in state["model"].items()}
    elif damage == "data_not_a_folder":
        state["config"] = {**state["config"], "data": 5}
    else:
        state["config"] = {**state["config"], "model": {**state["config"]["model"], "d_ff": 96}}
    damaged = tmp_path / "damaged.pt"
    torch.save(state, damaged)
    code, out = tuner("generate", "--checkpoint", str(damaged), "--prompt", "x")
    message = " ".join(out.split())
    assert code == 2 and str(damaged) in message and "Traceback" not in out, out
    if damage == "other_shape":  # which tensor does not fit, not torch's bare first line
        assert "size mismatch" in message, out


def test_run_and_checkpoint_are_exclusive(checkpoint):
    code, out = tuner("generate", "--prompt", "x")
    assert code == 2 and "one of --run" in out
    code, out = tuner("generate", "--prompt", "x", "--checkpoint", str(checkpoint), "--run",
                      "0" * 32)
    assert code == 2 and "one of --run" in out


def test_an_unusable_run_checkpoint_names_the_run(tmp_path, mlflow_store_template):
    """A verified artifact that is no trainer checkpoint: the error names the run's artifact, not
    the temporary file it was downloaded to."""
    import torch
    from mlflow import MlflowClient
    from studies import fresh_store

    from model.checkpoint import file_sha256

    uri = fresh_store(tmp_path, mlflow_store_template)
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("s", artifact_location=(tmp_path / "a").as_uri())
    run_id = client.create_run(exp, tags={"tuner.role": "trial"}).info.run_id
    foreign = tmp_path / "checkpoint.pt"
    torch.save({"model": {}, "iteration": 1}, foreign)
    client.log_artifact(run_id, str(foreign), "checkpoint")
    client.set_tag(run_id, "tuner.checkpoint_sha256", file_sha256(foreign))
    code, out = tuner("generate", "--run", run_id, "--prompt", "x", "--tracking-uri", uri)
    message = " ".join(out.split())
    assert code == 2 and f"the checkpoint artifact of run {run_id}" in message, out
    assert "tuner-generate-" not in message
