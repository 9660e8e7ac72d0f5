//! Arbitrary bytes as a TOML document: its `policy` key (or, failing that, the whole
//! document) goes to `Policy::parse`. Nothing may panic.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // `policy = ...` as in a route table, so that inline arrays and tables are reached.
    if let Ok(table) = text.parse::<toml::Table>() {
        match table.get("policy") {
            Some(policy) => common::check(policy),
            None => common::check(&toml::Value::Table(table)),
        }
    }
    // The text as the value of `policy`, the way a route writes it.
    if let Ok(table) = format!("policy = {text}").parse::<toml::Table>() {
        if let Some(policy) = table.get("policy") {
            common::check(policy);
        }
    }
});
