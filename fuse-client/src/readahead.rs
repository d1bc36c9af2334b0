//! Read patterns, as the mount sees them. Per file: a read from its start or
//! where its last read ended is sequential, and the blocks fetched ahead of it
//! double up to [`MAX_WINDOW`]; a read elsewhere is random, and fetches nothing
//! ahead (its neighbours are no likelier than any other block). Kept per inode
//! (opens make no round trip, so there is no handle to hang it on); beyond
//! [`MAX_FILES`] files the table starts over. Per directory: the cold reads of
//! small files that decide when the rest of it is prefetched ([`ColdReads`]).

use std::collections::HashMap;
use std::sync::Mutex;

use crate::reader::Access;

/// Readahead window limit, in blocks.
pub const MAX_WINDOW: u32 = 8;
/// Files whose read state is kept.
pub const MAX_FILES: usize = 65536;

#[derive(Debug)]
struct File {
    next_offset: u64,
    window: u32,
}

#[derive(Debug, Default)]
pub struct Readahead(Mutex<HashMap<u64, File>>);

impl Readahead {
    /// Note a read of `[offset, end)` of inode `ino`: how it follows the last
    /// one, and how many blocks past its end to fetch ahead.
    pub fn on_read(&self, ino: u64, offset: u64, end: u64) -> (Access, u32) {
        let mut files = self.0.lock().expect("readahead lock");
        if files.len() >= MAX_FILES && !files.contains_key(&ino) {
            files.clear();
        }
        let f = files.entry(ino).or_insert(File { next_offset: 0, window: 0 });
        let (access, window) = if offset == f.next_offset && offset > 0 {
            (Access::Sequential, (f.window * 2).clamp(1, MAX_WINDOW))
        } else if offset == 0 {
            (Access::Sequential, 1)
        } else {
            (Access::Random, 0)
        };
        (f.next_offset, f.window) = (end, window);
        (access, window)
    }
}

/// Cold small-file reads per directory: the `threshold`-th starts the
/// directory's prefetch, once (0: never).
#[derive(Debug)]
pub struct ColdReads {
    threshold: u32,
    /// Reads so far by directory inode; `u32::MAX` once its prefetch started.
    dirs: Mutex<HashMap<u64, u32>>,
}

impl ColdReads {
    pub fn new(threshold: u32) -> ColdReads {
        ColdReads { threshold, dirs: Mutex::default() }
    }

    pub fn enabled(&self) -> bool {
        self.threshold > 0
    }

    /// Count a cold read in directory `dir`; true if its prefetch starts now.
    pub fn note(&self, dir: u64) -> bool {
        if self.threshold == 0 {
            return false;
        }
        let mut dirs = self.dirs.lock().expect("cold reads lock");
        if dirs.len() >= MAX_FILES && !dirs.contains_key(&dir) {
            // Forget the counts, not which directories were prefetched.
            dirs.retain(|_, n| *n == u32::MAX);
        }
        let n = dirs.entry(dir).or_insert(0);
        if *n == u32::MAX {
            return false;
        }
        *n += 1;
        if *n < self.threshold {
            return false;
        }
        *n = u32::MAX;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_doubles_its_window_and_a_jump_fetches_nothing_ahead() {
        let r = Readahead::default();
        let k = 128 << 10;
        assert_eq!(r.on_read(1, 0, k), (Access::Sequential, 1));
        assert_eq!(r.on_read(1, k, 2 * k), (Access::Sequential, 2));
        assert_eq!(r.on_read(1, 2 * k, 3 * k), (Access::Sequential, 4));
        for i in 3..10 {
            assert_eq!(r.on_read(1, i * k, (i + 1) * k).1, MAX_WINDOW.min(1 << i));
        }
        assert_eq!(r.on_read(1, 50 * k, 51 * k), (Access::Random, 0), "a jump");
        assert_eq!(r.on_read(1, 51 * k, 52 * k), (Access::Sequential, 1), "a stream again from there");
        assert_eq!(r.on_read(2, 7 * k, 8 * k), (Access::Random, 0), "another file has its own state");
        assert_eq!(r.on_read(1, 0, k), (Access::Sequential, 1), "a re-read from the start");
    }

    #[test]
    fn a_directory_is_prefetched_once_at_its_threshold() {
        let c = ColdReads::new(2);
        assert!(!c.note(5), "one cold read is not a pattern");
        assert!(!c.note(6));
        assert!(c.note(5), "the second starts the prefetch");
        assert!(!c.note(5) && !c.note(5), "and only once");
        assert!(c.note(6));
        let off = ColdReads::new(0);
        assert!(!off.enabled() && !off.note(1) && !off.note(1));
    }

    #[test]
    fn the_table_is_bounded() {
        let r = Readahead::default();
        for ino in 0..(MAX_FILES as u64 + 10) {
            r.on_read(ino, 0, 10);
        }
        assert!(r.0.lock().unwrap().len() <= MAX_FILES);
        assert_eq!(r.on_read(MAX_FILES as u64 + 9, 10, 20).0, Access::Sequential, "the newest files are kept");
    }
}
