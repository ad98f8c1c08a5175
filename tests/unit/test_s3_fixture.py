"""The SeaweedFS fixture itself: authentication is on and two servers can run at once."""

import pytest
from botocore.exceptions import ClientError

from fixtures.s3server import start_s3_server


def test_auth_is_enforced(s3_server):
    s3_server.create_bucket("fixture-check")
    s3_server.client().put_object(Bucket="fixture-check", Key="a/b.txt", Body=b"hello")
    assert s3_server.client().get_object(Bucket="fixture-check", Key="a/b.txt")["Body"].read() == b"hello"
    with pytest.raises(ClientError) as exc:
        s3_server.client(secret_key="wrong-secret").list_objects_v2(Bucket="fixture-check")
    assert exc.value.response["Error"]["Code"] in ("SignatureDoesNotMatch", "AccessDenied", "InvalidAccessKeyId")


def test_second_server_gets_its_own_ports(s3_server, tmp_path):
    other = start_s3_server(tmp_path / "second")
    try:
        assert other.endpoint != s3_server.endpoint
        other.create_bucket("second-server")
        assert "second-server" in [b["Name"] for b in other.client().list_buckets()["Buckets"]]
    finally:
        other.stop()
