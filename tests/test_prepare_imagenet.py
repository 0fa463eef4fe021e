"""ImageNet archives to the train/<wnid>, val/<wnid> layout, on tiny generated archives."""

import csv
import io
import os
import tarfile

import numpy as np
from PIL import Image
import pytest
import scipy.io

from resnet_jax.data import prepare_imagenet
from resnet_jax.data.folders import scan_split

WNIDS = ("n01440764", "n01443537")
VAL_CLASSES = (1, 2, 1)  # ILSVRC2012 ids of val images 1..3: id 1 = WNIDS[0], 2 = WNIDS[1]


def _jpeg(value):
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (value, 0, 0)).save(buffer, "JPEG")
    return buffer.getvalue()


def _add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def archives(tmp_path):
    train = tmp_path / "ILSVRC2012_img_train.tar"
    with tarfile.open(train, "w") as outer:
        for k, wnid in enumerate(WNIDS):
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w") as tar:
                for i in range(2):
                    _add(tar, f"{wnid}_{i}.JPEG", _jpeg(10 * k + i))
            _add(outer, f"{wnid}.tar", inner.getvalue())
    val = tmp_path / "ILSVRC2012_img_val.tar"
    with tarfile.open(val, "w") as tar:
        for i in range(1, len(VAL_CLASSES) + 1):
            _add(tar, f"ILSVRC2012_val_{i:08d}.JPEG", _jpeg(i))
    # The devkit's meta.mat: a struct array of synsets; id 3 is an inner node, not a class.
    fields = ("ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "wordnet_height",
              "num_train_images")
    synsets = np.array([(1, WNIDS[0], "tench", "", 0, 0, 2), (2, WNIDS[1], "goldfish", "", 0, 0, 2),
                        (3, "n00001740", "entity", "", 2, 5, 0)],
                       dtype=[(f, object) for f in fields])
    mat = io.BytesIO()
    scipy.io.savemat(mat, {"synsets": synsets})
    devkit = tmp_path / "ILSVRC2012_devkit_t12.tar.gz"
    with tarfile.open(devkit, "w:gz") as tar:
        _add(tar, "ILSVRC2012_devkit_t12/data/meta.mat", mat.getvalue())
        _add(tar, "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt",
             "".join(f"{c}\n" for c in VAL_CLASSES).encode())
    kaggle = tmp_path / "LOC_val_solution.csv"
    with open(kaggle, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["ImageId", "PredictionString"])
        for i, c in enumerate(VAL_CLASSES, 1):
            writer.writerow([f"ILSVRC2012_val_{i:08d}", f"{WNIDS[c - 1]} 1 2 3 4"])
    return {"train": str(train), "val": str(val), "devkit": str(devkit), "csv": str(kaggle)}


@pytest.mark.parametrize("labels", ["devkit", "csv"])
def test_archives_become_the_training_layout(tmp_path, archives, labels):
    out = str(tmp_path / "imagenet")
    flag = "--devkit" if labels == "devkit" else "--val-csv"
    assert prepare_imagenet.main(["--out", out, "--train-tar", archives["train"],
                                  "--val-tar", archives["val"], flag, archives[labels]]) == 0
    train, val = scan_split(out, "train"), scan_split(out, "val")
    assert train.class_names == val.class_names == list(WNIDS)
    assert len(train) == 4 and list(train.labels) == [0, 0, 1, 1]
    assert [os.path.basename(f) for f in val.files] == [
        "ILSVRC2012_val_00000001.JPEG", "ILSVRC2012_val_00000003.JPEG",
        "ILSVRC2012_val_00000002.JPEG"]
    assert list(val.labels) == [0, 0, 1]
    assert Image.open(val.files[0]).size == (8, 8)
    # A re-run skips finished classes and rewrites nothing it should not.
    assert prepare_imagenet.prepare_train(archives["train"], out) == 0


def test_val_without_labels_or_with_foreign_labels_is_refused(tmp_path, archives, capsys):
    out = str(tmp_path / "imagenet")
    assert prepare_imagenet.main(["--out", out, "--val-tar", archives["val"]]) == 2
    assert "--val-tar needs the validation labels: add --devkit" in capsys.readouterr().err
    with pytest.raises(prepare_imagenet.ConfigError, match="has no label"):
        prepare_imagenet.prepare_val(archives["val"], {}, out)
    assert prepare_imagenet.main(["--out", out, "--train-tar", str(tmp_path / "none.tar")]) == 2
    assert "error: --train-tar '" in (err := capsys.readouterr().err)
    assert "none.tar' does not exist" in err
