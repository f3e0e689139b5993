"""Per-run SSH keys: a client key and the guest's host key, both generated here, so the
guest's host key is known in advance and pinned (no blind accept)."""
from __future__ import annotations

import io
from dataclasses import dataclass

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


@dataclass(frozen=True)
class KeyPair:
    private_openssh: bytes
    public_line: str  # "ssh-ed25519 AAAA... comment"

    @property
    def pkey(self) -> paramiko.PKey:
        return load(self.private_openssh)


def load(private_openssh: bytes) -> paramiko.PKey:
    return paramiko.Ed25519Key.from_private_key(io.StringIO(private_openssh.decode()))


def generate(comment: str) -> KeyPair:
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    return KeyPair(private, f"{public} {comment}")
