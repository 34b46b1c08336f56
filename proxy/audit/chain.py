"""The hash chain: each record carries the hash of the one before it, over canonical JSON.

With a key (env SLUICE_AUDIT_HMAC_KEY) the hash is an HMAC, so whoever can write the files but
does not hold the key cannot re-chain them after an edit.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import orjson

GENESIS = "0" * 64
HMAC_KEY_ENV = "SLUICE_AUDIT_HMAC_KEY"
SCHEMA_VERSION = 1

# Every sealed line ends with this key and a 64-hex value, then "}\n".
_HASH_KEY = b',"hash":"'
_SEALED_TAIL = len(_HASH_KEY) + 64 + len(b'"}\n')


# For the few records orjson refuses (a string with a lone surrogate, which JSON input can
# carry as a "\\ud800" escape; an integer beyond 64 bits): ASCII with json's escapes.
_FALLBACK = json.JSONEncoder(sort_keys=True, separators=(",", ":"))


def canonical(record: dict[str, Any]) -> bytes:
    """The bytes a record's hash covers: orjson's compact output with sorted keys (UTF-8,
    non-ASCII written as is), a tenth of the CPU of the standard library's encoder. A record
    orjson cannot encode falls back to json's sorted, compact, ASCII-escaped form. Either way
    the hash covers the bytes written, so `verify` never re-serializes."""
    try:
        return orjson.dumps(record, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return _FALLBACK.encode(record).encode()


class Chain:
    """Computes record hashes, plain SHA-256 or HMAC-SHA256 when a key is given."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes | None) -> None:
        self._key = key or None

    @property
    def keyed(self) -> bool:
        return self._key is not None

    def digest(self, body: bytes | memoryview) -> str:
        if self._key is None:
            return hashlib.sha256(body).hexdigest()
        return hmac.new(self._key, body, hashlib.sha256).hexdigest()

    def seal(self, record: dict[str, Any]) -> tuple[bytes, str]:
        """The line to write for `record` (which must not hold `hash`) and its hash.

        The line is the canonical JSON with `hash` appended as its last key, so a verifier
        can hash the bytes as written instead of re-serializing each record.
        """
        body = canonical(record)
        digest = self.digest(body)
        return body[:-1] + _HASH_KEY + digest.encode() + b'"}\n', digest


def split_sealed(line: bytes) -> tuple[bytes, str] | None:
    """(the canonical body the hash covers, the stated hash) of a sealed line with its newline;
    None when the line does not end the way `Chain.seal` writes it."""
    if len(line) < _SEALED_TAIL + 2 or not line.endswith(b'"}\n'):
        return None
    cut = len(line) - _SEALED_TAIL
    if line[cut : cut + len(_HASH_KEY)] != _HASH_KEY:
        return None
    stated = line[cut + len(_HASH_KEY) : cut + len(_HASH_KEY) + 64]
    try:
        digest = stated.decode("ascii")
    except UnicodeDecodeError:
        return None
    return line[:cut] + b"}", digest


def key_from_env(environ: dict[str, str] | Any) -> bytes | None:
    """The HMAC key from the environment, or None for plain SHA-256."""
    value = environ.get(HMAC_KEY_ENV) or ""
    return value.encode() if value else None
