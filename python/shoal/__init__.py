"""shoal: read shoal datasets from Python, straight from the cache workers.

No FUSE mount and no privileges: blocks come from a worker on this node by
short-circuit (the client maps the worker's block file), from the other workers
over gRPC, and from the store itself when no worker answers.

    import shoal
    ds = shoal.open_dataset("imagenet")            # $SHOAL_MASTER, else 127.0.0.1:7700
    ds.listdir("/train")
    data = ds.read("/train/n01440764/x.JPEG")

`shoal.fsspec` is an fsspec filesystem (``shoal://DATASET/PATH``); `shoal.torch`
has PyTorch datasets and a sampler that tells shoal the epoch's order ahead of
time (order-aware prefetch), for these datasets and for FUSE mounts alike.

Native objects belong to the process that made them. `open_dataset` and
`client` keep one per process, so code that calls them after a fork (a
DataLoader's workers) gets its own.
"""

import os
import threading

from ._native import Client, Dataset, Plan, __version__

__all__ = ["Client", "Dataset", "Plan", "client", "open_dataset", "split_uri", "__version__"]

_lock = threading.Lock()
_clients = {}
_datasets = {}


def client(master=None, **options):
    """This process's client for `master` (made on first use)."""
    key = (os.getpid(), master, tuple(sorted(options.items())))
    with _lock:
        c = _clients.get(key)
        if c is None:
            c = Client(master, **options)
            _clients[key] = c
        return c


def open_dataset(name, master=None, **options):
    """This process's handle on dataset `name` (opened on first use)."""
    key = (os.getpid(), name, master, tuple(sorted(options.items())))
    with _lock:
        ds = _datasets.get(key)
    if ds is None:
        ds = client(master, **options).dataset(name)
        with _lock:
            ds = _datasets.setdefault(key, ds)
    return ds


def split_uri(uri):
    """``shoal://DATASET/PATH`` (or ``DATASET/PATH``) -> ``(DATASET, "/PATH")``."""
    rest = uri[len("shoal://"):] if uri.startswith("shoal://") else uri.lstrip("/")
    name, _, path = rest.partition("/")
    if not name:
        raise ValueError(f"{uri!r} names no dataset (expected shoal://DATASET/PATH)")
    return name, "/" + path
