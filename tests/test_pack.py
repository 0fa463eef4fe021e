"""python -m resnet_jax.data.pack: one process per core, resumable, bad input in one line."""

import os
import sys

from conftest import error_line, run
import pytest

from resnet_jax.data import pack, records


def _files(root):
    return {os.path.relpath(os.path.join(d, f), root): os.stat(os.path.join(d, f)).st_mtime_ns
            for d, _, names in os.walk(root) for f in names}


def test_pack_cli_writes_shards_in_processes_and_a_rerun_skips_finished_ones(demo_root,
                                                                             tmp_path):
    out = tmp_path / "wds"
    command = [sys.executable, "-m", "resnet_jax.data.pack", "--src", demo_root, "--format",
               "webdataset", "--out", str(out), "--shards", "4", "--processes", "2"]
    result = run(command)
    assert result.returncode == 0, result.output
    assert result.stdout.splitlines() == [f"train: 33 images in webdataset under {out}",
                                          f"val: 15 images in webdataset under {out}"]
    assert sorted(os.listdir(out / "train")) == [f"shard-{i:05d}.tar" for i in range(4)]
    assert (out / "classes.txt").read_text().splitlines() == sorted(os.listdir(
        os.path.join(demo_root, "train")))
    written = _files(out)
    # A shard lost (an interrupted run leaves only .tmp files): a re-run writes it alone.
    os.unlink(out / "train" / "shard-00002.tar")
    result = run(command)
    assert result.returncode == 0, result.output
    assert "train: 3 of 4 shards already there" in result.stdout
    again = _files(out)
    assert again.keys() == written.keys()
    assert {k for k in written if written[k] != again[k]} == {
        "train/shard-00002.tar", "classes.txt"}
    split = records.open_split(str(out), "webdataset", "train", num_classes=3,
                               log=lambda _: None)
    assert len(split) == 33


@pytest.mark.parametrize("fmt", ["recordio", "tfrecord", "webdataset"])
def test_pack_of_a_bad_tree_stops_with_one_line(tmp_path, fmt):
    (tmp_path / "src" / "train").mkdir(parents=True)
    line = error_line(run([sys.executable, "-m", "resnet_jax.data.pack", "--src",
                           str(tmp_path / "src"), "--format", fmt, "--out",
                           str(tmp_path / "out")]))
    assert "has no class folders" in line
    assert not (tmp_path / "out").exists()


def test_recordio_parts_join_into_one_file_with_its_index(demo_root, tmp_path):
    pack.pack(demo_root, "recordio", str(tmp_path), shards=4, processes=1, log=lambda _: None)
    assert sorted(os.listdir(tmp_path)) == ["classes.txt", "train.idx", "train.rec", "val.idx",
                                            "val.rec"]
    with open(tmp_path / "train.idx") as f:
        keys = [int(line.split("\t")[0]) for line in f]
    assert keys == list(range(33))
