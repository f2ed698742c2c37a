"""Certificate credentials for OAuth2 (RFC 7523 ``private_key_jwt``): the client signs a
JWT for each token request instead of sending a secret, as Entra ID asks of app-only access.

Its own module: the token exchange (gateway/oauth2.py) needs none of it unless a certificate
is configured, and imports it only then.
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import jwt
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from gateway.configkit import Secret, Section
from gateway.oauth2 import CERTIFICATE_WARNING_DAYS

ASSERTION_LIFETIME = 300
"""Seconds a client assertion is valid: Microsoft asks for 5 to 10 minutes at most."""
MIN_RSA_BITS = 2048


@dataclass(frozen=True, slots=True)
class ClientCertificate:
    """A certificate credential: the private key signs one client assertion per request.

    The key stays a :class:`Secret` (its PEM) like every other credential; the rest is
    public and names the certificate as the app registration lists it.
    """

    private_key: Secret
    x5t_s256: str  # base64url SHA-256 of the certificate's DER: the assertion's header
    sha1_thumbprint: str  # hex, what the Entra portal shows under Certificates & secrets
    not_after: datetime
    algorithm: str = "PS256"

    def assertion(self, *, client_id: str, audience: str, now: float,
                  key: rsa.RSAPrivateKey | None = None) -> str:
        """A signed JWT for one token request (RFC 7523 §3; Microsoft's claims)."""
        issued = int(now)
        claims = {"aud": audience, "iss": client_id, "sub": client_id,
                  "jti": str(uuid.uuid4()), "nbf": issued, "iat": issued,
                  "exp": issued + ASSERTION_LIFETIME}
        return jwt.encode(claims, key or self.load_key(), algorithm=self.algorithm,
                          headers={"typ": "JWT", "x5t#S256": self.x5t_s256})

    def load_key(self) -> rsa.RSAPrivateKey:
        """The private key object (checked when the config was read)."""
        key = serialization.load_pem_private_key(self.private_key.reveal().encode(), None)
        assert isinstance(key, rsa.RSAPrivateKey)
        return key


def read_client_certificate(section: Section, key_source: str, private_key: Secret,
                        certificate_file: str | None,
                        algorithm: str) -> ClientCertificate | None:
    """Check the key and its certificate now, so a mismatch is a config error, not a 401.

    Messages never quote the key file's content. The certificate may sit in the key's own
    file (a combined PEM, as Azure Key Vault exports it) or in ``certificate_file``, alone
    or with its chain (the one matching the key is used).
    """
    pem = private_key.reveal().encode()
    try:
        key = serialization.load_pem_private_key(pem, None)
    except TypeError:
        section.error(key_source, "is encrypted with a passphrase",
                      "store it without one and protect the file instead (mode 0400, a "
                      "systemd credential): openssl pkey -in key.pem -out plain-key.pem")
        return None
    except (ValueError, UnsupportedAlgorithm):
        section.error(key_source, "is not a PEM private key",
                      'expected a "-----BEGIN PRIVATE KEY-----" block (or BEGIN RSA '
                      "PRIVATE KEY); convert a .pfx with openssl pkcs12 -nodes")
        return None
    if not isinstance(key, rsa.RSAPrivateKey):
        section.error(key_source, "must be an RSA key",
                      "Entra ID's certificate credentials are RSA (signed with PS256 or "
                      "RS256): make the certificate with an RSA key of 2048 bits or more")
        return None
    if key.key_size < MIN_RSA_BITS:
        section.error(key_source, f"is a {key.key_size}-bit RSA key, too short",
                      f"Entra ID takes {MIN_RSA_BITS} bits or more: make a new certificate")
        return None
    if certificate_file is not None:
        try:
            cert_pem = Path(certificate_file).read_bytes()
        except OSError as exc:
            section.error("certificate_file",
                          f"cannot read certificate file {certificate_file}: {exc.strerror}",
                          "check the path and that the service user can read it")
            return None
        where = "certificate_file"
    else:
        cert_pem, where = pem, key_source
    try:
        certificates = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        if certificate_file is None:
            section.error("certificate_file", f"is required with {key_source}",
                          "the certificate uploaded to the app registration (PEM), unless "
                          "the key's file holds it too")
        else:
            section.error("certificate_file", "is not a PEM certificate",
                          'expected a "-----BEGIN CERTIFICATE-----" block (a .cer in DER: '
                          "openssl x509 -inform der -in app.cer -out app.pem)")
        return None
    public = _spki(key.public_key())
    certificate = next((c for c in certificates if _spki(c.public_key()) == public), None)
    if certificate is None:
        first = _portal_thumbprint(certificates[0])
        what = f"does not match {key_source}: the certificate" if certificate_file else \
            "holds a certificate"
        section.error(where, f"{what} (SHA-1 thumbprint {first}) made for another key",
                      "give the private key this certificate was issued for, or the "
                      "certificate of this key")
        return None
    not_after = certificate.not_valid_after_utc
    sha1 = _portal_thumbprint(certificate)
    now = datetime.now(UTC)
    if not_after <= now:
        section.ctx.warn(section.key(where), f"the certificate (SHA-1 thumbprint {sha1}) "
                         f"expired on {not_after:%Y-%m-%d}: the token endpoint refuses it; "
                         "upload a new one to the app registration")
    elif (not_after - now).days < CERTIFICATE_WARNING_DAYS:
        section.ctx.warn(section.key(where), f"the certificate (SHA-1 thumbprint {sha1}) "
                         f"expires on {not_after:%Y-%m-%d}: upload a new one to the app "
                         "registration and put it in place before then")
    digest = certificate.fingerprint(hashes.SHA256())
    x5t = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    return ClientCertificate(private_key, x5t, sha1, not_after, algorithm)


def _portal_thumbprint(certificate: x509.Certificate) -> str:
    """The SHA-1 thumbprint in hex, as the Entra portal lists a certificate: a name only."""
    return certificate.fingerprint(hashes.SHA1()).hex().upper()  # noqa: S303


def _spki(key: CertificatePublicKeyTypes) -> bytes:
    """A public key's SubjectPublicKeyInfo (DER), to compare a key with a certificate's."""
    return key.public_bytes(serialization.Encoding.DER,
                            serialization.PublicFormat.SubjectPublicKeyInfo)
