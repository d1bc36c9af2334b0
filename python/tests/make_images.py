"""Writes an ImageFolder-shaped tree of real images: ROOT/train/CLASS/N.EXT.
Some are noise PNGs larger than one 64 KiB block, some small JPEGs."""
import os
import random
import sys

from PIL import Image

root, classes, per_class = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(7)
for c in range(classes):
    d = os.path.join(root, "train", f"class_{c:02d}")
    os.makedirs(d, exist_ok=True)
    for i in range(per_class):
        w, h = rng.randint(16, 200), rng.randint(16, 200)
        img = Image.frombytes("RGB", (w, h), rng.randbytes(w * h * 3))
        if i % 2:
            img.save(os.path.join(d, f"{i:04d}.png"))
        else:
            img.save(os.path.join(d, f"{i:04d}.jpg"), quality=90)
# Not an image: ImageFolder must skip it by its extension.
with open(os.path.join(root, "train", "class_00", "README.txt"), "w") as f:
    f.write("not an image\n")
