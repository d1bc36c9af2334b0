//! The client's copy of a dataset's namespace: every inode and each directory's
//! children sorted by name, loaded from the master in one bulk stream at mount.
//! `lookup`, `getattr` and `readdir` are answered from here without a round trip;
//! dataset files are immutable between syncs, so the kernel may cache them long.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use shoal_proto::master::{FileKind, Inode};

pub const ROOT: u64 = 1;

/// One entry, shaped for answering FUSE calls.
#[derive(Debug, Clone)]
pub struct Node {
    pub inode: Inode,
    /// Children (directories only), sorted by name.
    pub children: Vec<(Arc<str>, u64)>,
}

impl Node {
    pub fn is_dir(&self) -> bool {
        self.inode.kind == FileKind::Directory as i32
    }

    pub fn mtime(&self) -> SystemTime {
        let i = &self.inode;
        if i.mtime_sec >= 0 {
            UNIX_EPOCH + Duration::new(i.mtime_sec as u64, i.mtime_nsec.min(999_999_999))
        } else {
            UNIX_EPOCH
        }
    }
}

/// An immutable snapshot of a dataset's namespace.
#[derive(Debug, Default)]
pub struct Namespace {
    nodes: HashMap<u64, Node>,
    pub files: u64,
    pub bytes: u64,
}

impl Namespace {
    /// Build from a bulk listing (any order). Entries whose parent is missing are
    /// dropped (they cannot be reached).
    pub fn build(entries: Vec<Inode>) -> Namespace {
        let mut nodes: HashMap<u64, Node> = HashMap::with_capacity(entries.len() + 1);
        let mut edges = Vec::with_capacity(entries.len());
        let (mut files, mut bytes) = (0, 0);
        for inode in entries {
            if inode.ino != ROOT {
                edges.push((inode.parent, Arc::<str>::from(inode.name.as_str()), inode.ino));
            }
            if inode.kind == FileKind::File as i32 {
                files += 1;
                bytes += inode.size;
            }
            nodes.insert(inode.ino, Node { inode, children: Vec::new() });
        }
        nodes.entry(ROOT).or_insert_with(|| Node {
            inode: Inode { ino: ROOT, parent: ROOT, kind: FileKind::Directory as i32, ..Default::default() },
            children: Vec::new(),
        });
        for (parent, name, ino) in edges {
            if let Some(p) = nodes.get_mut(&parent) {
                p.children.push((name, ino));
            }
        }
        for n in nodes.values_mut() {
            n.children.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        }
        Namespace { nodes, files, bytes }
    }

    pub fn get(&self, ino: u64) -> Option<&Node> {
        self.nodes.get(&ino)
    }

    pub fn lookup(&self, parent: u64, name: &str) -> Option<&Node> {
        let p = self.nodes.get(&parent)?;
        let i = p.children.binary_search_by(|(n, _)| (**n).cmp(name)).ok()?;
        self.nodes.get(&p.children[i].1)
    }

    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values()
    }

    /// What the kernel must forget when `self` replaces `old`: directory entries
    /// (parent, name) that appeared or vanished, and inodes whose attributes or
    /// content changed (including directories whose children changed).
    pub fn changes_since(&self, old: &Namespace) -> (Vec<(u64, String)>, Vec<u64>) {
        let mut entries = Vec::new();
        let mut inodes = std::collections::BTreeSet::new();
        for o in old.nodes() {
            let i = &o.inode;
            match self.get(i.ino) {
                None => {
                    entries.push((i.parent, i.name.clone()));
                    inodes.insert(i.parent);
                }
                Some(n) => {
                    let j = &n.inode;
                    if (j.kind, j.size, j.mtime_sec, j.mtime_nsec, j.file_id)
                        != (i.kind, i.size, i.mtime_sec, i.mtime_nsec, i.file_id)
                    {
                        inodes.insert(i.ino);
                    }
                }
            }
        }
        for n in self.nodes() {
            if old.get(n.inode.ino).is_none() && n.inode.ino != ROOT {
                entries.push((n.inode.parent, n.inode.name.clone()));
                inodes.insert(n.inode.parent);
            }
        }
        (entries, inodes.into_iter().collect())
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(ino: u64, parent: u64, name: &str, dir: bool, size: u64) -> Inode {
        Inode {
            ino,
            parent,
            name: name.into(),
            kind: if dir { FileKind::Directory as i32 } else { FileKind::File as i32 },
            size,
            ..Default::default()
        }
    }

    #[test]
    fn builds_sorted_tree_from_any_order() {
        let ns = Namespace::build(vec![
            node(5, 3, "z", false, 7),
            node(3, ROOT, "d", true, 0),
            node(4, 3, "a", false, 1),
            node(ROOT, ROOT, "", true, 0),
            node(9, 77, "orphan", false, 1),
        ]);
        assert_eq!(ns.lookup(ROOT, "d").unwrap().inode.ino, 3);
        assert_eq!(ns.lookup(3, "z").unwrap().inode.size, 7);
        assert!(ns.lookup(3, "y").is_none());
        let names: Vec<_> = ns.get(3).unwrap().children.iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(names, ["a", "z"]);
        assert_eq!((ns.files, ns.bytes), (3, 9));
    }
}
