"""Throwaway certificates with openssl: a CA (and any number of other CAs, to be refused) and a server certificate
for 127.0.0.1 signed by the first, as a plant's broker or mail server has."""

from __future__ import annotations

import subprocess
from pathlib import Path


def make_certs(folder: Path, *, other_cas: tuple[str, ...] = ()) -> Path:
    """``folder`` with ``ca.crt``/``ca.key``, ``server.crt``/``server.key``, and ``<name>.crt`` per other CA."""
    folder.mkdir(parents=True, exist_ok=True)

    def ossl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder)

    for ca in ("ca", *other_cas):
        ossl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN=test-{ca}",
             "-keyout", f"{ca}.key", "-out", f"{ca}.crt")
    ossl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server.key", "-out",
         "server.csr")
    (folder / "ext").write_text("subjectAltName=IP:127.0.0.1\n")
    ossl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
         "-extfile", "ext", "-out", "server.crt")
    return folder
