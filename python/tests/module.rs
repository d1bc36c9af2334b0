//! The extension module as Python loads it: staged as the `shoal` package next
//! to its Python sources, imported by Debian's `/usr/bin/python3` (the one with
//! `python3-torch`), and given bad arguments. The end-to-end reads through it
//! are in `cli/tests/python.rs`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The cdylib cargo built beside this test (`target/debug/deps`).
fn native_lib() -> PathBuf {
    let deps = std::env::current_exe().unwrap().parent().unwrap().to_path_buf();
    let lib = deps.join("libshoal_native.so");
    assert!(lib.exists(), "{} is missing: build it with `cargo test --workspace`", lib.display());
    lib
}

/// A directory holding the `shoal` package: its sources and the module.
fn stage(dir: &Path) -> PathBuf {
    let pkg = dir.join("shoal");
    std::fs::create_dir_all(&pkg).unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("shoal");
    for f in std::fs::read_dir(src).unwrap() {
        let f = f.unwrap().path();
        if f.extension().is_some_and(|e| e == "py") {
            std::fs::copy(&f, pkg.join(f.file_name().unwrap())).unwrap();
        }
    }
    std::fs::copy(native_lib(), pkg.join("_native.abi3.so")).unwrap();
    dir.to_path_buf()
}

fn python(path: &Path, code: &str) -> (bool, String, String) {
    let out = Command::new("/usr/bin/python3")
        .args(["-c", code])
        .env("PYTHONPATH", path)
        // Not this crate's folder: its `shoal/` has no extension module.
        .current_dir(path)
        .env_remove("SHOAL_MASTER")
        .output()
        .expect("run /usr/bin/python3 (apt-get install python3)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_module_imports_and_refuses_bad_arguments_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let path = stage(dir.path());
    let (ok, out, err) = python(&path, "import shoal; print(shoal.__version__, shoal.Client().master)");
    assert!(ok, "{err}");
    assert_eq!(out.trim(), format!("{} 127.0.0.1:7700", env!("CARGO_PKG_VERSION")));

    // Each bad input is one clear Python exception, checked by type and message.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let code = format!(
        r#"
import shoal
def fails(f, kind, text):
    try:
        f()
    except kind as e:
        assert text in str(e), (kind, str(e))
    else:
        raise AssertionError(f"no {{kind}}")
fails(lambda: shoal.Client(cache_size="lots"), ValueError, "lots")
fails(lambda: shoal.Client(refresh_interval=-1), ValueError, "refresh_interval")
fails(lambda: shoal.Client("not a host").dataset("d"), ValueError, "invalid master address")
# Nothing listens on this port: a connection error, not a hang or a crash.
fails(lambda: shoal.Client("127.0.0.1:{port}").dataset("d"), ConnectionError, "master")
fails(lambda: shoal.split_uri("shoal:///x"), ValueError, "names no dataset")
assert shoal.split_uri("shoal://imagenet/train/a.jpg") == ("imagenet", "/train/a.jpg")
assert shoal.split_uri("imagenet") == ("imagenet", "/")
print("ok")
"#
    );
    let (ok, out, err) = python(&path, &code);
    assert!(ok && out.trim() == "ok", "{out}\n{err}");
}

#[test]
fn an_object_made_before_a_fork_refuses_to_serve_the_child() {
    let dir = tempfile::tempdir().unwrap();
    let path = stage(dir.path());
    // The child's copy of the parent's client has no runtime threads: using it
    // raises at once (and dropping it in the child must not hang).
    let code = r#"
import os, shoal
c = shoal.Client()
pid = os.fork()
if pid == 0:
    try:
        c.dataset("d")
    except RuntimeError as e:
        os._exit(0 if "before a fork" in str(e) else 3)
    os._exit(4)
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, status
pid = os.fork()
if pid == 0:
    del c
    import gc; gc.collect()
    os._exit(0)
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, status
print("ok")
"#;
    let (ok, out, err) = python(&path, code);
    assert!(ok && out.trim() == "ok", "{out}\n{err}");
}
