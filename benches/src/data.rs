//! The peer benchmark's datasets, generated deterministically from a seed into the
//! directory the benchmark's S3 server serves: (a) image-like, many files of
//! 64–256 KiB spread over directories, and (b) shard-like, a few large files. The
//! same directory is the "local copy" every mount is compared with.
//!
//! Each object also gets the server's metadata file holding its MD5 ETag, as if it
//! had been uploaded, so the server never hashes a whole object to answer a read.
//! Each directory gets the metadata of a directory marker object (`images/`, mode
//! `040755`), which is what clients that `HEAD` a directory's key (s3fs) expect;
//! without it the server answers them with an error instead of a directory.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use base64::Engine;
use md5::Digest;

use crate::remote::BUCKET;

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    pub seed: u64,
    pub images: usize,
    pub image_dirs: usize,
    pub shards: usize,
    pub shard_size: u64,
}

impl Spec {
    /// The issue's sizes (20,000 images in 200 directories, 8 shards of 512 MiB)
    /// times `scale`.
    pub fn scaled(seed: u64, scale: f64) -> Spec {
        let images = ((20_000.0 * scale) as usize).max(10);
        Spec {
            seed,
            images,
            image_dirs: ((200.0 * scale) as usize).clamp(1, images),
            shards: 8,
            shard_size: (((512u64 << 20) as f64 * scale) as u64).max(8 << 20) & !0xFFFF,
        }
    }

    fn marker(&self) -> String {
        format!(".complete-v2-{}-{}-{}-{}-{}", self.seed, self.images, self.image_dirs, self.shards, self.shard_size)
    }
}

/// One object: its key in the bucket and its size.
#[derive(Debug, Clone)]
pub struct Object {
    pub key: String,
    pub size: u64,
}

/// A generated dataset.
#[derive(Debug)]
pub struct Dataset {
    /// Served by the S3 server; its `bench/` directory is the bucket.
    pub store_root: PathBuf,
    pub images: Vec<Object>,
    pub shards: Vec<Object>,
}

impl Dataset {
    /// The local copy: the bucket's directory.
    pub fn local(&self) -> PathBuf {
        self.store_root.join(BUCKET)
    }

    pub fn bytes(objects: &[Object]) -> u64 {
        objects.iter().map(|o| o.size).sum()
    }
}

fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d049bb133111eb);
    x ^ (x >> 31)
}

/// The object list of `spec`, without touching the disk.
pub fn objects(spec: &Spec) -> (Vec<Object>, Vec<Object>) {
    let images = (0..spec.images)
        .map(|i| Object {
            key: format!("images/d{:03}/img{i:06}.jpg", i % spec.image_dirs),
            size: (64 << 10) + mix(spec.seed ^ i as u64) % ((192 << 10) + 1),
        })
        .collect();
    let shards =
        (0..spec.shards).map(|i| Object { key: format!("shards/shard-{i:02}.bin"), size: spec.shard_size }).collect();
    (images, shards)
}

/// Generate `spec` under `base` unless an identical generation is already there.
pub fn generate(base: &Path, spec: &Spec) -> Result<Dataset> {
    let store_root = base.join("store");
    let (images, shards) = objects(spec);
    let ds = Dataset { store_root: store_root.clone(), images, shards };
    if store_root.join(spec.marker()).exists() {
        return Ok(ds);
    }
    let _ = std::fs::remove_dir_all(&store_root);
    std::fs::create_dir_all(store_root.join(BUCKET)).context("creating the store directory")?;
    let all: Vec<(u64, &Object)> =
        ds.images.iter().chain(&ds.shards).enumerate().map(|(i, o)| (spec.seed.wrapping_add(i as u64), o)).collect();
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (all, root) = (&all, &store_root);
                s.spawn(move || -> Result<()> {
                    for (seed, o) in all.iter().skip(t).step_by(threads) {
                        write_object(root, o, *seed)?;
                    }
                    Ok(())
                })
            })
            .collect();
        handles.into_iter().try_for_each(|h| h.join().expect("generator thread panicked"))
    })?;
    let mut dirs: Vec<&str> =
        ds.images.iter().chain(&ds.shards).filter_map(|o| o.key.rsplit_once('/').map(|d| d.0)).collect();
    dirs.push("images");
    dirs.sort_unstable();
    dirs.dedup();
    for d in dirs {
        write_dir_marker(&store_root, d)?;
    }
    std::fs::write(store_root.join(spec.marker()), b"")?;
    Ok(ds)
}

/// The bytes of an object: 1 MiB of seeded data repeated with a per-MiB twist, so
/// no two MiB of a shard are equal and large objects are cheap to make.
pub fn object_bytes(seed: u64, size: u64, mut sink: impl FnMut(&[u8]) -> Result<()>) -> Result<()> {
    let unit = crate::content(seed, (1 << 20).min(size as usize));
    let mut buf = unit.clone();
    let mut off = 0u64;
    let mut n = 0u64;
    while off < size {
        let len = (size - off).min(unit.len() as u64) as usize;
        buf[..8.min(len)].copy_from_slice(&n.to_le_bytes()[..8.min(len)]);
        sink(&buf[..len])?;
        off += len as u64;
        n += 1;
    }
    Ok(())
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

/// The server-side attributes of `key`: its ETag, and optionally its metadata.
fn write_attributes(root: &Path, key: &str, etag: &str, metadata: Option<&str>) -> Result<()> {
    let stem = format!(".bucket-{}.object-{}", b64(BUCKET), b64(key));
    std::fs::write(root.join(format!("{stem}.internal.json")), format!("{{\"e_tag\":\"{etag}\"}}"))?;
    if let Some(m) = metadata {
        std::fs::write(root.join(format!("{stem}.metadata.json")), m)?;
    }
    Ok(())
}

pub fn write_dir_marker(root: &Path, dir: &str) -> Result<()> {
    const EMPTY_MD5: &str = "d41d8cd98f00b204e9800998ecf8427e";
    let meta = r#"{"user_metadata":{"mode":"16877"},"content_type":"application/x-directory"}"#;
    write_attributes(root, dir, EMPTY_MD5, Some(meta))?;
    write_attributes(root, &format!("{dir}/"), EMPTY_MD5, Some(meta))
}

fn write_object(root: &Path, o: &Object, seed: u64) -> Result<()> {
    let path = root.join(BUCKET).join(&o.key);
    std::fs::create_dir_all(path.parent().expect("object keys have a directory"))?;
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&path)?);
    let mut md5 = md5::Md5::new();
    object_bytes(seed, o.size, |b| {
        md5.update(b);
        f.write_all(b)?;
        Ok(())
    })?;
    f.flush()?;
    // s3s-fs keeps an object's ETag in `.bucket-B64.object-B64.internal.json` at its root.
    write_attributes(root, &o.key, &hex::encode(md5.finalize()), None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_scales_and_objects_are_deterministic() {
        let full = Spec::scaled(1, 1.0);
        assert_eq!((full.images, full.image_dirs, full.shards, full.shard_size), (20_000, 200, 8, 512 << 20));
        let (a, s) = objects(&full);
        assert!(a.iter().all(|o| (64 << 10..=256 << 10).contains(&o.size)));
        assert_eq!(a[250].key, "images/d050/img000250.jpg");
        assert_eq!(s.len(), 8);
        let (b, _) = objects(&full);
        assert!(a.iter().zip(&b).all(|(x, y)| x.size == y.size));
        let (c, _) = objects(&Spec { seed: 2, ..full });
        assert!(a.iter().zip(&c).any(|(x, y)| x.size != y.size), "the seed must change the sizes");
    }

    #[test]
    fn generated_files_match_the_object_list_and_carry_their_md5() {
        let dir = tempfile::tempdir().unwrap();
        let spec = Spec { seed: 9, images: 12, image_dirs: 3, shards: 2, shard_size: (3 << 20) + 5 };
        let ds = generate(dir.path(), &spec).unwrap();
        for o in ds.images.iter().chain(&ds.shards) {
            let data = std::fs::read(ds.local().join(&o.key)).unwrap();
            assert_eq!(data.len() as u64, o.size, "{}", o.key);
            let info = ds.store_root.join(format!(".bucket-{}.object-{}.internal.json", b64(BUCKET), b64(&o.key)));
            let want = format!("{{\"e_tag\":\"{}\"}}", hex::encode(md5::Md5::digest(&data)));
            assert_eq!(std::fs::read_to_string(info).unwrap(), want);
        }
        let s0 = std::fs::read(ds.local().join(&ds.shards[0].key)).unwrap();
        assert_ne!(s0[..1 << 20], s0[1 << 20..2 << 20], "MiB units of a shard must differ");
        // A second call with the same spec keeps the files.
        let before = std::fs::metadata(ds.local().join(&ds.images[0].key)).unwrap().modified().unwrap();
        generate(dir.path(), &spec).unwrap();
        assert_eq!(std::fs::metadata(ds.local().join(&ds.images[0].key)).unwrap().modified().unwrap(), before);
    }
}
