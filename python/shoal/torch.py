"""PyTorch datasets over shoal, and order-aware prefetch.

- `ShoalDataset`: map-style, one sample per file below a directory of a dataset.
- `ImageFolder`: torchvision's layout (``ROOT/CLASS/FILE``), samples are
  ``(sample, class_index)`` with classes sorted by name, as torchvision does.
- `ShoalIterableDataset`: each DataLoader worker reads its share of the files in
  its own shuffled order, prefetched ahead of it.
- `OrderedSampler`: wraps any sampler. When an epoch starts it tells shoal the
  epoch's whole order (the file of every index it will yield), and moves the
  prefetch cursor as it yields, so the workers cache the next files of the
  epoch before the loader asks for them: a cold shuffled epoch runs at the
  store's bandwidth, not its latency. It works for these datasets and for any
  dataset over a FUSE mount (`OrderedSampler.for_mount`).

Reads happen in the process that asks (each DataLoader worker opens its own
client after the fork); the sampler's prefetch runs in the main process.
"""

import io
import os

import torch.utils.data as tud

import shoal

_DEFAULT_WINDOW = {"window_files": None, "window_bytes": None, "parallel": None}
# Indices a DataLoader takes from its sampler before it reads them (its
# prefetch_factor x num_workers x batch_size, with room to spare): the plan's
# cursor trails the sampler by this much, so files handed out but not yet read
# are still prefetched.
DEFAULT_LAG = 512


def pil_loader(data):
    """Decode an image file's bytes as torchvision's default loader does (RGB)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return img.convert("RGB")


class ShoalDataset(tud.Dataset):
    """Every file below `root` of dataset `dataset`, sorted by path; a sample is
    ``transform(loader(bytes))`` (raw bytes by default)."""

    def __init__(self, dataset, root="/", master=None, loader=None, transform=None, files=None):
        self.dataset = dataset
        self.root = root
        self.master = master
        self.loader = loader
        self.transform = transform
        if files is None:
            files = [p for p, _ in shoal.open_dataset(dataset, master).walk(root)]
        self.paths = list(files)

    def _ds(self):
        return shoal.open_dataset(self.dataset, self.master)

    def __len__(self):
        return len(self.paths)

    def read(self, index):
        return self._ds().read(self.paths[index])

    def __getitem__(self, index):
        sample = self.read(index)
        if self.loader is not None:
            sample = self.loader(sample)
        if self.transform is not None:
            sample = self.transform(sample)
        return sample

    def sampler(self, shuffle=True, generator=None, **window):
        """An `OrderedSampler` over this dataset (random order by default)."""
        inner = tud.RandomSampler(self, generator=generator) if shuffle else tud.SequentialSampler(self)
        return OrderedSampler(inner, self.paths, self.dataset, self.master, **window)


class ImageFolder(ShoalDataset):
    """torchvision's ImageFolder over a dataset directory: ``root/CLASS/...``."""

    IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

    def __init__(self, dataset, root="/", master=None, loader=pil_loader, transform=None,
                 target_transform=None, extensions=IMG_EXTENSIONS):
        ds = shoal.open_dataset(dataset, master)
        self.classes = sorted(e["name"].rsplit("/", 1)[-1] for e in ds.listdir(root) if e["type"] == "directory")
        if not self.classes:
            raise FileNotFoundError(f"no class directories under {root!r} of dataset {dataset!r}")
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        base = root.rstrip("/")
        samples = []
        for c in self.classes:
            # torchvision's order: directories sorted by path, files by name in each.
            for path, _ in sorted(ds.walk(f"{base}/{c}"), key=lambda f: tuple(f[0].rsplit("/", 1))):
                if extensions is None or path.lower().endswith(tuple(extensions)):
                    samples.append((path, self.class_to_idx[c]))
        self.samples = samples
        self.targets = [t for _, t in samples]
        self.target_transform = target_transform
        super().__init__(dataset, root, master, loader, transform, files=[p for p, _ in samples])

    def __getitem__(self, index):
        sample = super().__getitem__(index)
        target = self.targets[index]
        if self.target_transform is not None:
            target = self.target_transform(target)
        return sample, target


class OrderedSampler(tud.Sampler):
    """Yields `sampler`'s indices; at each epoch's start, prefetches
    ``paths[i]`` of dataset `dataset` in that order, ahead of the indices
    yielded so far less `lag` (within `window_files`/`window_bytes`, `parallel`
    blocks in flight). An epoch's plan runs until the window has passed the end
    of the order, or the next epoch starts."""

    def __init__(self, sampler, paths, dataset, master=None, lag=DEFAULT_LAG, **window):
        self.sampler = sampler
        self.paths = list(paths)
        self.dataset = dataset
        self.master = master
        self.lag = lag
        unknown = set(window) - set(_DEFAULT_WINDOW)
        if unknown:
            raise TypeError(f"unknown options {sorted(unknown)}")
        self.window = {**_DEFAULT_WINDOW, **window}
        self.plan = None
        self._plan_pid = None

    @classmethod
    def for_mount(cls, sampler, files, mountpoint, master=None, **options):
        """For a dataset over a shoal FUSE mount: `files` are the paths the
        dataset opens (under `mountpoint`), in index order."""
        name = mounted_dataset(mountpoint)
        root = os.path.realpath(mountpoint)
        paths = ["/" + os.path.relpath(os.path.realpath(f), root) for f in files]
        return cls(sampler, paths, name, master, **options)

    def __len__(self):
        return len(self.sampler)

    def __getstate__(self):
        # The plan is a native object of this process: never pickled.
        state = self.__dict__.copy()
        state["plan"] = state["_plan_pid"] = None
        return state

    def set_epoch(self, epoch):
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def _stop(self):
        if self.plan is not None and self._plan_pid == os.getpid():
            self.plan.cancel()
        self.plan = None

    def __iter__(self):
        order = list(self.sampler)
        self._stop()
        ds = shoal.open_dataset(self.dataset, self.master)
        plan = ds.plan([self.paths[i] for i in order], **self.window)
        self.plan, self._plan_pid = plan, os.getpid()
        try:
            for pos, index in enumerate(order):
                plan.advance(max(pos - self.lag, 0))
                yield index
        except GeneratorExit:
            # The loader stopped early (a break): the rest is not wanted.
            plan.cancel()
            raise


class ShoalIterableDataset(tud.IterableDataset):
    """Files below `root`, each DataLoader worker reading every
    `num_workers`-th file of one shuffled order (the same in every worker for a
    given `seed` and epoch), prefetched ahead of it. Call `set_epoch` between
    epochs for a new order."""

    def __init__(self, dataset, root="/", master=None, loader=None, transform=None, shuffle=True, seed=0, **window):
        self.inner = ShoalDataset(dataset, root, master, loader, transform)
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.window = {**_DEFAULT_WINDOW, **window}

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.inner)

    def __iter__(self):
        import torch

        n = len(self.inner)
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=g).tolist()
        else:
            order = list(range(n))
        info = tud.get_worker_info()
        if info is not None:
            order = order[info.id::info.num_workers]
        ds = self.inner._ds()
        plan = ds.plan([self.inner.paths[i] for i in order], **self.window)
        try:
            for pos, index in enumerate(order):
                plan.advance(pos)
                yield self.inner[index]
        finally:
            plan.cancel()


def mounted_dataset(mountpoint):
    """The dataset a shoal FUSE mount shows (from /proc/mounts)."""
    target = os.path.realpath(mountpoint)
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 3 and fields[1] == target and fields[0].startswith("shoal:"):
                return fields[0][len("shoal:"):]
    raise ValueError(f"{mountpoint} is not a shoal mount")
