"""App certificates for the OAuth2 certificate-credential tests, made in the test run.

No key file is committed: each :class:`AppCertificate` is a fresh RSA key and a
self-signed certificate (what ``New-SelfSignedCertificate`` or ``openssl req -x509`` gives
an Entra app registration), written to a test's own directory when a config needs files.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class AppCertificate:
    """A private key and its self-signed certificate."""

    key: CertificateIssuerPrivateKeyTypes
    certificate: x509.Certificate

    @property
    def key_pem(self) -> str:
        return self.key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()).decode()

    @property
    def cert_pem(self) -> str:
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode()

    @property
    def key_body(self) -> str:
        """A line from the middle of the key's PEM: must never show in a log or message."""
        return self.key_pem.splitlines()[5]

    @property
    def sha1_thumbprint(self) -> str:
        return self.certificate.fingerprint(hashes.SHA1()).hex().upper()

    def write(self, directory: Path, name: str = "app") -> tuple[Path, Path]:
        """Write ``<name>.key`` (mode 0400, like a credential) and ``<name>.crt``."""
        key_file, cert_file = directory / f"{name}.key", directory / f"{name}.crt"
        key_file.write_text(self.key_pem)
        key_file.chmod(0o400)
        cert_file.write_text(self.cert_pem)
        return key_file, cert_file


def make_certificate(*, key: CertificateIssuerPrivateKeyTypes | None = None,
                     days: int = 365, name: str = "omnirelay-test-app") -> AppCertificate:
    """A self-signed certificate for ``key`` (a new RSA-2048 key when None).

    ``days`` below 0 gives one that has already expired.
    """
    key = key or rsa_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    end = now + timedelta(days=days)
    start = min(now, end) - timedelta(days=30)
    certificate = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(start).not_valid_after(end)
                   .sign(key, hashes.SHA256()))
    return AppCertificate(key, certificate)


def rsa_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@functools.cache
def shared_certificate() -> AppCertificate:
    """One certificate for the tests that need any (an RSA key takes a while to make)."""
    return make_certificate()
