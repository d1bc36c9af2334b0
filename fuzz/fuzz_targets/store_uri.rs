//! Store URIs and options: any input parses or is refused with an error, and a
//! parsed store never names a path that climbs out of its root.
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
    let _ = shoal_core::size::parse_size(uri);
    let _ = shoal_core::size::parse_duration(uri);
});
