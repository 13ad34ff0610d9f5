#!/usr/bin/env python3
"""A hailan envelope decoder written from proto/WIRE.md alone (not from the Rust types).

Usage: decode_envelope.py [--key KID:HEX] FILE...
Prints one JSON object per file: the decoded envelope (bytes as hex), and for
reading batches each reading's canonical header, context element and, when
its key is given, the opened plaintext. Exits 1 with a one-line reason on an
invalid envelope.
"""
import hashlib
import json
import re
import sys

import cbor2
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

R = 21888242871839275222246405745257275088548364400416034343698204186575808495617
MAX_BYTES = 262144
ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
DATA_TYPE = re.compile(r"^[A-Z0-9_]{1,50}$")
# WIRE.md §6 "Storable": times a FHIR instant can write, seqs a bigint holds.
MIN_TIME_MS, MAX_TIME_MS = -62_135_596_800_000, 253_402_300_799_999
MAX_SEQ = 2**63 - 1


class Invalid(Exception):
    pass


def need(cond, why):
    if not cond:
        raise Invalid(why)


def s(text):
    b = text.encode("utf-8")
    return len(b).to_bytes(2, "big") + b


def reading_header(gw, dev, r):
    return (b"hailan/v1/reading\x00" + s(gw) + s(dev) + s(r["data_type"])
            + r["seq"].to_bytes(8, "big") + r["recorded_at_ms"].to_bytes(8, "big", signed=True))


def window_header(gw, dev, readings):
    first = readings[0]
    out = (b"hailan/v1/window\x00" + s(gw) + s(dev) + s(first["data_type"])
           + first["seq"].to_bytes(8, "big") + len(readings).to_bytes(2, "big")
           + first["recorded_at_ms"].to_bytes(8, "big", signed=True))
    for r in readings:
        out += (r["recorded_at_ms"] - first["recorded_at_ms"]).to_bytes(4, "big")
    return out


def context(header):
    return int.from_bytes(hashlib.sha256(header).digest(), "big") % R


def hexify(v):
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, dict):
        return {k: hexify(x) for k, x in v.items()}
    if isinstance(v, list):
        return [hexify(x) for x in v]
    return v


def check_id(what, v):
    need(isinstance(v, str) and ID.match(v), f"{what} is not an identifier")


def check_text(what, v, max_chars):
    """Optional text: at most max_chars characters (not bytes), no NUL."""
    if v is None:
        return
    need(isinstance(v, str) and "\0" not in v and len(v) <= max_chars, f"{what} does not fit its column")


def check_time(what, v):
    need(isinstance(v, int) and MIN_TIME_MS <= v <= MAX_TIME_MS, f"{what} is out of range")


def decode(data, keys):
    need(len(data) <= MAX_BYTES, "larger than 262144 bytes")
    env = cbor2.loads(data)
    need(isinstance(env, dict), "not a map")
    need(env.get("v") == 1, f"unsupported version {env.get('v')}")
    check_id("gateway_id", env.get("gateway_id"))
    check_time("sent_at_ms", env.get("sent_at_ms"))
    body = env.get("body")
    need(isinstance(body, dict) and len(body) == 1, "body must have exactly one key")
    (kind, msg), = body.items()
    out = {"kind": kind, "envelope": hexify(env)}
    if kind == "registration":
        check_id("device_id", msg["device_id"])
        need(len(msg["device_commitment"]) == 32, "device_commitment is not 32 bytes")
        need(1 <= len(msg["data_types"]) <= 8, "data_types")
        need(all(DATA_TYPE.match(t) for t in msg["data_types"] + [msg["device_type"]]), "data type names")
        check_text("bluetooth_address", msg["bluetooth_address"], 50)
        for key, width in [("name", 100), ("manufacturer", 100), ("model", 100), ("serial", 100),
                           ("firmware_version", 50), ("hardware_version", 50)]:
            check_text(key, msg.get(key), width)
        check_text("patient", msg.get("patient"), 255)
        need(msg.get("patient") != "", "patient is empty")
        if msg.get("user_slot_of") is not None:
            check_id("user_slot_of", msg["user_slot_of"])
        check_time("paired_at_ms", msg["paired_at_ms"])
    elif kind == "device_state":
        check_id("device_id", msg["device_id"])
        need(msg.get("battery_level") is None or 0 <= msg["battery_level"] <= 100, "battery_level")
        check_text("firmware_version", msg.get("firmware_version"), 50)
        check_time("observed_at_ms", msg["observed_at_ms"])
        need(msg.get("needs_repair") in (None, True, False), "needs_repair")
    elif kind == "readings":
        gw, dev = env["gateway_id"], msg["device_id"]
        check_id("device_id", dev)
        need(1 <= len(msg["groups"]) <= 256, "groups")
        groups = []
        for g in msg["groups"]:
            rs = g["readings"]
            need((g.get("proof") is None) != (g.get("no_proof_reason") is None), "proof xor reason")
            need(g.get("proof") is None or len(g["proof"]) == 128, "proof length")
            check_text("no_proof_reason", g.get("no_proof_reason"), 256)
            need(len(g["key_id"]) == 32 and len(g["commitment"]) == 32, "key_id/commitment length")
            if g["kind"] == "reading":
                need(len(rs) == 1, "a reading group holds one reading")
            else:
                need(g["kind"] == "window" and 1 <= len(rs) <= 64, "window size")
            need(rs[0]["seq"] + len(rs) - 1 <= MAX_SEQ, "seq beyond bigint")
            for i, r in enumerate(rs):
                need(DATA_TYPE.match(r["data_type"]), "data_type")
                check_time("recorded_at_ms", r["recorded_at_ms"])
                need(r["data_type"] == rs[0]["data_type"], "window mixes data types")
                need(r["seq"] == rs[0]["seq"] + i, "window seqs not consecutive")
                need(0 <= r["recorded_at_ms"] - rs[0]["recorded_at_ms"] < 2**32, "window times")
                need(len(r["sealed"]["nonce"]) == 12, "nonce length")
                need(16 <= len(r["sealed"]["ciphertext"]) <= 4096, "ciphertext length")
            decoded = []
            for r in rs:
                h = reading_header(gw, dev, r)
                item = {"seq": r["seq"], "header": h.hex(), "context": str(context(h))}
                kid = r["sealed"]["kid"]
                if kid in keys:
                    aad = h + s(kid)
                    plain = AESGCM(keys[kid]).decrypt(r["sealed"]["nonce"], r["sealed"]["ciphertext"], aad)
                    item["opened"] = hexify(cbor2.loads(plain))
                decoded.append(item)
            group = {"kind": g["kind"], "readings": decoded}
            if g["kind"] == "window":
                wh = window_header(gw, dev, rs)
                group["window_header"] = wh.hex()
                group["window_context"] = str(context(wh))
            groups.append(group)
        out["groups"] = groups
    else:
        raise Invalid(f"unknown body {kind!r}")
    return out


def main(argv):
    keys = {}
    files = []
    it = iter(argv)
    for a in it:
        if a == "--key":
            kid, hexkey = next(it).split(":", 1)
            keys[kid] = bytes.fromhex(hexkey)
        else:
            files.append(a)
    results = []
    for f in files:
        with open(f, "rb") as fh:
            data = fh.read()
        try:
            results.append(decode(data, keys))
        except (Invalid, KeyError, TypeError, ValueError, cbor2.CBORDecodeError) as e:
            print(f"{f}: invalid envelope: {e}", file=sys.stderr)
            return 1
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
