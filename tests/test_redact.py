"""Credentials in URIs are masked wherever tuner prints or records a URI."""

from __future__ import annotations

import pytest

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
    import json

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
