//! HTTP/2 glue on the `h2` crate shared by the client-facing server and the
//! upstream client: turning a `RecvStream` into a neutral [`Body`] and sending a
//! neutral body on a `SendStream`, both with proper flow control.

pub mod body;

pub use body::{send_body, H2Body, SendError};
