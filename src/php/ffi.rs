//! bindgen output for csrc/wrapper.h (the shim's API and PHP's version ids).
#![allow(non_upper_case_globals, non_camel_case_types, non_snake_case, dead_code)]
#![allow(clippy::all)]

include!(concat!(env!("OUT_DIR"), "/php_bindings.rs"));
