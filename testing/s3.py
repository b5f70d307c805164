"""An S3-API server on loopback for tests and benchmarks: moto in server mode (the dev
dependency group installs it), started in its own process and stopped with it."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from testing.project import free_port, stop_process

# moto accepts any keys; they come from the environment, as a team's real ones would
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1"}


@contextlib.contextmanager
def s3_server(bucket: str, log: Path, check_keys: bool = False) -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 holding an empty ``bucket``; yields its endpoint URL.
    ``check_keys``: after the bucket is made, it refuses every request (403), as a real store
    refuses keys it does not know (moto knows none)."""
    port = free_port()  # moto cannot say which port it took for 0
    endpoint = f"http://127.0.0.1:{port}"
    moto = Path(sys.executable).with_name("moto_server")
    with log.open("wb") as out:
        process = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)], stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True,
                                   env={**os.environ, **CREDENTIALS, **(
                                       # moto's own switch: requests after the first two (the
                                       # start-up probe below, the bucket) are checked
                                       {"INITIAL_NO_AUTH_ACTION_COUNT": "2"} if check_keys else {})})
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(endpoint, timeout=5).close()
                break
            except (urllib.error.URLError, ConnectionError):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start: {log.read_text()[-2000:]}") from None
                time.sleep(0.2)
        import boto3  # moto's own dependency

        boto3.client("s3", endpoint_url=endpoint, region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
                     aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                     aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"]
                     ).create_bucket(Bucket=bucket)
        yield endpoint
    finally:
        stop_process(process, timeout=15)
