#!/usr/bin/env python3
"""An independent Token04 decoder (Python `cryptography`), written from the spec alone.

Used by the CLI tests to check that `huddle token new` writes standard tokens:
    token04_decode.py SECRET TOKEN   -> prints the decrypted JSON, exit 0; or an error, exit 1
"""
import base64
import json
import struct
import sys

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM


def decode(secret: str, token: str) -> dict:
    if not token.startswith("04"):
        raise ValueError("not a Token04 token")
    raw = base64.b64decode(token[2:], validate=True)
    (expire,) = struct.unpack(">q", raw[0:8])
    (iv_len,) = struct.unpack(">H", raw[8:10])
    iv = raw[10 : 10 + iv_len]
    off = 10 + iv_len
    (n,) = struct.unpack(">H", raw[off : off + 2])
    content = raw[off + 2 : off + 2 + n]
    rest = raw[off + 2 + n :]
    key = secret.encode()
    if rest == b"\x01":
        plain = AESGCM(key).decrypt(iv, content, None)
    elif rest == b"":
        dec = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
        padded = dec.update(content) + dec.finalize()
        unpad = padding.PKCS7(128).unpadder()
        plain = unpad.update(padded) + unpad.finalize()
    else:
        raise ValueError("bad trailer")
    claims = json.loads(plain.decode("utf-8"))
    if claims["expire"] != expire:
        raise ValueError("header expire differs from the JSON expire")
    return claims


if __name__ == "__main__":
    try:
        print(json.dumps(decode(sys.argv[1], sys.argv[2]), ensure_ascii=False))
    except Exception as e:  # noqa: BLE001 - report any failure as an exit code
        print(f"decode failed: {e}", file=sys.stderr)
        sys.exit(1)
