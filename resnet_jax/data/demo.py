"""A small, learnable ImageNet-layout JPEG data set, drawn locally (no download).

Each class is one shape (circle, square, triangle, ...) drawn in a class-typical
hue at a random position, size and rotation on a noisy background of random
colour. A CNN learns it within a few epochs, yet it cannot be solved by one
pixel statistic: hues are jittered, backgrounds vary, and random crops cut shapes.

    python -m resnet_jax.data.demo --out demo_data

writes demo_data/train/<class>/<class>_<n>.JPEG and demo_data/val/<class>/<class>_<n>.JPEG,
with <class> like 'n0000_circle', as ImageNet names its folders and files.
"""

import argparse
import colorsys
import json
import math
import os
import shutil

import numpy as np
from PIL import Image, ImageDraw

from resnet_jax.errors import ConfigError

SHAPES = ("circle", "square", "triangle", "cross", "ring", "star", "diamond", "hexagon")

MARKER = "demo_dataset.json"

# Bumped whenever the drawing changes, so an old tree on disk is redrawn.
_FORMAT_VERSION = 2

# A few train images are stored in other JPEG colour spaces, so that the
# decoder's conversion to RGB is exercised (ImageNet has such files too).
_GRAYSCALE_CLASSES = 3


def _polygon(num_points, radius, inner_radius, rotation, cx, cy):
    """Vertices of a regular polygon, or of a star when inner_radius is set."""
    points = []
    steps = num_points * 2 if inner_radius else num_points
    for i in range(steps):
        r = inner_radius if inner_radius and i % 2 else radius
        angle = rotation + 2 * math.pi * i / steps
        points.append((cx + r * math.cos(angle), cy + r * math.sin(angle)))
    return points


def _cross(radius, rotation, cx, cy):
    """Vertices of a plus sign whose arms are a third of its width."""
    a, b = radius, radius / 3
    outline = [(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b),
               (b, a), (-b, a), (-b, b), (-a, b), (-a, -b), (-b, -b)]
    c, s = math.cos(rotation), math.sin(rotation)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in outline]


def _draw_shape(draw, shape, cx, cy, radius, rotation, fill, background):
    """Draws one shape, centred at (cx, cy), about 2*radius across."""
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "ring":
        draw.ellipse(box, fill=fill)
        r = radius * 0.55
        # Noise is added after drawing, so the hole looks like the background.
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=background)
    elif shape == "square":
        draw.polygon(_polygon(4, radius, 0, rotation, cx, cy), fill=fill)
    elif shape == "triangle":
        draw.polygon(_polygon(3, radius, 0, rotation, cx, cy), fill=fill)
    elif shape == "cross":
        draw.polygon(_cross(radius, rotation, cx, cy), fill=fill)
    elif shape == "star":
        draw.polygon(_polygon(5, radius, radius * 0.45, rotation, cx, cy), fill=fill)
    elif shape == "diamond":
        # A rhombus: a square stretched along one diagonal, so it differs from 'square'.
        c, s = math.cos(rotation), math.sin(rotation)
        outline = [(radius, 0), (0, radius * 0.55), (-radius, 0), (0, -radius * 0.55)]
        draw.polygon([(cx + x * c - y * s, cy + x * s + y * c) for x, y in outline], fill=fill)
    elif shape == "hexagon":
        draw.polygon(_polygon(6, radius, 0, rotation, cx, cy), fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def _rgb(hue, saturation, value):
    r, g, b = colorsys.hsv_to_rgb(hue % 1.0, saturation, value)
    return int(r * 255), int(g * 255), int(b * 255)


def _render(rng, class_index, num_classes, image_size):
    """One image of class `class_index` as an RGB PIL image."""
    shape = SHAPES[class_index % len(SHAPES)]
    background = _rgb(rng.random(), rng.uniform(0.0, 0.4), rng.uniform(0.2, 0.9))
    image = Image.new("RGB", (image_size, image_size), background)
    draw = ImageDraw.Draw(image)
    # Large enough that most random-resized crops (8%-100% of the area) still hold part of it.
    radius = image_size * rng.uniform(0.25, 0.4)
    margin = radius * 0.8
    cx, cy = rng.uniform(margin, image_size - margin, size=2)
    # Hues are spread over the circle with jitter up to a sixth of the gap: the
    # colour is a strong cue, the shape a second one.
    hue = class_index / num_classes + rng.uniform(-1, 1) / (6 * num_classes)
    fill = _rgb(hue, rng.uniform(0.7, 1.0), rng.uniform(0.6, 1.0))
    _draw_shape(draw, shape, cx, cy, radius, rng.uniform(0, 2 * math.pi), fill, background)
    pixels = np.asarray(image, np.float32)
    pixels += rng.normal(0.0, rng.uniform(5.0, 30.0), pixels.shape).astype(np.float32)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def class_names(num_classes):
    """Folder names of the demo classes, in label order: 'n0000_circle', ..."""
    return [f"n{k:04d}_{SHAPES[k % len(SHAPES)]}" for k in range(num_classes)]


def _params(num_classes, train_per_class, val_per_class, image_size, seed):
    return {"format_version": _FORMAT_VERSION, "num_classes": num_classes,
            "train_per_class": train_per_class, "val_per_class": val_per_class,
            "image_size": image_size, "seed": seed}


def _read_marker(root):
    try:
        with open(os.path.join(root, MARKER)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _is_complete(root, params):
    """True when `root` holds the demo data set drawn with exactly `params`."""
    if _read_marker(root) != params:
        return False
    names = class_names(params["num_classes"])
    for split, count in (("train", params["train_per_class"]), ("val", params["val_per_class"])):
        for name in names:
            folder = os.path.join(root, split, name)
            if not os.path.isdir(folder) or len(os.listdir(folder)) != count:
                return False
    return True


def make_demo_dataset(root, *, num_classes=5, train_per_class=160, val_per_class=40,
                      image_size=96, seed=0):
    """Writes the demo data set under `root` (train/ and val/) and returns `root`.

    Does nothing when `root` already holds the same data set (same parameters,
    recorded in root/demo_dataset.json, and all files present). A previous demo
    data set with other parameters is replaced; any other non-empty folder is
    refused with a ConfigError rather than written into.
    """
    params = _params(num_classes, train_per_class, val_per_class, image_size, seed)
    if num_classes < 2:
        raise ConfigError(f"demo num_classes={num_classes}: use at least 2 classes")
    if train_per_class < 2 or val_per_class < 1:
        raise ConfigError(f"demo train_per_class={train_per_class}, val_per_class="
                          f"{val_per_class}: use at least 2 train and 1 val image per class")
    if image_size < 16:
        raise ConfigError(f"demo image_size={image_size}: use at least 16 pixels")
    if _is_complete(root, params):
        return root
    if os.path.isdir(root) and os.listdir(root):
        if _read_marker(root) is None:
            raise ConfigError(f"demo output folder '{root}' exists and is not a demo data set: "
                              "choose an empty or new folder for --out")
        # Ours (it has the marker) but drawn with other parameters, or incomplete.
        for split in ("train", "val"):
            shutil.rmtree(os.path.join(root, split), ignore_errors=True)
        os.remove(os.path.join(root, MARKER))

    names = class_names(num_classes)
    for split_index, (split, count) in enumerate((("train", train_per_class),
                                                  ("val", val_per_class))):
        for k, name in enumerate(names):
            folder = os.path.join(root, split, name)
            os.makedirs(folder, exist_ok=True)
            # One generator per (split, class): the images do not depend on the other counts.
            rng = np.random.default_rng([seed, split_index, k])
            for n in range(count):
                image = _render(rng, k, num_classes, image_size)
                path = os.path.join(folder, f"{name}_{n:05d}.JPEG")
                if split == "train" and n == 0 and k < _GRAYSCALE_CLASSES:
                    image = image.convert("L")
                elif split == "train" and n == 1 and k == 0:
                    image = image.convert("CMYK")
                image.save(path, format="JPEG", quality=90)
    # Written last, so that an interrupted run is redrawn next time.
    with open(os.path.join(root, MARKER), "w") as f:
        json.dump(params, f, indent=1)
    return root


def main(argv=None):
    """Command line: writes the demo data set, or says that it is already there."""
    parser = argparse.ArgumentParser(
        prog="python -m resnet_jax.data.demo",
        description="Draw a small ImageNet-layout JPEG data set of coloured shapes.")
    parser.add_argument("--out", required=True, help="output folder (train/ and val/ go here)")
    parser.add_argument("--num-classes", type=int, default=5)
    parser.add_argument("--train-per-class", type=int, default=160)
    parser.add_argument("--val-per-class", type=int, default=40)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    params = _params(args.num_classes, args.train_per_class, args.val_per_class,
                     args.image_size, args.seed)
    total = args.num_classes * (args.train_per_class + args.val_per_class)
    if _is_complete(args.out, params):
        print(f"{args.out}: demo data set already there ({total} images), nothing to do")
        return 0
    try:
        make_demo_dataset(args.out, num_classes=args.num_classes,
                          train_per_class=args.train_per_class,
                          val_per_class=args.val_per_class, image_size=args.image_size,
                          seed=args.seed)
    except ConfigError as e:
        parser.exit(2, f"error: {e}\n")
    print(f"{args.out}: wrote {args.num_classes} classes, "
          f"{args.num_classes * args.train_per_class} train and "
          f"{args.num_classes * args.val_per_class} val images of "
          f"{args.image_size}x{args.image_size} "
          f"(train: {os.path.join(args.out, 'train')}, val: {os.path.join(args.out, 'val')})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
