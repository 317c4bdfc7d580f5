//! One rtnetlink connection bound to one namespace, and the request/acknowledge exchange.

use std::{io, sync::Arc};

use futures_util::StreamExt as _;
use rtnetlink::{
    Handle,
    packet_core::{NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload},
    packet_route::RouteNetlinkMessage,
};

use crate::{Error, Result};

/// A netlink connection bound to one network namespace: the one its socket was opened in
/// ([`Netlink::current`], or [`crate::Netns::connect`]).
///
/// Clones share the socket; requests from any number of tasks may be in flight at once
/// (join them or use `buffer_unordered` to overlap round trips). The socket closes when the
/// last clone is dropped. While open it keeps its namespace alive.
#[derive(Debug, Clone)]
pub struct Netlink {
    handle: Handle,
    netns: Arc<str>,
}

impl Netlink {
    /// Opens a connection in the calling thread's namespace, called `host` in errors. Must be
    /// called inside a Tokio runtime, which then drives the connection.
    pub fn current() -> Result<Self> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime {
            action: "connect to netns host".to_owned(),
        })?;
        Self::open_here(&runtime, "host")
    }

    /// Opens the socket in the calling thread's namespace and spawns its driver on `runtime`.
    pub(crate) fn open_here(runtime: &tokio::runtime::Handle, netns: &str) -> Result<Self> {
        let _entered = runtime.enter();
        let (connection, handle, _) = rtnetlink::new_connection()
            .map_err(|e| Error::os(format!("open a netlink socket in netns {netns}"), e))?;
        runtime.spawn(connection);
        Ok(Self {
            handle,
            netns: netns.into(),
        })
    }

    /// The namespace this connection is bound to, as named in errors.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// Sends `message` with `flags` (plus `NLM_F_REQUEST | NLM_F_ACK`) and waits for the
    /// acknowledgement.
    pub(crate) async fn ack(
        &self,
        message: RouteNetlinkMessage,
        flags: u16,
        action: impl FnOnce() -> String,
    ) -> Result<()> {
        self.request(message, flags, action).await.map(drop)
    }

    /// Like [`Netlink::ack`], returning the answers that came before the acknowledgement.
    pub(crate) async fn request(
        &self,
        message: RouteNetlinkMessage,
        flags: u16,
        action: impl FnOnce() -> String,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        self.exchange(message, NLM_F_ACK | flags, action).await
    }

    /// Sends a dump request and collects the answers.
    pub(crate) async fn dump(
        &self,
        message: RouteNetlinkMessage,
        action: impl FnOnce() -> String,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        self.exchange(message, NLM_F_DUMP, action).await
    }

    async fn exchange(
        &self,
        message: RouteNetlinkMessage,
        flags: u16,
        action: impl FnOnce() -> String,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        let mut request = NetlinkMessage::from(message);
        request.header.flags = NLM_F_REQUEST | flags;
        let mut answers = match self.handle.clone().request(request) {
            Ok(answers) => answers,
            Err(source) => {
                return Err(Error::Protocol {
                    action: action(),
                    netns: self.netns.to_string(),
                    source,
                });
            }
        };
        let mut messages = Vec::new();
        while let Some(answer) = answers.next().await {
            match answer.payload {
                NetlinkPayload::InnerMessage(message) => messages.push(message),
                NetlinkPayload::Error(error) => {
                    if let Some(code) = error.code {
                        return Err(Error::Kernel {
                            action: action(),
                            netns: self.netns.to_string(),
                            source: io::Error::from_raw_os_error(-code.get()),
                        });
                    }
                }
                NetlinkPayload::Done(_) | NetlinkPayload::Noop => {}
                other => {
                    return Err(self.decode_error(action(), format!("{other:?}")));
                }
            }
        }
        Ok(messages)
    }

    pub(crate) fn decode_error(&self, action: String, detail: String) -> Error {
        Error::Decode {
            action,
            netns: self.netns.to_string(),
            detail,
        }
    }
}
