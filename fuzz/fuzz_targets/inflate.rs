//! Fuzz target: feeds libFuzzer's input to [`shardcast_fuzz::inflate`], which panics on
//! any property violation (see fuzz/src/lib.rs for what is checked).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shardcast_fuzz::inflate(data));
