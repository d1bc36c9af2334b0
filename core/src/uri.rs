//! Store URIs: `s3://bucket/prefix`, `gs://`, `oss://`, `azblob://container/prefix`,
//! `hdfs://` / `webhdfs://namenode:port/path`, `file:///abs/path`, `http(s)://host/prefix`.
//!
//! A URI plus a user's options becomes a [`StoreSpec`]: the OpenDAL service name and
//! its config map, under OpenDAL's own key names (`endpoint`, `region`,
//! `access_key_id`, …). Options may also come from a `credentials_file` (lines of
//! `key=value`); S3, GCS and Azure credentials are also read from the environment by
//! OpenDAL. This module only parses: it never touches the network.

use std::collections::BTreeMap;

use percent_encoding::percent_decode_str;

use crate::CoreError;

/// Option handled by shoal itself: a file of `key=value` lines merged into the options.
pub const CREDENTIALS_FILE_OPTION: &str = "credentials_file";

/// A parsed store location, ready for OpenDAL.
#[derive(Clone, PartialEq, Eq)]
pub struct StoreSpec {
    /// The URI as the user gave it.
    pub uri: String,
    /// OpenDAL service scheme (`s3`, `gcs`, `oss`, `azblob`, `webhdfs`, `fs`, `http`).
    pub service: &'static str,
    /// OpenDAL config for that service.
    pub config: BTreeMap<String, String>,
}

impl std::fmt::Debug for StoreSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreSpec")
            .field("uri", &self.uri)
            .field("service", &self.service)
            .field("config", &redact(&self.config))
            .finish()
    }
}

/// Whether an option's value is a secret that must not be shown.
pub fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["secret", "password", "token", "credential", "sas", "account_key", "access_key_id"].iter().any(|s| k.contains(s))
}

/// A copy of an options map with secret values replaced by `***`.
pub fn redact(options: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    options.iter().map(|(k, v)| (k.clone(), if is_secret_key(k) { "***".to_string() } else { v.clone() })).collect()
}

fn env_any(keys: &[&str]) -> bool {
    keys.iter().any(|k| std::env::var_os(k).is_some_and(|v| !v.is_empty()))
}

impl StoreSpec {
    /// Parse `uri` with `options` (OpenDAL keys, plus `credentials_file`).
    pub fn parse(uri: &str, options: &BTreeMap<String, String>) -> Result<Self, CoreError> {
        let invalid = |reason: &str| CoreError::InvalidUri { uri: uri.into(), reason: reason.into() };
        if uri.contains('\0') {
            return Err(invalid("contains NUL"));
        }
        let mut config = BTreeMap::new();
        for (k, v) in options {
            if k.is_empty() || !k.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
                return Err(CoreError::InvalidOption {
                    key: k.clone(),
                    reason: "option keys are OpenDAL config names: lowercase letters, digits and '_'".into(),
                });
            }
            if k == CREDENTIALS_FILE_OPTION {
                for (fk, fv) in read_credentials_file(v)? {
                    config.entry(fk).or_insert(fv);
                }
                continue;
            }
            config.insert(k.clone(), v.clone());
        }

        // A bare absolute path is a local directory.
        if uri.starts_with('/') {
            return Self::parse(&format!("file://{uri}"), options);
        }
        let Some((scheme, _)) = uri.split_once("://") else {
            return Err(invalid("expected SCHEME://..., e.g. s3://bucket/prefix or file:///data"));
        };
        let scheme = scheme.to_ascii_lowercase();
        // Checked on the raw text: URL parsing would silently resolve `a/../b`.
        if uri.split(['/', '?', '#']).any(|c| percent_decode_str(c).decode_utf8().is_ok_and(|c| c == "..")) {
            return Err(invalid("path contains '..'"));
        }
        let parsed = url::Url::parse(uri).map_err(|e| invalid(&e.to_string()))?;
        let host = parsed.host_str().unwrap_or("").to_string();
        let path =
            percent_decode_str(parsed.path()).decode_utf8().map_err(|_| invalid("path is not UTF-8"))?.to_string();
        if path.split('/').any(|c| c == "..") {
            return Err(invalid("path contains '..'"));
        }
        let root = if path.is_empty() { "/".to_string() } else { path.clone() };
        let missing = |service: &'static str, option: &'static str, hint: &'static str| CoreError::MissingOption {
            uri: uri.into(),
            scheme: service,
            option,
            hint,
        };
        let need_bucket = |what: &str| {
            if host.is_empty() {
                Err(invalid(&format!("missing {what}: expected {scheme}://{what}/prefix")))
            } else {
                Ok(())
            }
        };

        let service: &'static str = match scheme.as_str() {
            "s3" => {
                need_bucket("bucket")?;
                config.insert("bucket".into(), host.clone());
                if !config.contains_key("region") && !env_any(&["AWS_REGION", "AWS_DEFAULT_REGION"]) {
                    if config.contains_key("endpoint") || env_any(&["AWS_ENDPOINT_URL"]) {
                        // S3-compatible servers (MinIO, Ceph, …) accept any region.
                        config.insert("region".into(), "us-east-1".into());
                    } else {
                        return Err(missing("s3", "region", "pass --option region=REGION or set AWS_REGION"));
                    }
                }
                "s3"
            }
            "gs" | "gcs" => {
                need_bucket("bucket")?;
                config.insert("bucket".into(), host.clone());
                "gcs"
            }
            "oss" => {
                need_bucket("bucket")?;
                config.insert("bucket".into(), host.clone());
                if !config.contains_key("endpoint") {
                    return Err(missing("oss", "endpoint", "pass --option endpoint=https://oss-REGION.aliyuncs.com"));
                }
                "oss"
            }
            "azblob" => {
                need_bucket("container")?;
                config.insert("container".into(), host.clone());
                if !config.contains_key("endpoint") {
                    match config.get("account_name") {
                        Some(acct) => {
                            let ep = format!("https://{acct}.blob.core.windows.net");
                            config.insert("endpoint".into(), ep);
                        }
                        None if env_any(&["AZBLOB_ENDPOINT", "AZURE_STORAGE_ACCOUNT_NAME"]) => {}
                        None => {
                            return Err(missing(
                                "azblob",
                                "account_name",
                                "pass --option account_name=ACCOUNT (or endpoint=URL)",
                            ))
                        }
                    }
                }
                "azblob"
            }
            "hdfs" | "webhdfs" => {
                need_bucket("namenode")?;
                if !config.contains_key("endpoint") {
                    // hdfs:// names the namenode; shoal talks to it over WebHDFS, by
                    // default on the namenode's HTTP port.
                    let port = match (scheme.as_str(), parsed.port()) {
                        ("webhdfs", Some(p)) => p,
                        _ => 9870,
                    };
                    config.insert("endpoint".into(), format!("http://{host}:{port}"));
                }
                "webhdfs"
            }
            "file" => {
                if !host.is_empty() {
                    return Err(invalid("file URIs must be absolute: file:///path/to/dir"));
                }
                if path.is_empty() || path == "/" {
                    return Err(invalid("refusing to use the whole filesystem as a dataset"));
                }
                "fs"
            }
            "http" | "https" => {
                need_bucket("host")?;
                let port = parsed.port().map(|p| format!(":{p}")).unwrap_or_default();
                config.insert("endpoint".into(), format!("{scheme}://{host}{port}"));
                "http"
            }
            _ => return Err(CoreError::UnknownScheme { uri: uri.into(), scheme }),
        };
        let mut root = root;
        if !root.ends_with('/') {
            root.push('/');
        }
        config.insert("root".into(), root);
        Ok(StoreSpec { uri: uri.into(), service, config })
    }
}

fn read_credentials_file(path: &str) -> Result<Vec<(String, String)>, CoreError> {
    let bad = |reason: String| CoreError::InvalidOption { key: CREDENTIALS_FILE_OPTION.into(), reason };
    let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read {path:?}: {e}")))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(bad(format!("{path}:{}: expected key=value", n + 1)));
        };
        out.push((k.trim().to_string(), v.trim().to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn s3() {
        let s = StoreSpec::parse("s3://bkt/some/prefix", &opts(&[("region", "eu-west-1")])).unwrap();
        assert_eq!(s.service, "s3");
        assert_eq!(s.config["bucket"], "bkt");
        assert_eq!(s.config["root"], "/some/prefix/");
        let s = StoreSpec::parse("s3://bkt", &opts(&[("endpoint", "http://127.0.0.1:9000")])).unwrap();
        assert_eq!(s.config["region"], "us-east-1");
        assert_eq!(s.config["root"], "/");
    }

    #[test]
    fn other_schemes() {
        assert_eq!(StoreSpec::parse("gs://b/p", &opts(&[])).unwrap().service, "gcs");
        assert_eq!(StoreSpec::parse("oss://b/p", &opts(&[("endpoint", "x")])).unwrap().service, "oss");
        let az = StoreSpec::parse("azblob://c/p", &opts(&[("account_name", "acct")])).unwrap();
        assert_eq!(az.config["endpoint"], "https://acct.blob.core.windows.net");
        let h = StoreSpec::parse("hdfs://nn/data", &opts(&[])).unwrap();
        assert_eq!((h.service, h.config["endpoint"].as_str()), ("webhdfs", "http://nn:9870"));
        let w = StoreSpec::parse("webhdfs://nn:50070/data", &opts(&[])).unwrap();
        assert_eq!(w.config["endpoint"], "http://nn:50070");
        let f = StoreSpec::parse("file:///data/set%20one", &opts(&[])).unwrap();
        assert_eq!((f.service, f.config["root"].as_str()), ("fs", "/data/set one/"));
        assert_eq!(StoreSpec::parse("/data/x", &opts(&[])).unwrap().service, "fs");
        let h = StoreSpec::parse("https://example.com:8443/ds", &opts(&[])).unwrap();
        assert_eq!(h.config["endpoint"], "https://example.com:8443");
    }

    #[test]
    fn errors_name_the_problem() {
        let e = StoreSpec::parse("ftpx://b/p", &opts(&[])).unwrap_err();
        assert!(matches!(e, CoreError::UnknownScheme { .. }), "{e}");
        assert!(e.to_string().contains("ftpx"));
        let e = StoreSpec::parse("s3:///prefix", &opts(&[("region", "r")])).unwrap_err();
        assert!(e.to_string().contains("missing bucket"), "{e}");
        let e = StoreSpec::parse("oss://b/p", &opts(&[])).unwrap_err();
        assert!(e.to_string().contains("endpoint"), "{e}");
        assert!(StoreSpec::parse("file://rel/path", &opts(&[])).is_err());
        assert!(StoreSpec::parse("file:///", &opts(&[])).is_err());
        assert!(StoreSpec::parse("file:///a/../etc", &opts(&[])).is_err());
        assert!(StoreSpec::parse("no-scheme", &opts(&[])).is_err());
        assert!(StoreSpec::parse("s3://b/p", &opts(&[("Bad-Key", "v")])).is_err());
        assert!(StoreSpec::parse("file:///a\0b", &opts(&[])).is_err());
    }

    #[test]
    fn credentials_file_and_redaction() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("creds");
        std::fs::write(&f, "# comment\naccess_key_id = AK\nsecret_access_key=SK\n").unwrap();
        let s =
            StoreSpec::parse("s3://b", &opts(&[("region", "r"), ("credentials_file", f.to_str().unwrap())])).unwrap();
        assert_eq!(s.config["secret_access_key"], "SK");
        let shown = format!("{s:?}");
        assert!(!shown.contains("SK") && !shown.contains("AK"), "{shown}");
        let e = StoreSpec::parse("s3://b", &opts(&[("region", "r"), ("credentials_file", "/nonexistent/x")]));
        assert!(e.unwrap_err().to_string().contains("/nonexistent/x"));
    }
}
