"""An S3-compatible server for the tests: moto's, in a thread of the test process on 127.0.0.1
(a free port, one a session), with its IAM checks on, so a wrong key is refused as by S3; a
fresh bucket per test, and the AWS variables set for that test only."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

REGION = "us-east-1"


@dataclass(frozen=True)
class S3:
    """The test's bucket on the server at `endpoint`, and the key that may use it."""

    endpoint: str
    bucket: str
    key_id: str
    secret: str

    def uri(self, prefix: str = "studies") -> str:
        """s3://BUCKET/PREFIX (the endpoint comes from AWS_ENDPOINT_URL)."""
        return f"s3://{self.bucket}/{prefix}"

    def env(self) -> dict[str, str]:
        """The standard AWS variables that reach this bucket."""
        return {"AWS_ACCESS_KEY_ID": self.key_id, "AWS_SECRET_ACCESS_KEY": self.secret,
                "AWS_ENDPOINT_URL": self.endpoint, "AWS_DEFAULT_REGION": REGION,
                "AWS_EC2_METADATA_DISABLED": "true"}

    def client(self) -> object:
        """A boto3 S3 client on the server with this key."""
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION,
                            aws_access_key_id=self.key_id, aws_secret_access_key=self.secret)

    def keys(self, prefix: str = "") -> list[str]:
        """The object keys in the bucket under `prefix`."""
        pages = self.client().get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]


@pytest.fixture(scope="session")
def s3_server() -> Iterator[tuple[str, str, str]]:
    """moto's server on 127.0.0.1: its endpoint, and an access key with every right on it."""
    import boto3
    from moto import settings
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    iam = boto3.client("iam", endpoint_url=endpoint, region_name=REGION,
                       aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
    iam.create_user(UserName="tuner")
    iam.put_user_policy(UserName="tuner", PolicyName="all", PolicyDocument=json.dumps(
        {"Version": "2012-10-17",
         "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName="tuner")["AccessKey"]
    before = settings.INITIAL_NO_AUTH_ACTION_COUNT
    settings.INITIAL_NO_AUTH_ACTION_COUNT = 0  # from now on each request's key is checked
    try:
        yield endpoint, key["AccessKeyId"], key["SecretAccessKey"]
    finally:
        settings.INITIAL_NO_AUTH_ACTION_COUNT = before
        server.stop()


@pytest.fixture
def s3(s3_server: tuple[str, str, str], monkeypatch: pytest.MonkeyPatch) -> S3:
    """A new bucket on the test server; the AWS variables that reach it set for this test."""
    endpoint, key_id, secret = s3_server
    found = S3(endpoint, f"tuner-{uuid.uuid4().hex[:12]}", key_id, secret)
    found.client().create_bucket(Bucket=found.bucket)
    for name, value in found.env().items():
        monkeypatch.setenv(name, value)
    return found
