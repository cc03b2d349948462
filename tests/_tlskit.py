"""Certificates and SSL contexts for the TLS tests, made by the ``openssl`` CLI, no network.

Once per session (on first use) this makes, in a temporary directory:

* a CA (key and self-signed certificate);
* a server certificate for ``localhost`` (subjectAltName DNS:localhost, IP:127.0.0.1)
  signed by that CA;
* a client certificate (CN ferroloop-client) signed by that CA, for client-auth tests;
* an unrelated self-signed ``localhost`` certificate that nothing trusts.

All keys are EC prime256v1, so generating everything takes a few tens of milliseconds.
Importing this module skips the importing test module if ``openssl`` is missing.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import shutil
import ssl
import subprocess
import tempfile
from types import SimpleNamespace

import pytest
from _netkit import Accepting, Recorder, address_of, close_all, serving

OPENSSL = shutil.which("openssl")
if OPENSSL is None:
    pytest.skip(
        "the TLS tests generate their certificates with the `openssl` command, "
        "which is not installed",
        allow_module_level=True,
    )

SERVER_CN = "localhost"
CLIENT_CN = "ferroloop-client"
CA_CN = "ferroloop test CA"

# A self-contained configuration: the system's openssl.cnf adds nothing.
_CONFIG = """\
[req]
distinguished_name = dn
prompt = no

[dn]

[ca_ext]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash

[server_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always

[client_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always

[self_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
"""

_EC_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def _openssl(*args, cwd):
    result = subprocess.run(
        [OPENSSL, *args], cwd=cwd, capture_output=True, text=True, timeout=30, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"openssl {' '.join(args)} failed ({result.returncode}):\n{result.stderr}"
        )


def _self_signed(cwd, name, cn, extensions):
    _openssl(
        "req", "-x509", *_EC_KEY, "-config", "openssl.cnf", "-extensions", extensions,
        "-subj", f"/CN={cn}", "-days", "30",
        "-keyout", f"{name}.key", "-out", f"{name}.pem",
        cwd=cwd,
    )  # fmt: skip


def _signed_by_ca(cwd, name, cn, extensions, serial):
    _openssl(
        "req", "-new", *_EC_KEY, "-config", "openssl.cnf",
        "-subj", f"/CN={cn}", "-keyout", f"{name}.key", "-out", f"{name}.csr",
        cwd=cwd,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-set_serial", str(serial), "-days", "30",
        "-extfile", "openssl.cnf", "-extensions", extensions, "-out", f"{name}.pem",
        cwd=cwd,
    )  # fmt: skip


@functools.cache
def certs():
    """Paths of the session's certificates and keys (made on the first call).

    Attributes: dir, ca_pem, server_pem, server_key, client_pem, client_key,
    untrusted_pem, untrusted_key.
    """
    d = tempfile.mkdtemp(prefix="ferroloop-tls-")
    atexit.register(shutil.rmtree, d, ignore_errors=True)
    with open(os.path.join(d, "openssl.cnf"), "w") as f:
        f.write(_CONFIG)
    _self_signed(d, "ca", CA_CN, "ca_ext")
    _signed_by_ca(d, "server", SERVER_CN, "server_ext", 1001)
    _signed_by_ca(d, "client", CLIENT_CN, "client_ext", 1002)
    _self_signed(d, "untrusted", SERVER_CN, "self_ext")
    join = functools.partial(os.path.join, d)
    return SimpleNamespace(
        dir=d,
        ca_pem=join("ca.pem"),
        server_pem=join("server.pem"),
        server_key=join("server.key"),
        client_pem=join("client.pem"),
        client_key=join("client.key"),
        untrusted_pem=join("untrusted.pem"),
        untrusted_key=join("untrusted.key"),
    )


def server_context(*, untrusted=False, require_client_cert=False, alpn=None):
    """A server-side SSLContext presenting the CA-signed localhost certificate.

    untrusted: present the self-signed certificate instead.
    require_client_cert: CERT_REQUIRED, trusting the session's CA.
    """
    c = certs()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    if untrusted:
        ctx.load_cert_chain(c.untrusted_pem, c.untrusted_key)
    else:
        ctx.load_cert_chain(c.server_pem, c.server_key)
    if require_client_cert:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(c.ca_pem)
    if alpn is not None:
        ctx.set_alpn_protocols(alpn)
    return ctx


def client_context(*, with_cert=False, alpn=None, cafile=None):
    """A client-side SSLContext trusting only the session's CA (hostname check on).

    with_cert: also present the CA-signed client certificate.
    cafile: trust this file's certificates instead of the CA.
    """
    c = certs()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(c.ca_pem if cafile is None else cafile)
    if with_cert:
        ctx.load_cert_chain(c.client_pem, c.client_key)
    if alpn is not None:
        ctx.set_alpn_protocols(alpn)
    return ctx


# -- connected pairs over TLS ----------------------------------------------------------


@contextlib.asynccontextmanager
async def tls_serving(loop, factory, ctx=None, host="127.0.0.1", **kwargs):
    """A TLS server on host, port 0 (ctx defaults to server_context()), closed on exit."""
    ctx = server_context() if ctx is None else ctx
    async with serving(loop, factory, host, ssl=ctx, **kwargs) as server:
        yield server


@contextlib.asynccontextmanager
async def tls_connected(
    loop, client=Recorder, server=Recorder, *, server_ctx=None, client_ctx=None
):
    """A (client protocol, server protocol) pair over TLS, handshake done; aborted on exit."""
    accepting = Accepting(server)
    async with tls_serving(loop, accepting, server_ctx) as srv:
        _, cp = await loop.create_connection(
            client,
            *address_of(srv),
            ssl=client_context() if client_ctx is None else client_ctx,
            server_hostname=SERVER_CN,
        )
        sp = await accepting.made()
        try:
            yield cp, sp
        finally:
            await close_all(cp, *accepting.protocols)
