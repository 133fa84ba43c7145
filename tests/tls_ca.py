"""A throwaway certificate authority made with openssl, for the TLS tests (and the docs).

The commands are the ones docs/security.md shows a lab admin; the test of the docs runs
them from there, these run them for the other TLS tests.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Pki", "make_pki"]


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _run(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_pki(d: Path, host: str = "127.0.0.1") -> Pki:
    d.mkdir(parents=True, exist_ok=True)
    # keyUsage on the CA: Python 3.13 verifies strictly (VERIFY_X509_STRICT) and refuses a
    # CA without it ("CA cert does not include key usage extension")
    _run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=tomato test CA", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
         "-keyout", "ca.key", "-out", "ca.crt", cwd=d)  # fmt: skip
    for name, san in (("server", f"IP:{host},DNS:localhost"), ("client", "DNS:client")):
        _run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)  # fmt: skip
        (d / f"{name}.ext").write_text(f"subjectAltName={san}\n")
        _run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.crt",
             cwd=d)  # fmt: skip
    return Pki(d / "ca.crt", d / "server.crt", d / "server.key", d / "client.crt", d / "client.key")
