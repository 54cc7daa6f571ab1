"""Reading untrusted files: only regular files, never through a link, never blocking on a FIFO, exact sizes,
bounded JSON; every refusal one line naming the file."""

from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fewbits._util.untrusted import MAX_JSON_DEPTH, parse_json, private_copy, read_json_member, read_member
from fewbits.errors import ArtifactError


def refused(directory, name, fragment, **kwargs):
    with pytest.raises(ArtifactError) as info:
        read_member(directory, name, **kwargs)
    message = str(info.value)
    assert message.startswith(str(directory / name)) and fragment in message and "\n" not in message, message


def test_a_regular_file_is_read_whole(tmp_path):
    (tmp_path / "f").write_bytes(b"x" * 1000)
    assert read_member(tmp_path, "f", size=1000) == b"x" * 1000
    assert read_member(tmp_path, "f", max_bytes=1000) == b"x" * 1000


def test_a_file_is_read_into_one_writable_buffer_across_chunks(tmp_path, monkeypatch):
    content = bytes(range(256)) * 41
    (tmp_path / "f").write_bytes(content)
    calls = []
    real_readv = os.readv

    def small_reads(fd, buffers):  # at most 1000 bytes a call: the loop fills the one buffer in pieces
        calls.append(len(buffers[0]))
        return real_readv(fd, [buffers[0][:1000]])

    monkeypatch.setattr(os, "readv", small_reads)
    data = read_member(tmp_path, "f", size=len(content))
    assert isinstance(data, bytearray) and data == content and len(calls) == 11


def test_links_are_refused_wherever_they_point(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("secret")
    folder = tmp_path / "art"
    folder.mkdir()
    (folder / "real").write_text("secret")
    (folder / "out").symlink_to(outside / "secret")
    (folder / "in").symlink_to(folder / "real")
    (folder / "dangling").symlink_to(tmp_path / "nowhere")
    for name in ("out", "in", "dangling"):
        refused(folder, name, "a symbolic link, not a regular file")


def test_special_files_are_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "fifo")  # opening it for reading without O_NONBLOCK would wait for a writer forever
    done = threading.Event()

    def read_fifo():
        refused(tmp_path, "fifo", "a FIFO, not a regular file")
        done.set()

    worker = threading.Thread(target=read_fifo, daemon=True)
    worker.start()
    worker.join(timeout=30)
    assert done.is_set()
    (tmp_path / "folder").mkdir()
    refused(tmp_path, "folder", "a folder, not a regular file")
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(tmp_path / "sock"))
        refused(tmp_path, "sock", "a socket, not a regular file")
    finally:
        sock.close()


def test_devices_are_refused_before_being_opened():
    refused(Path("/dev"), "zero", "a character device, not a regular file")


def test_sizes_and_names(tmp_path):
    (tmp_path / "f").write_bytes(b"abc")
    refused(tmp_path, "f", "3 bytes but the manifest says 4", size=4)
    refused(tmp_path, "f", "more than the 2 such a file may hold", max_bytes=2)
    refused(tmp_path, "missing", "missing")
    for name in ("../f", "a/b", "", ".."):
        with pytest.raises(ArtifactError, match="not a plain file name"):
            read_member(tmp_path, name)


@pytest.mark.parametrize("text, fragment", [
    ("[" * 100_000 + "]" * 100_000, "nested deeper"),
    ("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1), "nested deeper"),
    ('{"a":' * 40 + "1" + "}" * 40, "nested deeper"),
    ("{oops", "not valid JSON"),
    ("[1, 2]", "a JSON list, not a JSON dict"),
])
def test_bad_json_is_one_line(tmp_path, text, fragment):
    (tmp_path / "m.json").write_text(text)
    with pytest.raises(ArtifactError) as info:
        read_json_member(tmp_path, "m.json")
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_oversized_json_is_refused_before_it_is_read(tmp_path):
    (tmp_path / "m.json").write_bytes(b" " * 5000 + b"{}")
    with pytest.raises(ArtifactError, match="more than the 4096"):
        read_json_member(tmp_path, "m.json", max_bytes=4096)


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
                    max_leaves=30),
       st.binary(max_size=8), st.integers(0, 200))
def test_json_parses_or_is_refused_in_one_line(tmp_path_factory, value, noise, at):
    """Valid documents (within the depth bound) come back equal; any damage gives one ArtifactError line."""
    text = json.dumps({"v": value}).encode()
    path = tmp_path_factory.mktemp("j") / "m.json"
    damaged = text[:at] + noise + text[at:]
    try:
        parsed = parse_json(damaged, path)
    except ArtifactError as exc:
        assert "\n" not in str(exc) and str(path) in str(exc)
    else:
        assert isinstance(parsed, dict)
        if damaged == text:
            assert parsed == {"v": value}


def test_private_copy_holds_exactly_the_checked_bytes(tmp_path):
    with private_copy({"a.json": b"{}", "vocab.txt": b"x\n"}) as folder:
        assert sorted(os.listdir(folder)) == ["a.json", "vocab.txt"] and (folder / "vocab.txt").read_bytes() == b"x\n"
    assert not folder.exists()
