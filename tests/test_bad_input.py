"""Bad input: one line `error: ...` naming the input and the fix, a non-zero exit, nothing lost.

Most cases call the functions that `python -m resnet_jax.main` calls (config
checks, folder scanning, `open_data`) and check the ConfigError's text, which
`main` prints as `error: <text>` with exit code 2. A few representative cases
go through what `main` runs (errors.exit_code over the training or the eval)
on a workdir that the command itself trained, which must stay as it was
(test_end_to_end checks on the command that such a line is all a user sees).
Odd but valid images (CMYK, grayscale, a PNG named .JPEG, bytes after a JPEG's
end) must simply work: the command trains and evaluates on them.
"""

import io
import os
import re

from conftest import run_main, tiny_config
import ml_collections
import numpy as np
from PIL import Image
import pytest

from resnet_jax import checkpoint, parallel
from resnet_jax import config as config_lib
from resnet_jax.data import dali, folders
from resnet_jax.data.demo import make_demo_dataset
from resnet_jax.data.source import open_data
from resnet_jax.errors import ConfigError, exit_code

# --- image files -----------------------------------------------------------------------------


def _encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _picture(size=(40, 32), seed=0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), np.uint8)
    return Image.fromarray(pixels)


def _sound_files() -> dict:
    """Files that DALI decodes, whatever their extension says."""
    picture = _picture()
    jpeg = _encoded(picture, "JPEG")
    png = _encoded(picture, "PNG")
    return {
        "rgb.JPEG": jpeg,
        "cmyk.JPEG": _encoded(picture.convert("CMYK"), "JPEG"),
        "gray.JPEG": _encoded(picture.convert("L"), "JPEG"),
        "progressive.JPEG": _encoded(picture, "JPEG", progressive=True),
        "bytes_after_end.JPEG": jpeg + b"\x00" * 64,  # some encoders pad after FFD9
        "png_named.JPEG": png,  # as ImageNet's n02105855_2933.JPEG
        "bytes_after_end.png": png + b"\x00" * 64,
        "image.bmp": _encoded(picture, "BMP"),
        "image.tif": _encoded(picture, "TIFF"),
        "image.webp": _encoded(picture, "WEBP"),
    }


def _bad_files() -> dict:
    """Files that DALI cannot decode, and the problem that the check reports."""
    picture = _picture()
    jpeg, png = _encoded(picture, "JPEG"), _encoded(picture, "PNG")
    webp = _encoded(picture, "WEBP")
    return {
        "half.JPEG": (jpeg[:len(jpeg) // 2], "truncated JPEG"),
        "no_end_marker.JPEG": (jpeg[:-2], "truncated JPEG"),
        "html.JPEG": (b"<html><body>404 Not Found</body></html>",
                      "not a JPEG, PNG, BMP, TIFF or WebP file (it starts with b'<html><b')"),
        "gif.JPEG": (_encoded(picture, "GIF"), "not a JPEG, PNG, BMP, TIFF or WebP file"),
        "empty.JPEG": (b"", "empty file (0 bytes)"),
        "no_iend.png": (png[:-12], "truncated PNG"),  # PIL reads it, DALI does not
        "half.webp": (webp[:len(webp) // 2], "truncated WebP"),
    }


def _decodes_in_dali(path: str) -> bool:
    try:
        dali.preprocess_files([path], resize_size=32, image_size=32, image_dtype=np.float32,
                              num_threads=1)
    except RuntimeError:
        return False
    return True


def test_check_agrees_with_dali_on_sound_and_bad_files(tmp_path):
    for name, data in _sound_files().items():
        path = tmp_path / name
        path.write_bytes(data)
        assert folders.image_problem(str(path)) is None, name
        assert _decodes_in_dali(str(path)), name
    for name, (data, problem) in _bad_files().items():
        path = tmp_path / name
        path.write_bytes(data)
        assert problem in (folders.image_problem(str(path)) or ""), name
        if data:  # DALI's reader refuses an empty file by itself
            assert not _decodes_in_dali(str(path)), name
    assert "cannot be read" in folders.image_problem(str(tmp_path / "gone.JPEG"))


def test_check_images_in_threads_keeps_file_order(tmp_path):
    # Enough files for several chunks of the thread pool; the cheap check reads two ends only.
    files = []
    for i in range(1300):
        path = tmp_path / f"{i:05d}.JPEG"
        path.write_bytes(b"\xff\xd8\xff\xe0" + bytes(8) + b"\xff\xd9" if i % 97 else b"junk")
        files.append(str(path))
    bad = folders.check_images(files, num_threads=8)
    assert [path for path, _ in bad] == [files[i] for i in range(0, 1300, 97)]
    assert bad == folders.check_images(files, num_threads=1)


# --- a folder tree ---------------------------------------------------------------------------


def _tree(root, *, train=None, val=None) -> str:
    """root/<split>/<class>/<i>.JPEG, with {class: number of images} per split (None: no split)."""
    for split, classes in (("train", train), ("val", val)):
        for name, count in (classes or {}).items():
            folder = os.path.join(root, split, name)
            os.makedirs(folder)
            for i in range(count):
                _picture((16, 16), seed=i).save(os.path.join(folder, f"{i}.JPEG"), "JPEG")
    return str(root)


def _one_line(error) -> str:
    text = str(error.value)
    assert "\n" not in text
    return text


def _config(data_root: str, **fields) -> ml_collections.ConfigDict:
    return tiny_config(data_root, **{"per_device_batch_size": 1, **fields})


def _open_data(config, *, with_train=True):
    return open_data(config, parallel.make_mesh(), train_batch=8, eval_batch=8,
                     with_train=with_train)


def test_layout_errors_name_the_folder_and_the_fix(tmp_path):
    tmp = re.escape(str(tmp_path))
    three = {"a": 2, "b": 2, "c": 2}

    def fails(root, pattern, **fields):
        with pytest.raises(ConfigError, match=pattern) as error:
            _open_data(_config(str(root), **fields))
        text = _one_line(error)
        assert "/train/<class>/<image>.JPEG" in text or "--config." in text or "give" in text

    fails(_tree(tmp_path / "no_val", train=three),
          rf"data.root '{tmp}/no_val' has no val/ folder: expected")
    fails(_tree(tmp_path / "no_train", val=three),
          rf"data.root '{tmp}/no_train' has no train/ folder: expected")
    empty = _tree(tmp_path / "empty", train={"a": 2, "b": 2}, val=three)
    os.makedirs(os.path.join(empty, "train", "c"))
    fails(empty, rf"class folder '{tmp}/empty/train/c' has no images .*: remove the folder or add")
    fails(_tree(tmp_path / "four", train={**three, "d": 2}, val={**three, "d": 2}),
          r"has 4 class folders but num_classes is 3: set --config.num_classes=4")
    fails(_tree(tmp_path / "differ", train=three, val={"a": 2, "b": 2, "x": 2}),
          r"has other class folders in train/ \(3\) than in val/ \(3\): train/ has 'c' that "
          r"val/ lacks, val/ has 'x' that train/ lacks; give both the same class folders")
    # The same tree is fine with a big enough classifier, and for eval (val alone).
    data = _open_data(_config(str(tmp_path / "four"), num_classes=4))
    assert data.num_train_images == 8 and data.class_names == ["a", "b", "c", "d"]
    assert _open_data(_config(str(tmp_path / "no_train")), with_train=False).eval.num_images == 6


def test_batch_that_the_devices_do_not_divide_stops_before_the_workdir(tmp_path):
    from resnet_jax.train import loop

    root = _tree(tmp_path / "data", train={"a": 8, "b": 8}, val={"a": 1, "b": 1})
    config = _config(root, global_batch_size=12, num_classes=2)
    with pytest.raises(ConfigError, match=r"global_batch_size=12 is not divisible by the 8 "
                                          r"devices: use a multiple of 8") as error:
        loop.train_and_evaluate(config, str(tmp_path / "run"))
    _one_line(error)
    assert not os.path.exists(tmp_path / "run")


def test_unwritable_workdir_names_the_path(tmp_path):
    tmp = re.escape(str(tmp_path))
    (tmp_path / "a_file").write_text("not a folder")
    # Root may write anywhere, but nobody can make a folder under a file.
    with pytest.raises(ConfigError, match=rf"--workdir '{tmp}/a_file/run' is under the "
                                          rf"file '{tmp}/a_file', not a folder: pass "
                                          r"--workdir=DIR") as error:
        config_lib.check_workdir(str(tmp_path / "a_file" / "run"))
    _one_line(error)
    with pytest.raises(ConfigError, match=r"'.*/a_file' is a file, not a folder"):
        config_lib.check_workdir(str(tmp_path / "a_file"))
    config_lib.check_workdir(str(tmp_path / "new" / "run"))  # fine, and not created
    config_lib.check_workdir(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["a_file"]


def test_missing_checkpoint_names_the_path(tmp_path):
    from resnet_jax.train import evaluate

    tmp = re.escape(str(tmp_path))
    with pytest.raises(ConfigError, match=rf"checkpoint '{tmp}/nope' does not exist: pass "
                                          r"--workdir of a training run or --config.checkpoint"):
        checkpoint.Saved(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"holds no complete checkpoint: train first"):
        checkpoint.Saved(str(tmp_path / "empty"))
    config = _config(str(tmp_path), mode="eval", checkpoint=str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match=r"checkpoint '.*/nope' does not exist") as error:
        evaluate.evaluate_checkpoint(config, None)
    _one_line(error)


# --- unreadable image files ------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_root(tmp_path_factory):
    """3 classes of 4 train and 2 val images; one train file truncated, one an HTML page."""
    root = _tree(tmp_path_factory.mktemp("bad"), train={"a": 4, "b": 4, "c": 4},
                 val={"a": 2, "b": 2, "c": 2})
    _cut_in_half(os.path.join(root, "train", "b", "1.JPEG"))
    with open(os.path.join(root, "train", "c", "0.JPEG"), "wb") as f:
        f.write(b"<html><body>404 Not Found</body></html>")
    return root


def _cut_in_half(path):
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:len(data) // 2])


def test_unreadable_image_stops_with_its_name(bad_root):
    with pytest.raises(ConfigError) as error:
        _open_data(_config(bad_root))
    assert _one_line(error) == (
        f"image file '{bad_root}/train/b/1.JPEG' is unreadable: truncated JPEG "
        f"({os.path.getsize(os.path.join(bad_root, 'train', 'b', '1.JPEG'))} bytes, no "
        f"end-of-image marker FFD9); 1 more unreadable file in '{bad_root}/train': delete or "
        "replace them, or pass --config.data.skip_bad_images=true to leave unreadable files out")
    # The folder scan by itself still lists every file, as before.
    assert len(folders.scan_split(bad_root, "train")) == 12


def test_skip_bad_images_leaves_them_out_and_counts_them(bad_root, caplog):
    data = _open_data(_config(bad_root, data__skip_bad_images=True))
    assert data.num_train_images == 10
    split = folders.scan_split(bad_root, "train", bad_images="skip")
    names = [os.path.relpath(f, os.path.join(bad_root, "train")) for f in split.files]
    assert names == ["a/0.JPEG", "a/1.JPEG", "a/2.JPEG", "a/3.JPEG", "b/0.JPEG", "b/2.JPEG",
                     "b/3.JPEG", "c/1.JPEG", "c/2.JPEG", "c/3.JPEG"]
    assert split.labels.tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert (f"skipped 2 unreadable images in {bad_root}/train: first b/1.JPEG: truncated JPEG"
            in caplog.text)
    assert f"{bad_root}/val" not in caplog.text  # nothing to skip there


def test_skip_bad_images_still_needs_one_image_per_class(tmp_path):
    root = _tree(tmp_path, train={"a": 2, "b": 1}, val={"a": 1, "b": 1})
    _cut_in_half(os.path.join(root, "train", "b", "0.JPEG"))
    with pytest.raises(ConfigError, match=rf"class folder '{re.escape(root)}/train/b' has no "
                                          r"readable images .*: replace them, or remove the "
                                          r"folder"):
        folders.scan_split(root, "train", bad_images="skip")


# --- the command line ------------------------------------------------------------------------
# One run of the command (`trained`); the bad input after it goes through what `main` runs,
# in this process: errors.exit_code over train_and_evaluate or evaluate_checkpoint.
# test_end_to_end checks, on the command itself, that such an error is all a user sees.

ONE_EPOCH = ("--config.num_epochs=1", "--config.warmup_epochs=0")


def _main_error(capsys, mode, config, workdir) -> str:
    """The `error: ...` line that `main` prints for `config` (and exit code 2)."""
    from resnet_jax.train import evaluate, loop

    body = loop.train_and_evaluate if mode == "train" else evaluate.evaluate_checkpoint
    capsys.readouterr()
    assert exit_code(body, config, None if workdir is None else str(workdir)) == 2
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert captured.out == "" and len(errors) == 1, captured
    return errors[0]


def _snapshot(workdir) -> dict:
    """Every file under workdir with its size and modification time."""
    return {os.path.relpath(os.path.join(folder, name), workdir):
            (os.stat(os.path.join(folder, name)).st_size,
             os.stat(os.path.join(folder, name)).st_mtime_ns)
            for folder, _, names in os.walk(workdir) for name in names}


@pytest.fixture(scope="module")
def odd_root(tmp_path_factory):
    """The demo tree (3 classes, 33 train and 15 val images) with odd but valid files added
    in both splits, and two unreadable ones in train."""
    root = str(tmp_path_factory.mktemp("odd"))
    make_demo_dataset(root, num_classes=3, train_per_class=11, val_per_class=5, image_size=40,
                      seed=1)
    for split in ("train", "val"):
        folder = os.path.join(root, split, "n0001_square")
        paths = sorted(os.path.join(folder, name) for name in os.listdir(folder))
        for path, mode in zip(paths[1:4], ("CMYK", "L", "PNG"), strict=True):
            image = Image.open(path).convert("RGB")
            if mode == "PNG":
                image.save(path, "PNG")  # a PNG under a .JPEG name
            else:
                image.convert(mode).save(path, "JPEG", quality=90)
        with open(paths[4], "ab") as f:
            f.write(b"\x00" * 32)  # bytes after the end-of-image marker
    _cut_in_half(os.path.join(root, "train", "n0002_triangle", "n0002_triangle_00003.JPEG"))
    with open(os.path.join(root, "train", "n0000_circle", "download.JPEG"), "wb") as f:
        f.write(b"<html><body>404 Not Found</body></html>")
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory, odd_root):
    """A 1-epoch run of the command on odd_root with skip_bad_images: (workdir, output)."""
    workdir = str(tmp_path_factory.mktemp("run") / "run")
    result = run_main(workdir, odd_root, *ONE_EPOCH, "--config.data.skip_bad_images=true")
    assert result.returncode == 0, result.output
    return workdir, result.output


def test_cmyk_grayscale_and_png_images_train_and_evaluate(trained, odd_root):
    _, output = trained
    modes = {Image.open(os.path.join(folder, name)).mode
             for split in ("train", "val")
             for folder, _, names in os.walk(os.path.join(odd_root, split)) for name in names
             if not name.startswith(("download", "n0002_triangle_00003"))}
    assert modes == {"RGB", "CMYK", "L"}
    # 34 train files less the 2 unreadable ones: 4 steps of 8; every val image evaluated.
    assert "32 train images = 4 steps/epoch" in output
    assert "eval epoch 1:" in output and "on 15 images" in output
    assert (f"skipped 2 unreadable images in {odd_root}/train: first "
            "n0000_circle/download.JPEG: not a JPEG, PNG, BMP, TIFF or WebP file" in output)


def test_unreadable_image_names_it_and_keeps_the_workdir(trained, odd_root, capsys):
    workdir, _ = trained
    before = _snapshot(workdir)
    assert any(name.startswith("checkpoints/4/") for name in before)
    config = tiny_config(odd_root, num_epochs=2, warmup_epochs=0)
    line = _main_error(capsys, "train", config, workdir)
    assert line.startswith(
        f"error: image file '{odd_root}/train/n0000_circle/download.JPEG' is unreadable: not a "
        "JPEG, PNG, BMP, TIFF or WebP file (it starts with b'<html><b'); 1 more unreadable file "
        f"in '{odd_root}/train': delete or replace them, or pass "
        "--config.data.skip_bad_images=true")
    assert _snapshot(workdir) == before


def test_checkpoint_of_another_arch_names_both(trained, odd_root, tmp_path, capsys):
    workdir, _ = trained
    before = _snapshot(workdir)
    config = tiny_config(odd_root, mode="eval", arch="resnet50_v15", checkpoint=workdir,
                         data__skip_bad_images=True)
    assert _main_error(capsys, "eval", config, tmp_path / "eval") == (
        f"error: checkpoint '{workdir}' holds arch='resnet_tiny' but the config has "
        "arch='resnet50_v15': set --config.arch='resnet_tiny', or use another workdir or "
        "checkpoint")
    assert _snapshot(workdir) == before
    assert not os.path.exists(tmp_path / "eval")


def test_workdir_under_a_file_names_it(tmp_path, odd_root, capsys):
    (tmp_path / "a_file").write_text("not a folder")
    config = tiny_config(odd_root, data__skip_bad_images=True)
    assert _main_error(capsys, "train", config, tmp_path / "a_file" / "run") == (
        f"error: --workdir '{tmp_path}/a_file/run' is under the file '{tmp_path}/a_file', not a "
        "folder: pass --workdir=DIR of a new folder or of an earlier run's folder")
    assert (tmp_path / "a_file").read_text() == "not a folder"


def test_missing_data_root_is_one_line(tmp_path, capsys):
    config = tiny_config(str(tmp_path / "nowhere"))
    assert _main_error(capsys, "train", config, tmp_path / "run") == (
        f"error: data.root '{tmp_path}/nowhere' does not exist: pass --config.data.root=DIR "
        "with DIR/train/<class>/*.JPEG and DIR/val/<class>/*.JPEG")
    assert not os.path.exists(tmp_path / "run")
