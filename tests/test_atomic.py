"""Files and folders are written whole or not at all."""

import pytest

from lite_controlnet.atomic import DamagedFolderError, atomic_write, publish_folder, read_manifest, verify_files, write_atomic


def test_a_file_is_replaced_whole_and_an_error_leaves_the_old_one(tmp_path):
    path = tmp_path / "state.json"
    write_atomic(path, "old")
    with pytest.raises(RuntimeError):
        with atomic_write(path) as partial:
            partial.write_text("half of the n")
            raise RuntimeError("killed mid-write")
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]
    (tmp_path / "state.json.partial").write_text("left by a killed writer")
    write_atomic(path, b"new", fsync=True)
    assert path.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_a_folder_appears_only_once_complete(tmp_path):
    (tmp_path / "copy.partial").mkdir()  # left by a killed copy
    (tmp_path / "copy.partial" / "stale.txt").write_text("stale")
    with atomic_write(tmp_path / "copy") as partial:
        partial.mkdir()
        (partial / "a.txt").write_text("a")
        assert not (tmp_path / "copy").exists()
    assert sorted(p.name for p in (tmp_path / "copy").iterdir()) == ["a.txt"]
    assert not (tmp_path / "copy.partial").exists()


def test_a_published_folder_is_whole_and_checked_against_its_manifest(tmp_path):
    def write(folder):
        (folder / "a.txt").write_text("new")
        (folder / "sub").mkdir()
        (folder / "sub" / "b.bin").write_bytes(b"\0" * 10)

    dest = publish_folder(tmp_path / "module", write, info={"step": 3})
    manifest = read_manifest(dest)
    assert manifest["step"] == 3 and sorted(manifest["files"]) == ["a.txt", "sub/b.bin"]
    verify_files(dest, manifest["files"])
    (dest / "sub" / "b.bin").write_bytes(b"\1" * 10)  # same size, other bytes
    with pytest.raises(DamagedFolderError, match="sub/b.bin does not match its manifest"):
        verify_files(dest, manifest["files"])

    def killed(folder):
        (folder / "a.txt").write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        publish_folder(dest, killed)
    assert (dest / "a.txt").read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["module"]
    (dest / "MANIFEST.json").write_text("[]")
    with pytest.raises(DamagedFolderError, match="MANIFEST.json is malformed"):
        read_manifest(dest)
