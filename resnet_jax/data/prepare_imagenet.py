"""Arranges the official ImageNet (ILSVRC2012) archives into the layout training reads.

    python -m resnet_jax.data.prepare_imagenet --out /data/imagenet \\
        --train-tar ILSVRC2012_img_train.tar --val-tar ILSVRC2012_img_val.tar \\
        --devkit ILSVRC2012_devkit_t12.tar.gz        # or --val-csv LOC_val_solution.csv

writes /data/imagenet/train/<wnid>/*.JPEG and /data/imagenet/val/<wnid>/*.JPEG.
The training archive holds one tar per class; the validation archive holds
50,000 images in one folder, whose classes come from the devkit
(data/ILSVRC2012_validation_ground_truth.txt with data/meta.mat) or from
Kaggle's LOC_val_solution.csv. Finished classes are skipped on a re-run.
"""

import argparse
import csv
import io
import os
import shutil
import sys
import tarfile

from resnet_jax.errors import ConfigError, exit_code


def _open_tar(path: str, what: str) -> tarfile.TarFile:
    if not os.path.isfile(path):
        raise ConfigError(f"{what} {path!r} does not exist: pass the downloaded archive's path")
    try:
        return tarfile.open(path)
    except tarfile.TarError as error:
        raise ConfigError(f"{what} {path!r} is not a readable tar archive ({error}): "
                          "download it again") from error


def _extract_images(archive: tarfile.TarFile, destination: str, rename=None) -> int:
    """Writes the archive's files (flattened) into `destination`; returns their count."""
    count = 0
    for member in archive:
        if not member.isfile():
            continue
        name = os.path.basename(member.name)
        target = rename(name) if rename else os.path.join(destination, name)
        if target is None:
            continue
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with archive.extractfile(member) as src, open(target + ".part", "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.replace(target + ".part", target)  # a crash never leaves a truncated JPEG
        count += 1
    return count


def prepare_train(train_tar: str, out: str) -> int:
    """Extracts each class tar of the training archive into out/train/<wnid>/."""
    total = 0
    with _open_tar(train_tar, "--train-tar") as outer:
        for member in outer:
            if not member.isfile() or not member.name.endswith(".tar"):
                continue
            wnid = os.path.basename(member.name)[: -len(".tar")]
            class_dir = os.path.join(out, "train", wnid)
            done_marker = os.path.join(class_dir, ".complete")
            if os.path.exists(done_marker):
                continue
            with tarfile.open(fileobj=outer.extractfile(member)) as inner:
                total += _extract_images(inner, class_dir)
            open(done_marker, "w").close()
    return total


def val_labels_from_devkit(devkit_tar: str) -> dict[str, str]:
    """{'ILSVRC2012_val_00000001.JPEG': wnid, ...} from the ILSVRC2012 devkit archive."""
    import scipy.io  # here, not above: only the devkit's .mat file needs SciPy

    with _open_tar(devkit_tar, "--devkit") as devkit:
        files = {os.path.basename(m.name): m for m in devkit if m.isfile()}
        missing = {"meta.mat", "ILSVRC2012_validation_ground_truth.txt"} - set(files)
        if missing:
            raise ConfigError(f"--devkit {devkit_tar!r} lacks {', '.join(sorted(missing))}: "
                              "pass ILSVRC2012_devkit_t12.tar.gz")
        meta = scipy.io.loadmat(io.BytesIO(devkit.extractfile(files["meta.mat"]).read()),
                                squeeze_me=True)["synsets"]
        ground_truth = devkit.extractfile(files["ILSVRC2012_validation_ground_truth.txt"]).read()
    # Leaf synsets (no children) are the 1000 classes; ground truth uses their ILSVRC ids.
    wnid_of = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in meta if int(s["num_children"]) == 0}
    ids = [int(line) for line in ground_truth.decode().split()]
    return {f"ILSVRC2012_val_{i:08d}.JPEG": wnid_of[label] for i, label in enumerate(ids, 1)}


def val_labels_from_csv(path: str) -> dict[str, str]:
    """{'ILSVRC2012_val_00000001.JPEG': wnid, ...} from Kaggle's LOC_val_solution.csv."""
    if not os.path.isfile(path):
        raise ConfigError(f"--val-csv {path!r} does not exist: pass LOC_val_solution.csv")
    with open(path, newline="") as f:
        rows = csv.DictReader(f)
        if not rows.fieldnames or not {"ImageId", "PredictionString"} <= set(rows.fieldnames):
            raise ConfigError(f"--val-csv {path!r} has no ImageId,PredictionString header: "
                              "pass Kaggle's LOC_val_solution.csv")
        return {f"{row['ImageId']}.JPEG": row["PredictionString"].split()[0] for row in rows}


def prepare_val(val_tar: str, labels: dict[str, str], out: str) -> int:
    """Sorts the validation archive's images into out/val/<wnid>/."""

    def destination(name):
        if name not in labels:
            raise ConfigError(f"validation image {name!r} has no label: the labels do not "
                              "belong to this --val-tar")
        return os.path.join(out, "val", labels[name], name)

    with _open_tar(val_tar, "--val-tar") as archive:
        return _extract_images(archive, os.path.join(out, "val"), rename=destination)


def main(argv=None) -> int:
    """Command line; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="data.root to create")
    parser.add_argument("--train-tar", help="ILSVRC2012_img_train.tar")
    parser.add_argument("--val-tar", help="ILSVRC2012_img_val.tar")
    labels = parser.add_mutually_exclusive_group()
    labels.add_argument("--devkit", help="ILSVRC2012_devkit_t12.tar.gz (validation labels)")
    labels.add_argument("--val-csv", help="Kaggle's LOC_val_solution.csv (validation labels)")
    return exit_code(_run, parser.parse_args(argv))


def _run(args) -> None:
    if args.val_tar and not (args.devkit or args.val_csv):
        raise ConfigError("--val-tar needs the validation labels: add --devkit "
                          "ILSVRC2012_devkit_t12.tar.gz or --val-csv LOC_val_solution.csv")
    if not (args.train_tar or args.val_tar):
        raise ConfigError("nothing to do: pass --train-tar and/or --val-tar")
    if args.train_tar:
        count = prepare_train(args.train_tar, args.out)
        print(f"train: wrote {count} images under {os.path.join(args.out, 'train')}")
    if args.val_tar:
        mapping = (val_labels_from_devkit(args.devkit) if args.devkit
                   else val_labels_from_csv(args.val_csv))
        count = prepare_val(args.val_tar, mapping, args.out)
        print(f"val: wrote {count} images under {os.path.join(args.out, 'val')}")


if __name__ == "__main__":
    sys.exit(main())
