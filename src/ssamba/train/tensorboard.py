"""A minimal TensorBoard event-file writer for scalars (no tensorflow/tensorboard dependency).

An event file is a TFRecord stream of ``Event`` protocol buffers: each record is
``len (u64) | masked_crc32c(len) (u32) | data | masked_crc32c(data) (u32)``.  We encode the three messages we
need by hand: Event{wall_time=1 (double), step=2 (int64), file_version=3 (string), summary=5},
Summary{value=1 (repeated)}, Summary.Value{tag=1 (string), simple_value=2 (float)}.
"""
from __future__ import annotations

import logging
import os
import socket
import struct
import time
from pathlib import Path

from ssamba.atomic import atomic_write

logger = logging.getLogger(__name__)


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, wire: int) -> bytes:
    return _varint((number << 3) | wire)


def _bytes_field(number: int, payload: bytes) -> bytes:
    return _field(number, 2) + _varint(len(payload)) + payload


def encode_event(wall_time: float, step: int, *, file_version: str | None = None,
                 scalars: dict[str, float] | None = None) -> bytes:
    msg = _field(1, 1) + struct.pack("<d", wall_time) + _field(2, 0) + _varint(step)
    if file_version is not None:
        msg += _bytes_field(3, file_version.encode())
    if scalars:
        values = b"".join(
            _bytes_field(1, _bytes_field(1, tag.encode()) + _field(2, 5) + struct.pack("<f", float(v)))
            for tag, v in scalars.items())
        msg += _bytes_field(5, values)
    return msg


def frame_record(data: bytes) -> bytes:
    header = struct.pack("<Q", len(data))
    return header + struct.pack("<I", masked_crc(header)) + data + struct.pack("<I", masked_crc(data))


def read_records(path: str | Path) -> list[bytes]:
    """The ``data`` of every complete record of a TFRecord file; a torn record at the end (a killed write) is
    dropped."""
    raw, pos, out = Path(path).read_bytes(), 0, []
    while pos + 12 <= len(raw):
        (length,) = struct.unpack_from("<Q", raw, pos)
        end = pos + 12 + length + 4
        if end > len(raw):
            break
        out.append(raw[pos + 12:pos + 12 + length])
        pos = end
    return out


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not byte & 0x80:
            return value, pos


def event_step(data: bytes) -> int:
    """The ``step`` field of an encoded ``Event`` (0 when absent, as protobuf reads it)."""
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(data, pos)
            if number == 2:
                return value
        elif wire == 1:
            pos += 8
        elif wire == 2:
            length, pos = _read_varint(data, pos)
            pos += length
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
    return 0


def truncate_events(log_dir: str | Path, step: int) -> None:
    """Drop the events after ``step`` from every event file in ``log_dir`` (rewritten through a temporary file and
    an atomic rename), so a run resumed from a checkpoint at ``step`` does not show the lost steps twice."""
    for path in sorted(Path(log_dir).glob("events.out.tfevents.*")):
        records = read_records(path)
        kept = [r for r in records if event_step(r) <= step]
        if len(kept) == len(records) and path.stat().st_size == sum(len(r) + 16 for r in records):
            continue
        data = b"".join(frame_record(r) for r in kept)
        atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
        logger.debug("%s: dropped %d events after step %d", path, len(records) - len(kept), step)


class EventWriter:
    """Appends scalar summaries to ``events.out.tfevents.<time>.<host>`` in ``log_dir``."""

    def __init__(self, log_dir: str | Path) -> None:
        log_dir = Path(log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
        self.path = log_dir / name
        self._file = open(self.path, "ab")
        self._file.write(frame_record(encode_event(time.time(), 0, file_version="brain.Event:2")))
        self._file.flush()

    def add_scalars(self, step: int, scalars: dict[str, float]) -> None:
        self._file.write(frame_record(encode_event(time.time(), step, scalars=scalars)))
        self._file.flush()

    def close(self) -> None:
        self._file.close()
