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

/// Every secret config key of the OpenDAL services shoal opens (s3, gcs, oss,
/// azblob, webhdfs, http, fs), serde aliases included: keys, secrets, session,
/// SAS and delegation tokens, customer encryption keys and their digests,
/// credential JSON, role-assumption external ids.
pub const SECRET_KEYS: &[&str] = &[
    "access_key",
    "access_key_id",
    "access_key_secret",
    "account_key",
    "aws_access_key_id",
    "aws_secret_access_key",
    "aws_session_token",
    "aws_sse_customer_key_base64",
    "aws_token",
    "azure_storage_access_key",
    "azure_storage_account_key",
    "azure_storage_master_key",
    "azure_storage_sas_key",
    "azure_storage_sas_token",
    "credential",
    "delegation",
    "encryption_key",
    "encryption_key_sha256",
    "external_id",
    "google_service_account_key",
    "master_key",
    "password",
    "sas_key",
    "sas_token",
    "secret_access_key",
    "security_token",
    "server_side_encryption_customer_key",
    "server_side_encryption_customer_key_md5",
    "service_account_key",
    "session_token",
    "token",
];

/// Every other config key of those services (and shoal's own
/// `credentials_file`, a path): shown as given. A key in neither list is
/// treated as secret.
pub const PUBLIC_KEYS: &[&str] = &[
    "account_name",
    "addressing_style",
    "allow_anonymous",
    "assume_role_duration_seconds",
    "assume_role_session_tags",
    "atomic_write_dir",
    "aws_bucket",
    "aws_bucket_name",
    "aws_checksum_algorithm",
    "aws_endpoint",
    "aws_endpoint_url",
    "aws_profile",
    "aws_region",
    "aws_request_payer",
    "aws_server_side_encryption",
    "aws_sse_kms_key_id",
    "aws_virtual_hosted_style_request",
    "azure_container_name",
    "azure_endpoint",
    "azure_storage_account_name",
    "azure_storage_endpoint",
    "batch_max_operations",
    "bucket",
    "bucket_name",
    "checksum_algorithm",
    "container",
    "container_name",
    "credential_path",
    CREDENTIALS_FILE_OPTION,
    "default_acl",
    "default_storage_class",
    "delete_max_size",
    "disable_config_load",
    "disable_ec2_metadata",
    "disable_list_batch",
    "disable_list_objects_v2",
    "disable_stat_with_override",
    "disable_vm_metadata",
    "disable_write_with_if_match",
    "enable_request_payer",
    "enable_versioning",
    "enable_virtual_host_style",
    "enable_write_with_append",
    "encryption_algorithm",
    "endpoint",
    "endpoint_url",
    "google_application_credentials",
    "google_bucket",
    "google_bucket_name",
    "google_service_account",
    "google_service_account_path",
    "google_skip_signature",
    "oidc_provider_arn",
    "oidc_token_file",
    "predefined_acl",
    "presign_addressing_style",
    "presign_endpoint",
    "profile",
    "region",
    "request_payer",
    "role_arn",
    "role_session_name",
    "root",
    "scope",
    "server_side_encryption",
    "server_side_encryption_aws_kms_key_id",
    "server_side_encryption_customer_algorithm",
    "server_side_encryption_key_id",
    "service_account",
    "service_account_path",
    "skip_signature",
    "sts_endpoint",
    "user_name",
    "username",
    "virtual_hosted_style_request",
];

/// What a redacted secret reads as.
pub const REDACTED: &str = "***";

/// Whether an option's value is a secret that must not be shown: a known
/// secret key, or any key not known to be public (fail closed).
pub fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    SECRET_KEYS.contains(&k.as_str()) || !PUBLIC_KEYS.contains(&k.as_str())
}

/// A copy of an options map with secret values replaced by [`REDACTED`].
pub fn redact(options: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    options.iter().map(|(k, v)| (k.clone(), if is_secret_key(k) { REDACTED.to_string() } else { v.clone() })).collect()
}

/// Options as a client that only sees redacted records can use them: without
/// the redacted values (the store's credentials then come from its environment).
pub fn without_redacted(options: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    options.iter().filter(|(_, v)| v.as_str() != REDACTED).map(|(k, v)| (k.clone(), v.clone())).collect()
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

    #[test]
    fn every_secret_key_is_redacted_and_every_public_one_shown() {
        for k in SECRET_KEYS {
            assert!(is_secret_key(k), "{k}");
            assert!(!PUBLIC_KEYS.contains(k), "{k} is in both lists");
            let m = opts(&[(k, "v4lue")]);
            assert_eq!(redact(&m)[*k], REDACTED, "{k}");
            assert!(without_redacted(&redact(&m)).is_empty(), "{k}");
        }
        for k in PUBLIC_KEYS {
            assert!(!is_secret_key(k), "{k}");
            assert_eq!(redact(&opts(&[(k, "v")]))[*k], "v", "{k}");
        }
        // Keys the old substring rule missed, and an unknown key: redacted.
        for k in ["delegation", "server_side_encryption_customer_key", "encryption_key", "master_key", "some_new_key"] {
            assert!(is_secret_key(k), "{k}");
        }
        assert_eq!(SECRET_KEYS.len(), 31);
    }
}
