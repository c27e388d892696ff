//! The realtime crate's integration tests, one binary: property tests of
//! the JSON and MessagePack protocols, and the MessagePack codec against
//! the fixtures the npm client checks too. One module per area.

mod fuzz_messagepack;
mod fuzz_protocol;
mod messagepack_fixtures;
mod support;
