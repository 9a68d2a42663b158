"""The peer install step works: a socat pseudo-terminal pair carries bytes both ways
(the serial transport tests build on it)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from conftest import peer


def test_socat_pty_pair_passes_bytes(tmp_path: Path):
    socat = peer("socat")
    a, b = tmp_path / "ttyA", tmp_path / "ttyB"
    proc = subprocess.Popen([socat, "-d", "-d", f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"],
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not (a.exists() and b.exists()) and time.monotonic() < deadline:
            time.sleep(0.02)
        fa = os.open(a, os.O_RDWR | os.O_NOCTTY)
        fb = os.open(b, os.O_RDWR | os.O_NOCTTY)
        try:
            os.write(fa, b"DM\x01\x50")
            got = b""
            while len(got) < 4 and time.monotonic() < deadline:
                got += os.read(fb, 16)
            assert got == b"DM\x01\x50"
            os.write(fb, b"\x7f")
            assert os.read(fa, 1) == b"\x7f"
        finally:
            os.close(fa)
            os.close(fb)
    finally:
        proc.terminate()
        proc.wait(5)
