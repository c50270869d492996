"""The one atomic writer: permissions, nothing half-written, clear errors."""

import os
import stat

import pytest

from calibrate_cli.utils.atomic import write_atomic
from calibrate_cli.errors import UsageError


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_text_bytes_and_writer(tmp_path):
    write_atomic(tmp_path / "a.txt", "héllo\n")
    write_atomic(tmp_path / "b.bin", b"\x00\x01")
    write_atomic(tmp_path / "sub" / "c.bin", lambda fh: fh.write(b"xyz"))
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "héllo\n"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "sub" / "c.bin").read_bytes() == b"xyz"


def test_mode_follows_umask_not_mkstemp(tmp_path):
    old = os.umask(0o022)
    try:
        write_atomic(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "a.txt") == 0o644


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "keep.txt"
    path.write_text("old")

    def boom(fh):
        fh.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomic(path, boom)
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["keep.txt"]


def test_unwritable_destination_is_a_usage_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UsageError, match="cannot write"):
        write_atomic(blocker / "x.txt", "x")  # a folder that is a file
    with pytest.raises(UsageError, match="does not exist"):
        write_atomic(tmp_path / "missing" / "x.txt", "x", make_dirs=False)
