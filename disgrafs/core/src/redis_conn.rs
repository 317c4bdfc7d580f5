//! Connections to Redis-protocol servers (Redis Streams, FalkorDB) that fail fast while the
//! server is down and reconnect by themselves when it is back.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::{Error, Result};

/// How long connecting may take before a request fails as unavailable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// A lazily connecting, self-healing connection to `url`; `response_timeout` bounds every
/// command (a blocking read must finish well within it).
pub(crate) fn connect(url: &str, response_timeout: Duration) -> Result<ConnectionManager> {
    let client = redis::Client::open(url)
        .map_err(|e| Error::Unavailable(format!("bad Redis URL {url:?}: {e}")))?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(response_timeout))
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_millis(500));
    ConnectionManager::new_lazy_with_config(client, config)
        .map_err(|e| Error::Unavailable(format!("connecting to {url}: {e}")))
}

/// The URL without a password, for messages and logs.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://…{}", &url[..scheme], &url[at..]),
        _ => url.to_owned(),
    }
}
