"""Read the top-level fields of a serialized TenSEAL context without loading it.

TenSEAL serializes a context as protobuf (``TenSEALContextProto``): 1 = SEAL encryption parameters,
2 = public part (1 public key, 2 flags, 3 scale, 4 relin keys, 5 Galois keys), 3 = private part
(1 secret key), 4 = encryption type. Reading these fields lets us refuse a secret-bearing context
*before* handing its bytes to the library, and compute a key id over exactly the public key material.
"""

from __future__ import annotations

from dataclasses import dataclass

from crypto.errors import MalformedData


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise MalformedData("truncated or oversized varint in serialized context")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes) -> dict[int, bytes | int]:
    """Last-wins map field number -> value (bytes for length-delimited, int otherwise)."""
    out: dict[int, bytes | int] = {}
    pos = 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            if pos + 8 > len(buf):
                raise MalformedData("truncated fixed64 field in serialized context")
            value, pos = int.from_bytes(buf[pos:pos + 8], "little"), pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > len(buf):
                raise MalformedData("truncated length-delimited field in serialized context")
            value, pos = buf[pos:pos + length], pos + length
        elif wire == 5:
            if pos + 4 > len(buf):
                raise MalformedData("truncated fixed32 field in serialized context")
            value, pos = int.from_bytes(buf[pos:pos + 4], "little"), pos + 4
        else:
            raise MalformedData(f"unsupported protobuf wire type {wire} in serialized context")
        out[number] = value
    return out


def _as_bytes(value: bytes | int | None, what: str) -> bytes:
    if value is None:
        return b""
    if not isinstance(value, bytes):
        raise MalformedData(f"serialized context field {what} has the wrong wire type")
    return value


@dataclass(frozen=True)
class ContextFields:
    encryption_parameters: bytes
    public_key: bytes
    relin_keys: bytes
    galois_keys: bytes
    secret_key: bytes


def parse_context(data: bytes) -> ContextFields:
    top = _fields(data)
    public = _fields(_as_bytes(top.get(2), "public_context"))
    private = _fields(_as_bytes(top.get(3), "private_context"))
    return ContextFields(
        encryption_parameters=_as_bytes(top.get(1), "encryption_parameters"),
        public_key=_as_bytes(public.get(1), "public_key"),
        relin_keys=_as_bytes(public.get(4), "relin_keys"),
        galois_keys=_as_bytes(public.get(5), "galois_keys"),
        secret_key=_as_bytes(private.get(1), "secret_key"),
    )
