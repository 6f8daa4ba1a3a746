"""Refused credentials and missing buckets, for every command, on a server that checks signatures.

moto accepts any credentials; SeaweedFS (tests/seaweedfs.py) checks every signature as AWS does. A
wrong secret, an unknown access key or an expired token is a setup problem (exit 2, a message naming
the credentials), never an outage to wait out (exit 6) nor a corrupt store (exit 7); a bucket that does
not exist is exit 2 too. No message carries the secret.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import boto3
import botocore.exceptions
import pytest
from botocore.config import Config

from clipfarm_fusion.devtools import synthetic
from clipfarm_fusion.stores import lake, s3_faults, s3io

from .seaweedfs import seaweedfs_server

CLI = str(Path(sys.executable).parent / "clipfarm-fusion")
ACCESS_KEY, SECRET_KEY = "clipfarm-tests", "seaweed-secret-for-the-tests-0001"
BUCKET = "clipfarm-signed"
WRONG_SECRET = "not-the-secret-at-all-0002"


@pytest.fixture(scope="module")
def signed_s3(tmp_path_factory):
    """A SeaweedFS gateway holding one fused day (run as a user would, with the right credentials)."""
    with seaweedfs_server(ACCESS_KEY, SECRET_KEY) as endpoint:
        env = aws_env(endpoint, ACCESS_KEY, SECRET_KEY)
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}),
        )
        client.create_bucket(Bucket=BUCKET)
        day, objects = synthetic.make_day(30, dim=8, mix={"full": 0.8, "placeholder": 0.2})
        synthetic.seed(client, BUCKET, "clipfarm", day, objects, threads=4)
        state = tmp_path_factory.mktemp("state")
        done = cli(env, "run", "--bucket", BUCKET, "--run-date", "2026-03-01", "--state-dir", str(state))
        assert done.returncode == 0, done.stderr[-3000:]
        yield endpoint, state


def aws_env(endpoint: str, access_key: str, secret_key: str) -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CLIPFARM_"))}
    return environment | {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": access_key,
        "AWS_SECRET_ACCESS_KEY": secret_key,
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], capture_output=True, text=True, env=env, timeout=300)


def every_command(bucket: str, state: Path, out: Path) -> dict[str, list[str]]:
    target = ["--bucket", bucket, "--strategy", "concat"]
    return {
        "run": [
            "run",
            "--bucket",
            bucket,
            "--run-date",
            "2026-03-02",
            "--state-dir",
            str(state),
            "--s3-patience",
            "600",
        ],
        "verify": ["verify", *target],
        "inspect": ["inspect", *target, "--video-id", "vid000000"],
        "export": ["export", *target, "--out", str(out / "x.parquet")],
        "gc": ["gc", *target, "--dry-run"],
        "maintain": ["maintain", *target, "--dry-run"],
    }


def test_the_job_and_every_reader_work_on_a_server_that_checks_signatures(signed_s3, tmp_path):
    endpoint, state = signed_s3
    env = aws_env(endpoint, ACCESS_KEY, SECRET_KEY)
    for name, args in every_command(BUCKET, state, tmp_path).items():
        result = cli(env, *args)
        assert result.returncode == 0, (name, result.stderr[-2000:])


@pytest.mark.parametrize(
    ("access_key", "secret_key", "code"),
    [
        (ACCESS_KEY, WRONG_SECRET, "SignatureDoesNotMatch"),
        ("nobody-we-know", WRONG_SECRET, "InvalidAccessKeyId"),
    ],
    ids=["wrong-secret", "unknown-key"],
)
def test_refused_credentials_are_exit_2_naming_them_for_every_command(
    signed_s3, tmp_path, access_key, secret_key, code
):
    """Even with an hour of S3 patience: a refusal is answered at once, not waited out."""
    endpoint, state = signed_s3
    env = aws_env(endpoint, access_key, secret_key)
    for name, args in every_command(BUCKET, state, tmp_path).items():
        result = cli(env, *args)
        assert result.returncode == 2, (name, result.returncode, result.stderr[-2000:])
        assert "refused the credentials" in result.stderr and code in result.stderr, (name, result.stderr)
        assert secret_key not in result.stderr + result.stdout, name
        assert "Traceback" not in result.stderr, name


@pytest.mark.s3_backends
def test_a_missing_bucket_is_exit_2_for_every_command(s3_endpoint, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "CLIPFARM_BUCKET"}
    for name, args in every_command("no-such-bucket-here", tmp_path / "state", tmp_path).items():
        result = cli(env, *args)
        assert result.returncode == 2, (name, result.returncode, result.stderr[-2000:])
        assert "does not exist" in result.stderr and "--bucket" in result.stderr, (name, result.stderr)


def _client_error(code: str, status: int) -> botocore.exceptions.ClientError:
    response = {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return botocore.exceptions.ClientError(response, "GetObject")


@pytest.mark.parametrize("code", s3_faults.CREDENTIAL_CODES)
def test_every_credential_refusal_is_a_setup_problem_not_a_fault(code):
    """From boto3 (its error code) and from delta-rs (the code its message quotes), e.g. ExpiredToken,
    which no local server can produce."""
    quoted = OSError(f"Generic S3 error: 400 Bad Request <Error><Code>{code}</Code></Error>")
    for error in (_client_error(code, 403), quoted):
        assert s3_faults.setup_problem(error) is not None and not s3_faults.is_fault(error), code
        assert "refused the credentials" in str(s3_faults.setup_problem(error, "b")) and code in str(
            s3_faults.setup_problem(error, "b")
        )
    bodiless = OSError(
        "Error performing HEAD http://x/b/k - Server returned non-2xx status code 403 Forbidden"
    )
    assert s3_faults.setup_problem(bodiless) is not None and not s3_faults.is_fault(bodiless)
    assert (
        s3_faults.is_fault(_client_error("SlowDown", 503))
        and s3_faults.setup_problem(_client_error("SlowDown", 503)) is None
    )


def test_temporary_credentials_are_never_copied_into_delta_rs(monkeypatch, tmp_path):
    """A role's credentials refresh: delta-rs is left to resolve the chain (the same profile) itself.
    Static keys are handed over as they are."""
    config = tmp_path / "config"
    config.write_text(
        "[profile base]\naws_access_key_id = AKIDEXAMPLE\naws_secret_access_key = base-secret-000000\n"
        "[profile role]\nrole_arn = arn:aws:iam::123456789012:role/fusion\nsource_profile = base\n"
    )
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    role = lake.storage_options(s3io.make_client(profile_name="role"))
    assert "AWS_SECRET_ACCESS_KEY" not in role and "AWS_SESSION_TOKEN" not in role
    assert role["AWS_PROFILE"] == "role"
    static = lake.storage_options(s3io.make_client(profile_name="base"))
    assert static["AWS_SECRET_ACCESS_KEY"] == "base-secret-000000"


def test_no_message_carries_the_secret(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-value-123")
    assert s3_faults.redacted("x very-secret-value-123 y") == "x <AWS_SECRET_ACCESS_KEY> y"
