//! How a device reaches its server. The crate never opens a socket itself: it hands a request
//! to a [`Transport`] and waits for the answer, so an application that has its own HTTP stack
//! (or runs in a host that forbids threads) brings its own. [`UreqTransport`] (the
//! `ureq-transport` feature, on by default) is a blocking one that needs no async runtime.

/// An answer from the server: its HTTP status and body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

/// The server could not be reached, or the exchange broke off (the device is offline, the
/// connection was cut): nothing is known of what the server did with the request, which is
/// why a sync may be repeated — a replayed push is a no-op.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct Unreachable(pub String);

/// Sends one `POST` of a JSON body with a bearer token and returns the answer, whatever its
/// status. Implementations must bound how long they wait.
pub trait Transport: Send {
    fn post_json(&self, url: &str, token: &str, body: Vec<u8>) -> Result<Answer, Unreachable>;
}

/// A blocking HTTP transport over `ureq` (HTTPS with the `tls` feature).
#[cfg(feature = "ureq-transport")]
pub struct UreqTransport {
    agent: ureq::Agent,
}

#[cfg(feature = "ureq-transport")]
impl UreqTransport {
    /// A transport that gives up on a request after `timeout`.
    pub fn new(timeout: std::time::Duration) -> UreqTransport {
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            // Error statuses are answers too: the caller reads their JSON.
            .http_status_as_error(false)
            .build();
        UreqTransport {
            agent: config.into(),
        }
    }
}

#[cfg(feature = "ureq-transport")]
impl Default for UreqTransport {
    fn default() -> Self {
        UreqTransport::new(std::time::Duration::from_secs(30))
    }
}

#[cfg(feature = "ureq-transport")]
impl Transport for UreqTransport {
    fn post_json(&self, url: &str, token: &str, body: Vec<u8>) -> Result<Answer, Unreachable> {
        let mut resp = self
            .agent
            .post(url)
            .header("Authorization", &format!("Bearer {token}"))
            .header("Content-Type", "application/json")
            .send(&body[..])
            .map_err(|e| Unreachable(format!("{url}: {e}")))?;
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .with_config()
            .limit(1 << 30)
            .read_to_vec()
            .map_err(|e| Unreachable(format!("{url}: reading the answer: {e}")))?;
        Ok(Answer { status, body })
    }
}
