"""An fsspec filesystem over shoal datasets: ``shoal://DATASET/PATH``.

    import fsspec
    with fsspec.open("shoal://imagenet/train/x.JPEG", "rb") as f:
        data = f.read()

Read-only, like a mount: writes raise ``PermissionError``. Registered as the
``shoal`` protocol (an entry point when installed; importing this module
registers it too). Options: ``master`` (host:port).
"""

import errno

import fsspec
from fsspec.spec import AbstractBufferedFile, AbstractFileSystem

import shoal


class ShoalFileSystem(AbstractFileSystem):
    protocol = "shoal"
    root_marker = ""

    def __init__(self, master=None, **kwargs):
        super().__init__(**kwargs)
        self.master = master

    def _dataset(self, path):
        name, inner = shoal.split_uri(self._strip_protocol(path))
        return shoal.open_dataset(name, self.master), name, inner

    @classmethod
    def _strip_protocol(cls, path):
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        path = path[len("shoal://"):] if path.startswith("shoal://") else path
        return path.strip("/")

    @staticmethod
    def _entry(name, st):
        inner = st["name"].lstrip("/")
        return {
            "name": f"{name}/{inner}" if inner else name,
            "size": st["size"],
            "type": st["type"],
            "mtime": st["mtime"],
        }

    def ls(self, path, detail=True, **kwargs):
        ds, name, inner = self._dataset(path)
        st = ds.stat(inner)
        entries = [self._entry(name, st)] if st["type"] == "file" else [self._entry(name, e) for e in ds.listdir(inner)]
        return entries if detail else [e["name"] for e in entries]

    def info(self, path, **kwargs):
        ds, name, inner = self._dataset(path)
        return self._entry(name, ds.stat(inner))

    def cat_file(self, path, start=None, end=None, **kwargs):
        ds, _, inner = self._dataset(path)
        if start is None and end is None:
            return ds.read(inner)
        size = ds.stat(inner)["size"]
        start = 0 if start is None else (start if start >= 0 else max(size + start, 0))
        end = size if end is None else (end if end >= 0 else max(size + end, 0))
        return ds.read(inner, start, max(end - start, 0))

    def _open(self, path, mode="rb", block_size=None, autocommit=True, cache_options=None, **kwargs):
        if mode != "rb":
            raise PermissionError(errno.EROFS, "shoal datasets are read-only", path)
        return ShoalFile(self, path, mode, block_size=block_size or "default", cache_options=cache_options, **kwargs)

    def _refuse(self, *args, **kwargs):
        raise PermissionError(errno.EROFS, "shoal datasets are read-only")

    mkdir = makedirs = rm = rm_file = rmdir = mv = cp_file = put_file = pipe_file = touch = _refuse


class ShoalFile(AbstractBufferedFile):
    def _fetch_range(self, start, end):
        ds, _, inner = self.fs._dataset(self.path)
        return ds.read(inner, start, max(end - start, 0))


fsspec.register_implementation("shoal", ShoalFileSystem, clobber=True)
