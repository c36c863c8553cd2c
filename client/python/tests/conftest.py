"""A real vault for the tests: ``phivault init`` and ``phivault serve`` (the
binaries `make test` builds, or those in ``PHIVAULT_BIN_DIR``) on loopback
ports the server picks, stopped by their process when done. Clients are
made through the server's HTTP/JSON API with the admin key."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import tempfile
import urllib.request
from typing import Dict, List, Optional

import pytest

REPO = pathlib.Path(__file__).resolve().parents[3]
BIN = pathlib.Path(os.environ.get("PHIVAULT_BIN_DIR", REPO / "target" / "debug"))
#: How long a server may take to say it is ready, in seconds.
READY = 60


class Vault:
    """One vault in a temporary directory, and its server while it runs."""

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="phivault-py.")
        root = pathlib.Path(self._dir.name)
        self.data, self.key_file, admin = root / "data", root / "master.key", root / "admin.key"
        self.log_path = root / "server.log"
        binary = BIN / "phivault"
        if not binary.exists():
            pytest.fail(f"{binary} is missing: build the workspace first (`make test` does)")
        subprocess.run(
            [binary, "init", "--data-dir", self.data, "--master-key-file", self.key_file,
             "--create-key-file", "--admin-key-file", admin],
            check=True, stdout=subprocess.DEVNULL, env={**os.environ, "PHIVAULT_LOG": "warn"},
        )
        self.admin_key = admin.read_text().strip()
        self.process: Optional[subprocess.Popen] = None
        self.endpoint = ""
        self.http = ""
        self.start("127.0.0.1:0", "127.0.0.1:0")

    def start(self, listen: str, http_listen: str) -> None:
        """Serves the vault; the addresses are the server's own on 0."""
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [BIN / "phivault", "serve", "--data-dir", self.data, "--master-key-file", self.key_file,
             "--listen", listen, "--http-listen", http_listen, "--metrics-listen", "127.0.0.1:0"],
            stdout=subprocess.PIPE, stderr=log, text=True,
            env={**os.environ, "PHIVAULT_LOG": "debug"},
        )
        log.close()
        grpc = http = metrics = None
        assert self.process.stdout is not None
        while grpc is None or http is None or metrics is None:
            line = self.process.stdout.readline()
            if not line:
                raise RuntimeError(f"the server stopped before it was ready; see {self.log_path}")
            if line.startswith("phivault listening on "):
                grpc = line.split()[-1]
            elif line.startswith("phivault http on "):
                http = line.split()[-1]
            elif line.startswith("phivault metrics on "):
                metrics = line.split()[-1]
        self.endpoint = f"http://{grpc}"
        self.http = f"http://{http}"
        self.metrics = f"http://{metrics}/metrics"

    def stop(self, kill: bool = False) -> None:
        """Stops the server: SIGTERM (it drains its calls), or SIGKILL."""
        if self.process is not None:
            if kill:
                self.process.kill()
            else:
                self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None

    def restart(self, kill: bool = False) -> None:
        """Stops the server and serves again on the same ports."""
        grpc, http = self.endpoint.removeprefix("http://"), self.http.removeprefix("http://")
        self.stop(kill)
        self.start(grpc, http)

    def metric(self, name: str, rpc: str) -> float:
        """The sum of metric ``name`` over its series for gRPC method
        ``rpc``, as the server exports it now."""
        with urllib.request.urlopen(self.metrics, timeout=10) as answer:
            text = answer.read().decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name + "{") and f'rpc="{rpc}"' in line:
                total += float(line.rsplit(" ", 1)[1])
        return total

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def admin(self, method: str, path: str, body: Optional[dict] = None) -> dict:
        request = urllib.request.Request(
            self.http + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {self.admin_key}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            return json.load(answer)

    def create_client(self, name: str, scopes: List[str], **fields: object) -> str:
        """A new client's API key."""
        return self.admin("POST", "/v1/clients", {"name": name, "scopes": scopes, **fields})["api_key"]

    def close(self) -> None:
        self.stop()
        self._dir.cleanup()


@pytest.fixture(scope="session")
def vault():
    v = Vault()
    yield v
    v.close()


@pytest.fixture()
def own_vault():
    """A vault of the test's own, which it may restart."""
    v = Vault()
    yield v
    v.close()


@pytest.fixture(scope="session")
def keys(vault: Vault) -> Dict[str, str]:
    return {
        "pipeline": vault.create_client("py-pipeline", ["tokenize:*", "detokenize:*"]),
        "writer": vault.create_client("py-writer", ["tokenize:ssn"]),
        "masked": vault.create_client("py-masked", ["detokenize-masked:ssn"]),
    }
