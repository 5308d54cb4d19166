//! Everything generated gateway code uses, in one import
//! (`use blitz_runtime::prelude::*;`), so generated files stay short and a
//! runtime refactor changes one list instead of every generated crate.

pub use crate::app::GatewayConfig;
pub use crate::http::{RequestHead, ResponseHead};
pub use crate::lb::{
    Balance, HashKey, HealthCheck, PoolConfig, RetryPolicy, Server, ServerTls, Upstream,
};
pub use crate::route::{
    MAX_HOST, first_segment, has_prefix, header_is, header_present, host_has_suffix, host_lower,
    query_is, query_present,
};
pub use crate::rt::{CertConfig, TlsConfig};
pub use crate::{Action, Gateway, Limits, ListenerConfig, Protocols};
pub use std::borrow::Cow;
pub use std::net::SocketAddr;
pub use std::sync::LazyLock;
pub use std::time::Duration;

#[cfg(feature = "regex")]
pub use regex::Regex;
