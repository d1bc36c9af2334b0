"""Real DataLoaders over one dataset, through a FUSE mount and through the
Python client, checking every sample's bytes (and decoded size) against the
source. Prints one JSON line of counts. argv: MOUNTPOINT SOURCE DATASET."""
import hashlib
import json
import os
import sys

import torchvision
from PIL import Image
from torch.utils.data import DataLoader, RandomSampler

import shoal
import shoal.fsspec  # registers shoal://
import shoal.torch as st

mnt, src, name = sys.argv[1], sys.argv[2], sys.argv[3]
WORKERS = 4


def sha(b):
    return hashlib.sha256(b).hexdigest()


def raw(path):
    # What PIL and most loaders do: a buffered open() and read() (with an
    # isatty() ioctl per open).
    with open(path, "rb") as f:
        return f.read()


def identity(b):
    return b


def collate(batch):
    return batch


# The source's truth: every image's bytes and size, by class.
truth = {}
sizes = {}
for cls in sorted(os.listdir(os.path.join(src, "train"))):
    for fn in sorted(os.listdir(os.path.join(src, "train", cls))):
        p = os.path.join(src, "train", cls, fn)
        if fn.endswith((".png", ".jpg")):
            truth[f"/train/{cls}/{fn}"] = sha(raw(p))
            with Image.open(p) as im:
                sizes[f"/train/{cls}/{fn}"] = im.size
classes = sorted(os.listdir(os.path.join(src, "train")))
out = {}

# 1. torchvision's ImageFolder through the mount, bytes checked.
folder = torchvision.datasets.ImageFolder(os.path.join(mnt, "train"), loader=raw)
assert folder.classes == classes, folder.classes
assert len(folder) == len(truth), (len(folder), len(truth))
rel = ["/" + os.path.relpath(p, mnt) for p, _ in folder.samples]
seen = 0
for batch in DataLoader(folder, batch_size=8, shuffle=True, num_workers=WORKERS, collate_fn=collate):
    for data, target in batch:
        seen += 1
        # Every sample is the source's bytes for a file of its class.
        digest = sha(data)
        matches = [p for p, d in truth.items() if d == digest]
        assert matches, "a sample read through the mount matches no source file"
        assert any(p.split("/")[2] == classes[target] for p in matches), (matches, target)
out["mount_samples"] = seen
assert seen == len(truth)

# 2. The same with torchvision's default loader (PIL decodes every image).
folder = torchvision.datasets.ImageFolder(os.path.join(mnt, "train"))
decoded = 0
for batch in DataLoader(folder, batch_size=4, num_workers=2, collate_fn=collate):
    for img, target in batch:
        decoded += 1
        assert img.mode == "RGB"
paths = ["/" + os.path.relpath(p, mnt) for p, _ in folder.samples]
for i, (p, _) in enumerate(folder.samples):
    img, _ = folder[i]
    assert img.size == sizes[paths[i]], (paths[i], img.size)
out["decoded"] = decoded

# 3. Order-aware prefetch for the mount: the sampler tells shoal the order.
folder = torchvision.datasets.ImageFolder(os.path.join(mnt, "train"), loader=raw)
sampler = st.OrderedSampler.for_mount(RandomSampler(folder), [p for p, _ in folder.samples], mnt)
assert sampler.dataset == name
n = 0
for batch in DataLoader(folder, batch_size=8, sampler=sampler, num_workers=WORKERS, collate_fn=collate):
    for data, target in batch:
        n += 1
        assert sha(data) in truth.values()
# The plan outlives the epoch's last index and ends by itself.
import time
deadline = time.time() + 60
while not sampler.plan.finished:
    assert time.time() < deadline, sampler.plan.stats()
    time.sleep(0.02)
stats = sampler.plan.stats()
# Nothing was skipped (the cursor trails the sampler), every file asked for.
assert stats["failed"] == 0 and stats["files_done"] == len(folder), stats
assert stats["loaded"] + stats["cached"] > 0, stats
out["mount_ordered_samples"] = n

# 4. The Python client: shoal's ImageFolder, no mount involved, with the
# order-aware sampler, every sample checked against its path's bytes.
ds = st.ImageFolder(name, "/train", loader=identity)
assert ds.classes == classes
assert sorted(ds.paths) == sorted(truth), "the client lists exactly the images"
n = 0
for batch in DataLoader(ds, batch_size=8, sampler=ds.sampler(), num_workers=WORKERS, collate_fn=collate):
    for data, target in batch:
        n += 1
        digest = sha(data)
        path = [p for p, d in truth.items() if d == digest]
        assert path and classes[target] == path[0].split("/")[2], (path, target)
out["client_samples"] = n

# The same dataset's index -> bytes mapping, exactly (not only "some file").
for i in range(len(ds)):
    assert sha(ds[i][0]) == truth[ds.paths[i]], ds.paths[i]
    assert classes[ds[i][1]] == ds.paths[i].split("/")[2]

# PIL through the client.
ds_img = st.ImageFolder(name, "/train")
for i in range(len(ds_img)):
    img, _ = ds_img[i]
    assert img.size == sizes[ds_img.paths[i]]

# 5. The iterable dataset: every file exactly once across the workers.
it = st.ShoalIterableDataset(name, "/train", loader=identity)
got = {}
for batch in DataLoader(it, batch_size=8, num_workers=3, collate_fn=collate):
    for data in batch:
        got[sha(data)] = got.get(sha(data), 0) + 1
expected = {}
for p, d in truth.items():
    expected[d] = expected.get(d, 0) + 1
expected[sha(b"not an image\n")] = 1  # the iterable dataset takes every file
assert got == expected, "each file once, bytes equal"
out["iterable_samples"] = sum(got.values())

# 6. fsspec.
import fsspec

fs = fsspec.filesystem("shoal")
some = sorted(truth)[3]
with fsspec.open(f"shoal://{name}{some}", "rb") as f:
    assert sha(f.read()) == truth[some]
with fs.open(f"{name}{some}", "rb", block_size=1000) as f:
    f.seek(10)
    part = f.read(5000)
assert part == raw(os.path.join(src, some.lstrip("/")))[10:5010]
assert fs.cat_file(f"{name}{some}", start=-7) == raw(os.path.join(src, some.lstrip("/")))[-7:]
listing = fs.ls(f"{name}/train", detail=False)
assert listing == [f"{name}/train/{c}" for c in classes], listing
assert fs.info(f"{name}{some}")["size"] == os.path.getsize(os.path.join(src, some.lstrip("/")))
assert fs.isdir(f"{name}/train") and fs.isfile(f"{name}{some}")
try:
    fs.open(f"{name}/new", "wb")
    raise AssertionError("write open")
except PermissionError:
    pass

# 7. Errors, exactly.
import errno

d = shoal.open_dataset(name)


def err(f):
    try:
        f()
    except OSError as e:
        return e.errno
    raise AssertionError("no error")


assert err(lambda: d.read("/train/nope.jpg")) == errno.ENOENT
assert err(lambda: d.read("/nope/x")) == errno.ENOENT
assert err(lambda: d.read("/train")) == errno.EISDIR
assert err(lambda: d.listdir(some)) == errno.ENOTDIR
assert err(lambda: d.read(some + "/x")) == errno.ENOTDIR
assert err(lambda: d.read("/train/../train" + some)) == errno.EINVAL
assert err(lambda: d.read("/train/a\0b")) == errno.EINVAL
assert err(lambda: d.read("/" + "n" * 256)) == errno.ENAMETOOLONG
assert err(lambda: shoal.open_dataset("nosuchdataset")) == errno.ENOENT
try:
    fs.info(f"{name}/train/nope.jpg")
    raise AssertionError("info of a missing file")
except FileNotFoundError:
    pass
# Ranges clip at the end, like pread.
full = d.read(some)
assert d.read(some, len(full) - 3, 100) == full[-3:]
assert d.read(some, len(full) + 10) == b""
out["counters"] = d.counters()
print(json.dumps(out))
