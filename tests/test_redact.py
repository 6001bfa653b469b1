"""Passwords in URIs are masked wherever tuner prints or records a URI."""

from __future__ import annotations

import pytest

from tuner.redact import redact


@pytest.mark.parametrize(("text", "shown"), [
    ("postgresql://tuner:s3cret@db:5432/mlflow", "postgresql://tuner:***@db:5432/mlflow"),
    ("mysql+pymysql://root:p%40ss@db/mlflow", "mysql+pymysql://root:***@db/mlflow"),
    ("postgresql://tuner:pa/ss@db/optuna", "postgresql://tuner:***@db/optuna"),
    ("error: tracking store http://u:pw@127.0.0.1:5000 failed: http://u:pw@127.0.0.1:5000/api",
     "error: tracking store http://u:***@127.0.0.1:5000 failed: http://u:***@127.0.0.1:5000/api"),
    ("http://u@host:5000", "http://u@host:5000"),  # a user alone is no secret
    ("sqlite:////data/a:b@c.db", "sqlite:////data/a:b@c.db"),  # a path, not a password
    ("sqlite:///mlflow.db", "sqlite:///mlflow.db"),
])
def test_redact_masks_only_passwords(text: str, shown: str) -> None:
    assert redact(text) == shown
