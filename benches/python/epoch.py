"""One benchmark epoch of a Python data loader; prints one JSON line per epoch:
{"files", "bytes", "secs", "complete"}.

  epoch.py SOURCE [--loader dataloader|threads] [--workers 8] [--order]
           [--epochs 1] [--seed 1] [--max-secs 25]

SOURCE is `dir:PATH` (a local copy or a mount: torchvision's ImageFolder) or
`shoal:DATASET:/PATH` (the shoal Python client: shoal.torch.ImageFolder).
Every file is read as PIL reads it (a buffered open() and read()); nothing is
decoded, so the numbers are the file system's, not the JPEG decoder's.
`--order` gives the epoch's order to shoal ahead of time (OrderedSampler).
"""
import argparse
import json
import os
import random
import threading
import time

import torch
import torchvision
from torch.utils.data import DataLoader, RandomSampler

import shoal
import shoal.torch as st


def raw(path):
    with open(path, "rb") as f:
        return len(f.read())


def main():
    p = argparse.ArgumentParser()
    p.add_argument("source")
    p.add_argument("--loader", default="dataloader", choices=["dataloader", "threads"])
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--order", action="store_true")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--max-secs", type=float, default=25.0)
    a = p.parse_args()

    kind, _, rest = a.source.partition(":")
    if kind == "dir":
        folder = torchvision.datasets.ImageFolder(rest, loader=raw)
        paths = [f for f, _ in folder.samples]
        read_one = raw
    elif kind == "shoal":
        name, _, root = rest.partition(":")
        folder = st.ImageFolder(name, root or "/", loader=len)
        paths = folder.paths
        ds = shoal.open_dataset(name)
        read_one = lambda p: len(ds.read(p))
    else:
        raise SystemExit(f"unknown source {a.source!r}")

    for epoch in range(a.epochs):
        g = torch.Generator()
        g.manual_seed(a.seed + epoch)
        order = RandomSampler(folder, generator=g)
        if a.order:
            if kind == "shoal":
                order = st.OrderedSampler(order, folder.paths, name)
            else:
                order = st.OrderedSampler.for_mount(order, paths, mount_root(rest))
        files = nbytes = 0
        start = time.time()
        complete = True
        if a.loader == "dataloader":
            dl = DataLoader(folder, batch_size=32, sampler=order, num_workers=a.workers, collate_fn=lambda b: b)
            for batch in dl:
                files += len(batch)
                nbytes += sum(n for n, _ in batch)
                if time.time() - start > a.max_secs:
                    complete = False
                    break
        else:
            idx = list(order)
            lock = threading.Lock()
            pos = [0]
            totals = [0, 0]

            def work():
                while True:
                    with lock:
                        if pos[0] >= len(idx) or time.time() - start > a.max_secs:
                            return
                        i = idx[pos[0]]
                        pos[0] += 1
                    n = read_one(paths[i])
                    with lock:
                        totals[0] += 1
                        totals[1] += n

            ts = [threading.Thread(target=work) for _ in range(a.workers)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            files, nbytes = totals
            complete = files == len(idx)
        secs = time.time() - start
        print(json.dumps({"files": files, "bytes": nbytes, "secs": secs, "complete": complete}), flush=True)


def mount_root(path):
    """The shoal mount a directory is in (for OrderedSampler.for_mount)."""
    path = os.path.realpath(path)
    while not os.path.ismount(path):
        path = os.path.dirname(path)
    return path


if __name__ == "__main__":
    main()
