"""Per-run SSH keys: a client key and the guest's host key, both generated here, so the
guest's host key is known in advance and pinned (no blind accept).

ECDSA P-256, not Ed25519: the guest's OpenSSH signs and verifies Ed25519 with its own
portable reference code, OpenSSL does P-256 with tuned assembly; under TCG that is ~0.15 s
of every login (the client's signature check alone took 0.185 s after a restore)."""
from __future__ import annotations

import io
from dataclasses import dataclass

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec


@dataclass(frozen=True)
class KeyPair:
    private_openssh: bytes
    public_line: str  # "ecdsa-sha2-nistp256 AAAA... comment"

    @property
    def pkey(self) -> paramiko.PKey:
        return load(self.private_openssh)


def load(private_openssh: bytes) -> paramiko.PKey:
    return paramiko.ECDSAKey.from_private_key(io.StringIO(private_openssh.decode()))


def generate(comment: str) -> KeyPair:
    key = ec.generate_private_key(ec.SECP256R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    return KeyPair(private, f"{public} {comment}")
