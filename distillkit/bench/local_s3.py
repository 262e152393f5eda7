"""A real S3 API server on 127.0.0.1 (moto in server mode), for `bench scale --s3` and the tests.

`env` holds the AWS variables that point s3fs (and any child process) at it; with a `log` file the server's
request log is kept there and `requests()` counts it by HTTP method.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


class LocalS3Server:
    def __init__(self, log: Path | None, key: str, secret: str):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.log = log
        self._out = open(log, "wb") if log is not None else subprocess.DEVNULL
        exe = Path(sys.executable).parent / "moto_server"
        self.proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=self._out,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.endpoint = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(self.endpoint + "/moto-api/", timeout=1)
                break
            except Exception:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.close()
                    raise RuntimeError("moto_server did not start")
                time.sleep(0.2)
        self.env = {"AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret, "AWS_DEFAULT_REGION": "us-east-1",
                    "AWS_ENDPOINT_URL": self.endpoint, "AWS_EC2_METADATA_DISABLED": "true"}
        self.fs = None

    def filesystem(self):
        """An s3fs file system on this server (one, made on first use)."""
        import s3fs

        if self.fs is None:
            self.fs = s3fs.S3FileSystem(endpoint_url=self.endpoint, key=self.env["AWS_ACCESS_KEY_ID"],
                                        secret=self.env["AWS_SECRET_ACCESS_KEY"], skip_instance_cache=True)
        return self.fs

    def requests(self) -> dict[str, int]:
        """Requests logged so far, by HTTP method (needs a `log`)."""
        self._out.flush()
        counts: dict[str, int] = {}
        for m in re.finditer(rb'"([A-Z]+) /[^"]* HTTP/1\.[01]"', self.log.read_bytes()):
            counts[m.group(1).decode()] = counts.get(m.group(1).decode(), 0) + 1
        return counts

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # its own session: the server and anything it started
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if self.log is not None:
            self._out.close()
