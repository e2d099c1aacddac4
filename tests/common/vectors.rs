//! The protocol's test vectors (proto/vectors/), loaded for the gateway's tests.

/// Loads a vector file from proto/vectors.
pub fn vectors(file: &str) -> serde_json::Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/proto/vectors/");
    serde_json::from_str(&std::fs::read_to_string(format!("{path}{file}")).expect("vector file")).expect("vector JSON")
}

pub fn vector<'a>(set: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    set.as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("vector {name}"))
}

pub fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}
