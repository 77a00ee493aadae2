"""Read wandb's offline files (`offline-run-*/run-<id>.wandb`) without a network, for the tests.

wandb 0.31 has no Python reader of its own (wandb-core writes the file): it is a LevelDB-style log
(a 7-byte header ":W&B", magic 0xBEE1, version 0; 32 KiB blocks of records with a 7-byte header:
CRC, length, type FULL/FIRST/MIDDLE/LAST) of serialized `wandb_internal_pb2.Record`s.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK, HEADER = 32768, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list:
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B" and struct.unpack("<H", data[4:6])[0] == 0xBEE1, f"{path}: not a wandb log"
    out, pos, parts = [], HEADER, b""
    while pos + HEADER <= len(data):
        room = BLOCK - pos % BLOCK
        if room < HEADER:  # a block's tail too short for a header is padding
            pos += room
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if kind == 0 and length == 0:
            pos += room
            continue
        payload = data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        parts = payload if kind in (FULL, FIRST) else parts + payload
        if kind in (FULL, LAST):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(parts)
            out.append(rec)
    return out


class OfflineRun:
    """What one offline run folder holds: its run record, history rows, summary and files."""

    def __init__(self, folder: Path, wait_s: float = 60.0, killed: bool = False):
        self.folder = Path(folder)
        (log,) = self.folder.glob("run-*.wandb")
        # wandb-core writes the file in its own process and may still be flushing it after finish()
        # returns: read it once its exit record is there
        deadline = time.monotonic() + wait_s
        while True:
            try:
                found = records(log)
            except Exception:  # a record half written
                found = []
            if killed or any(r.WhichOneof("record_type") == "exit" for r in found):  # killed: no exit record
                break
            assert time.monotonic() < deadline, f"{log} has no exit record after {wait_s} s"
            time.sleep(0.2)
        self.records = found
        self.run = next(r.run for r in self.records if r.WhichOneof("record_type") == "run")
        self.history = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
                        for r in self.records if r.WhichOneof("record_type") == "history"]
        self.summary = {}
        for r in self.records:
            if r.WhichOneof("record_type") == "summary":
                self.summary |= {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.summary.update}

    @property
    def tags(self) -> list[str]:
        return list(self.run.tags)

    def steps(self, key: str = "step") -> list:
        return [row[key] for row in self.history if key in row]

    def file(self, relative: str) -> Path:
        return self.folder / "files" / relative
