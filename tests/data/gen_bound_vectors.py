#!/usr/bin/env python3
"""Makes tests/data/bound-ciphertexts.json: vectors of the bound (v2) ciphertext format of
docs/secrets-management.md ("Ciphertext formats and key hashes"), written with Python
`cryptography`'s AESGCM, an implementation independent of the host's (RustCrypto aes-gcm).

Run from the repository root: `python3 tests/data/gen_bound_vectors.py > tests/data/bound-ciphertexts.json`
(needs `pip install cryptography`). The nonces are random, so every run gives new ciphertexts;
the committed file is one run. tests/all/vectors.rs checks every case against the host.

Format: stored = "v2:" + b64(nonce) + ":" + b64(ciphertext || tag), standard base64 with
padding; key = SHA-256(password); key hash = hex(SHA-256(key)); associated data =
b"attune-wasm secret v2" + b"\\0" + field(owner_type) + field(owner) + field(name) +
field(key_hash), field(x) = 4-byte big-endian length of x's UTF-8 bytes, then those bytes.
"""
import base64
import hashlib
import json
import os
import struct

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

PASSWORD = "vector-password-2291d8cdc310411e7ec27378"
OTHER_PASSWORD = "another-vector-password-f1e2d3c4b5a69788"


def key_of(password):
    return hashlib.sha256(password.encode()).digest()


def key_hash(key):
    return hashlib.sha256(key).hexdigest()


def aad(owner_type, owner, name, khash):
    out = b"attune-wasm secret v2\x00"
    for field in (owner_type, owner, name, khash):
        raw = field.encode()
        out += struct.pack(">I", len(raw)) + raw
    return out


def seal(password, row, plaintext, nonce=None):
    key = key_of(password)
    nonce = nonce or os.urandom(12)
    sealed = AESGCM(key).encrypt(nonce, plaintext.encode(), aad(*row, key_hash(key)))
    return "v2:" + base64.b64encode(nonce).decode() + ":" + base64.b64encode(sealed).decode()


def row(owner_type, owner, name):
    return {"owner_type": owner_type, "owner": owner, "name": name}


cases = []


def case(id, stored, at, expect, plaintext=None, password=PASSWORD, khash="ours", note=None):
    c = {
        "id": id,
        "format": "bound",
        "password": password,
        "row": row(*at),
        "stored": stored,
        "encryption_key_hash": key_hash(key_of(PASSWORD)) if khash == "ours" else khash,
        "expect": expect,
    }
    if plaintext is not None:
        c["plaintext"] = plaintext
    if note:
        c["note"] = note
    cases.append(c)


SYSTEM = ("system", "", "api_key")
PACK = ("pack", "mypack", "api_key")
ACTION = ("action", "mypack.deploy", "api_key")

values = ["sk_live_c3c400b27244", "", "a=b=c", "p\u00e4ssw\u00f6rd\u20ac", "line one\nline two\n",
          "x" * 1000, "{\"json\": [1, 2]}", "v2:not-a-nested-ciphertext"]
for i, value in enumerate(values):
    for j, at in enumerate((SYSTEM, PACK, ACTION)):
        case(f"bound-{i}-{at[0]}", seal(PASSWORD, at, value), at, "ok", value)

# Copied into another row: the associated data differs, so authentication fails.
made = seal(PASSWORD, PACK, "sk_live_pack_value")
for other, what in ((SYSTEM, "the system row of the same name"), (ACTION, "the action row"),
                    (("pack", "otherpack", "api_key"), "another pack's row"),
                    (("pack", "mypack", "db_password"), "another name of the same pack"),
                    (("pack", "mypac", "kapi_key"), "bytes moved between owner and name")):
    case(f"copied-to-{len(cases)}", made, other, "decrypt-failed",
         note=f"made for pack mypack api_key, read from {what}")
case("copied-from-action", seal(PASSWORD, ACTION, "v"), PACK, "decrypt-failed")

# Tampered ciphertext and tag.
good = seal(PASSWORD, SYSTEM, "tamper-me")
prefix, n, c = good.split(":")
raw = bytearray(base64.b64decode(c))
raw[0] ^= 1
case("tampered-body", f"{prefix}:{n}:{base64.b64encode(bytes(raw)).decode()}", SYSTEM, "decrypt-failed")
raw = bytearray(base64.b64decode(c))
raw[-1] ^= 0x80
case("tampered-tag", f"{prefix}:{n}:{base64.b64encode(bytes(raw)).decode()}", SYSTEM, "decrypt-failed")

# Another key: named by the row's key hash (mismatch), or no key hash (authentication fails).
other_key_hash = key_hash(key_of(OTHER_PASSWORD))
case("other-key-named", seal(OTHER_PASSWORD, SYSTEM, "v"), SYSTEM, "key-mismatch", khash=other_key_hash)
case("other-key-unnamed", seal(OTHER_PASSWORD, SYSTEM, "v"), SYSTEM, "decrypt-failed", khash=None)
# Sealed under our key but with another key's hash in the associated data.
key = key_of(PASSWORD)
nonce = os.urandom(12)
sealed = AESGCM(key).encrypt(nonce, b"v", aad(*SYSTEM, other_key_hash))
case("aad-names-another-key", "v2:" + base64.b64encode(nonce).decode() + ":" + base64.b64encode(sealed).decode(),
     SYSTEM, "decrypt-failed")
# Not UTF-8.
nonce = os.urandom(12)
sealed = AESGCM(key).encrypt(nonce, b"\xff\xfe", aad(*SYSTEM, key_hash(key)))
case("not-utf8", "v2:" + base64.b64encode(nonce).decode() + ":" + base64.b64encode(sealed).decode(),
     SYSTEM, "invalid-utf8")
# Malformed.
for i, bad in enumerate(["v2:", "v2::", "v2:AAAA:AAAA", "v2:" + base64.b64encode(os.urandom(12)).decode(),
                         "v2:" + base64.b64encode(os.urandom(12)).decode() + ":" + base64.b64encode(os.urandom(5)).decode(),
                         "v2:" + base64.b64encode(os.urandom(12)).decode() + ":%%%%"]):
    case(f"malformed-{i}", bad, SYSTEM, "invalid-format")

floor = seal(PASSWORD, ("store", "", "ciphertext-floor"), "v2")
json.dump({
    "about": "Bound (v2) ciphertext vectors made with Python cryptography's AESGCM by tests/data/gen_bound_vectors.py",
    "cases": cases,
    "floor": {"password": PASSWORD, "stored": floor,
              "note": "the store's ciphertext floor record: 'v2' bound to owner type 'store', owner '', name 'ciphertext-floor'"},
}, __import__("sys").stdout, indent=1, ensure_ascii=False)
print()
