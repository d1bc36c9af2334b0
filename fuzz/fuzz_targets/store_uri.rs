//! Store URIs and options: any input parses or is refused with an error, and a
//! parsed store never names a path that climbs out of its root; a redacted copy
//! of the options never shows a secret. The same text as a credentials table
//! parses or is refused with an error that never contains a token.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use shoal_core::StoreSpec;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut lines = text.split('\n');
    let uri = lines.next().unwrap_or_default();
    let options: BTreeMap<String, String> =
        lines.filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect();
    if let Ok(spec) = StoreSpec::parse(uri, &options) {
        for key in ["root", "bucket", "container"] {
            if let Some(v) = spec.config.get(key) {
                assert!(!v.split('/').any(|c| c == ".."), "{key} {v:?} climbs out (uri {uri:?})");
            }
        }
    }
    for (k, v) in shoal_core::uri::redact(&options) {
        if shoal_core::uri::is_secret_key(&k) {
            assert_eq!(v, shoal_core::uri::REDACTED, "{k} shown");
        }
    }
    if let Err(e) = shoal_proto::auth::parse_tokens(text) {
        // The third field of every line is a token (unless it also appears
        // among the fields the error may name: a role, a namespace).
        let others: Vec<&str> = text.lines().flat_map(|l| l.split_whitespace().take(2)).collect();
        for l in text.lines() {
            let f: Vec<&str> = l.split_whitespace().collect();
            if let [_, _, token] = f[..] {
                if token.len() >= 16 && !others.iter().any(|o| o.contains(token)) {
                    assert!(!e.contains(token), "the error {e:?} shows the token {token:?}");
                }
            }
        }
    }
    let _ = shoal_core::size::parse_size(uri);
    let _ = shoal_core::size::parse_duration(uri);
});
