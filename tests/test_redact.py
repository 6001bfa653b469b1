"""Credentials in URIs are masked wherever tuner prints or records a URI."""

from __future__ import annotations

import json
import os
import string
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tuner.store.redact import redact


@pytest.mark.parametrize(("text", "shown"), [
    ("postgresql://tuner:s3cret@db:5432/mlflow", "postgresql://tuner:***@db:5432/mlflow"),
    ("mysql+pymysql://root:p%40ss@db/mlflow", "mysql+pymysql://root:***@db/mlflow"),
    ("postgresql://tuner:pa/ss@db/optuna", "postgresql://tuner:***@db/optuna"),
    ("error: tracking store http://u:pw@127.0.0.1:5000 failed: http://u:pw@127.0.0.1:5000/api",
     "error: tracking store http://u:***@127.0.0.1:5000 failed: http://u:***@127.0.0.1:5000/api"),
    ("http://alice:p@ss@host/x?email=a@b.org", "http://alice:***@host/x?email=a@b.org"),
    ("https://ghp_T0KEN@host/", "https://***@host/"),  # a user alone may be a token
    ("postgresql://mlflow@db/mlflow?sslmode=require&password=s3cret",
     "postgresql://***@db/mlflow?sslmode=require&password=***"),
    ("http://mlflow:5000/?token=abc123#x", "http://mlflow:5000/?token=***#x"),
    ("s3://b/k?X-Amz-Credential=AKIA1%2F2&X-Amz-Signature=f00",
     "s3://b/k?X-Amz-Credential=***&X-Amz-Signature=***"),
    ("http://127.0.0.1:5000/#/experiments/1", "http://127.0.0.1:5000/#/experiments/1"),
    ("postgresql://:pw@db/x", "postgresql://:***@db/x"),  # a password without a user
    ("http://127.0.0.1:5000/x?email=a@b.org", "http://127.0.0.1:5000/x?email=a@b.org"),
    ("http://h/api/get-history?run_id=1&metric_key=val_loss&tokens=5",
     "http://h/api/get-history?run_id=1&metric_key=val_loss&tokens=5"),
    ("store 'http://h/?access_token=abc' (timeout)",
     "store 'http://h/?access_token=***' (timeout)"),
    # a path, not a password
    ("sqlite:////data/a:b@c.db", "sqlite:////data/a:b@c.db"),
    ("sqlite:///mlflow.db", "sqlite:///mlflow.db"),
    ("postgresql://user:pa#ss@127.0.0.1:1/db", "postgresql://user:***@127.0.0.1:1/db"),
    ("tracking: postgresql://alice:Pa#ssw0rd?x@db.example/mlflow",
     "tracking: postgresql://alice:***@db.example/mlflow"),
    ("http://u:12/34@host:5000/api", "http://u:***@host:5000/api"),
    ("http://127.0.0.1:5000/x?u=a:b@c.org", "http://127.0.0.1:5000/x?u=a:b@c.org"),
    # a password with a blank, which SQLAlchemy reads whole; a port then a blank is no password
    ("postgresql+psycopg2://bob:pa ss@host/db", "postgresql+psycopg2://bob:***@host/db"),
    ("error: tracking store postgresql+psycopg2://bob:pa ss@host/db cannot be used: refused",
     "error: tracking store postgresql+psycopg2://bob:***@host/db cannot be used: refused"),
    ("http://mlflow:5000 failed; mail ops@corp.example",
     "http://mlflow:5000 failed; mail ops@corp.example"),
    # a secret's word at the end of a longer name, in any case
    ("postgresql://bob@db/m?sslmode=require&sslpassword=s3cret",
     "postgresql://***@db/m?sslmode=require&sslpassword=***"),
    ("error: store postgresql://db/m?SSLPassword=s3cret&x=1 failed: refused",
     "error: store postgresql://db/m?SSLPassword=***&x=1 failed: refused"),
    ("http://h/?csrftoken=a&ClientSecret=b&design=c",
     "http://h/?csrftoken=***&ClientSecret=***&design=c"),
])
def test_redact_masks_only_credentials(text: str, shown: str) -> None:
    assert redact(text) == shown


def test_redacted_json_stays_json() -> None:
    """A study's resolved JSON is redacted as text before MLflow gets it: it must still parse."""
    study = {"tracking": {"uri": "postgresql://u@db/m?sslmode=require&password=s3cret"},
             "search": {"storage": "s3://b/k?token=abc"}, "name": "x"}
    shown = json.loads(redact(json.dumps(study)))
    assert shown == {"tracking": {"uri": "postgresql://***@db/m?sslmode=require&password=***"},
                     "search": {"storage": "s3://b/k?token=***"}, "name": "x"}


def test_a_long_reason_keeps_its_cause_and_no_part_of_a_password() -> None:
    """MLflow's errors quote the URL that failed before their cause: cut at its length alone, the
    line lost "Connection refused"; cut across a URL, a password's first part would stay."""
    from tuner.errors import reason

    url = "http://user:secretpassword12345@127.0.0.1:5055/api/2.0/mlflow/runs/log-batch"
    line = reason(ConnectionError(f"API request to {url} failed with exception " + "x" * 300
                                  + ": [Errno 111] Connection refused"))
    assert line.endswith("Connection refused") and len(line) <= 303
    assert "secret" not in line and "http://user:***@127.0.0.1" in line


# Passwords a URI may hold, each between the markers Zq and Zx that no output holds otherwise:
# every printable character with a blank and both quotes, %-escapes, unicode.
PASSWORDS = [f"Zq{c}u\"o t'{c}Zx" for c in string.printable.strip() + " "] + [
    "Zq%40%3A%2F%23%25%20Zx", "Zq@:/#?=+;,Zx", "Zqpäss☃wörd Zx", "Zq a b'cZx", "Zq\\'\"\\Zx"]
URIS = ["postgresql+psycopg2://bob:{}@127.0.0.1:9/db", "postgresql://bob:{}@127.0.0.1:9/db",
        "http://bob:{}@127.0.0.1:9", "https://{}@127.0.0.1:9/",
        "postgresql://127.0.0.1:9/db?user=bob&sslpassword={}"]


def _leaks(text: str) -> bool:
    return "Zq" in text or "Zx" in text


@pytest.mark.parametrize("form", URIS)
def test_a_known_uri_is_masked_by_its_structure(form: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever its password holds, a URI tuner was given shows its host and none of its
    password: as given, quoted, %-encoded, or cut anywhere inside it, as a driver that parsed
    the URI otherwise quotes the rest with the host (a token alone holds no ":", which ends a
    user, and a query value no "&", which ends it)."""
    from urllib.parse import quote

    from tuner.store import redact as module

    for password in PASSWORDS:
        if ("://{}@" in form and ":" in password) or ("={}" in form and "&" in password):
            continue
        monkeypatch.setattr(module, "_known", {})  # the URIs of one command, as in use
        monkeypatch.setattr(module, "_secrets", set())
        uri = form.format(password)
        module.remember(uri)
        assert not _leaks(module.mask_uri(uri)) and "127.0.0.1:9" in module.mask_uri(uri), uri
        text = (f"error: tracking store {uri} cannot be used: {uri}/api/2.0 failed; "
                f"{json.dumps({'uri': uri})} {uri!r} {quote(password)} {password!r}")
        assert not _leaks(redact(text)), (uri, redact(text))
        at = uri.index(password)
        for cut in range(at + 1, at + len(password)):
            rest = [f'option "{uri[cut:]}"'] if "{}@" in form else []  # a host to tell by
            for piece in [f"user {uri[:cut]}", *rest]:
                assert not _leaks(redact(piece)), (piece, redact(piece))


def test_a_piece_of_a_password_a_driver_quotes_is_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLAlchemy reads a password up to its first "@"; psycopg2 then named the rest."""
    from tuner.store import redact as module
    from tuner.store.redact import remember

    monkeypatch.setattr(module, "_known", {})  # the URIs of one command, whatever ran before
    monkeypatch.setattr(module, "_secrets", set())

    remember("postgresql+psycopg2://bob:Zq a@b'c\"?#Zx@127.0.0.1:9/db?sslmode=disable")
    assert redact('invalid connection option "#Zx@127.0.0.1:9/db?sslmode"') == \
        'invalid connection option "***@127.0.0.1:9/db?sslmode"'


def test_a_query_password_is_masked_whole() -> None:
    from tuner.store.redact import mask_uri

    assert mask_uri("postgresql://h/db?user=bob&password=a b'c&sslmode=x#y") == \
        "postgresql://h/db?user=bob&password=***&sslmode=x#y"
    assert mask_uri("sqlite:////data/a:b@c.db?token=x") == "sqlite:////data/a:b@c.db?token=***"


def test_a_common_password_leaves_the_text_around_it() -> None:
    """A password that is also the user's name or the database's is masked in its URI but not
    wherever the word appears."""
    from tuner.store.redact import remember

    remember("postgresql://postgres:postgres@localhost/mlflow")
    assert redact("tracking store postgresql://postgres:postgres@localhost/mlflow: refused") \
        == "tracking store postgresql://postgres:***@localhost/mlflow: refused"


STUDY = """\
description: a study whose store is unreachable
data: {{source: synthetic}}
model: {{vocab_size: 512, context_length: 64, d_model: 64, num_layers: 2, num_heads: 4, d_ff: 192}}
hparams: {{α_max: 0.001}}
budget: {{tokens: 40960, eval_tokens: 8192}}
search: {{num_samples: 1}}
tracking: {{uri: {uri}}}
"""


def _commands(uri: str, tmp: Path) -> list[list[str]]:
    return [["best", "--study", "x", "--tracking-uri", uri],
            ["report", "--study", "x", "--out", str(tmp / "r"), f"--tracking-uri={uri}"],
            ["replay", "--study", "x", "--tracking-uri", uri],
            ["generate", "--prompt", "hi", "--run", "abc", "--tracking-uri", uri],
            ["ui", "--tracking-uri", uri],
            ["scale", "--study", "a", "--study", "b", "--study", "c", "--tracking-uri", uri]]


@pytest.mark.parametrize("case", range(6))
def test_no_command_prints_a_password(case: int, tmp_path: Path) -> None:
    """Each command that reads a store, given one that does not answer, names it without its
    password: on the command line, in MLFLOW_TRACKING_URI, or in a study file."""
    tuner = str(Path(sys.executable).with_name("tuner"))
    password = PASSWORDS[case * 17 % len(PASSWORDS)]
    uri = URIS[case % 3].format(password)
    args = _commands(uri, tmp_path)[case]
    runs = [(args, {})]
    if case == 0:  # the store in the environment, and in a study file
        runs.append((args[:-2], {"MLFLOW_TRACKING_URI": uri}))
        study = tmp_path / "s.yaml"
        in_file = URIS[0].format("Zq a@b'c\"?#Zx") + "?sslmode=disable&sslpassword=Zq a b'\"Zx"
        study.write_text(STUDY.format(uri=json.dumps(in_file)))
        runs += [(["space", "show", str(study)], {}),
                 (["search", "--space", str(study), "--storage", str(tmp_path / "ray")], {})]
    for command, env in runs:
        proc = subprocess.run([tuner, *command], capture_output=True, text=True, timeout=120,
                              cwd=tmp_path, env={**os.environ, **env}, check=False)
        out = proc.stdout + proc.stderr
        assert proc.returncode in (0, 2) and "127.0.0.1" in out and not _leaks(out), (command, out)


def test_params_and_tags_reach_mlflow_masked(tmp_path: Path, mlflow_store_template: Path) -> None:
    """Every param and tag goes through one writer, which masks a URI tuner was given (a failed
    trial's traceback may quote one), in a real MLflow store."""
    from mlflow import MlflowClient
    from studies import fresh_store

    from tuner.store.redact import remember
    from tuner.store.write import log_params_tags

    uri = URIS[0].format(PASSWORDS[7])
    remember(uri)
    client = MlflowClient(tracking_uri=fresh_store(tmp_path, mlflow_store_template))
    run = client.create_run(client.create_experiment("x"))
    log_params_tags(client, run.info.run_id, {"storage": uri},
                    {"tuner.error": f"Traceback: OperationalError: {uri!r} refused"})
    data = client.get_run(run.info.run_id).data
    assert not _leaks(json.dumps([data.params, data.tags]))
    assert data.params["storage"] == "postgresql+psycopg2://bob:***@127.0.0.1:9/db"


def test_a_library_log_record_is_masked(caplog: pytest.LogCaptureFixture) -> None:
    """MLflow's retries log the error they caught, URI and all, straight to stderr."""
    import logging

    from tuner.store.redact import mask_log_records, remember

    uri = URIS[1].format(PASSWORDS[3])
    remember(uri)
    factory = logging.getLogRecordFactory()
    mask_log_records()
    try:
        logging.getLogger("mlflow.store.db.utils").warning("engine failed: %s", uri)
        try:
            raise ConnectionError(f"cannot reach {uri}")
        except ConnectionError:
            logging.getLogger("sqlalchemy").exception("caught")
    finally:
        logging.setLogRecordFactory(factory)
    assert "engine failed: postgresql://bob:***@127.0.0.1:9/db" in caplog.text
    assert "cannot reach postgresql://bob:***@127.0.0.1:9/db" in caplog.text
    assert not _leaks(caplog.text)


def _api_calls(tmp: Path) -> dict[str, Any]:
    """Each function of the Python API that reads a store, called on a store given by URI."""
    import tuner

    study = yaml.safe_load(STUDY.format(uri="sqlite:///unused.db"))
    return {"best": lambda uri: tuner.best("x", tracking_uri=uri),
            "trials": lambda uri: tuner.trials("x", tracking_uri=uri),
            "top_trials": lambda uri: tuner.top_trials("x", 3, tracking_uri=uri),
            "confirmation": lambda uri: tuner.confirmation("x", tracking_uri=uri),
            "report": lambda uri: tuner.report("x", tmp / "r", tracking_uri=uri),
            "replay": lambda uri: tuner.replay("abc", tracking_uri=uri),
            "generate": lambda uri: tuner.generate("abc", "hi", tracking_uri=uri),
            "search": lambda uri: tuner.search(study, name="x", tracking_uri=uri,
                                               storage=tmp / "ray", quiet=True)}


@pytest.mark.parametrize("form", [*URIS, "https://dave:{}@127.0.0.1:9/"])
def test_no_api_error_holds_a_password(form: str, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Every function of the Python API raises a store it cannot use as a TrackingError whose
    message, repr and traceback hold no piece of its password: masked as the error is made (the
    CLI masked it only as it printed it, and `tuner.best` raised `TrackingError: tracking server
    https://dave:HttpsPassw0rd42@127.0.0.1:1/ is not reachable`)."""
    import traceback

    import tuner
    from tuner.store import redact as module

    for password in ("Zq@:/#?=+;,Zx", "Zq a b'cZx", "ZqHttpsPassw0rd42Zx"):
        if ("://{}@" in form and ":" in password) or ("={}" in form and "&" in password):
            continue
        monkeypatch.setattr(module, "_known", {})  # as a new process: no URI remembered
        monkeypatch.setattr(module, "_secrets", set())
        uri = form.format(password)
        for name, call in _api_calls(tmp_path).items():
            with pytest.raises(tuner.UserError) as caught:
                call(uri)
            told = "".join([str(caught.value), repr(caught.value),
                            *traceback.format_exception(caught.value)])
            assert "127.0.0.1" in told and not _leaks(told), (name, uri, told)
