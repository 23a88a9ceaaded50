//! The rtnetlink connection and the few requests this module sends, with
//! kernel errors turned into [`NetlinkError`]s that name the request.

use std::future::Future;
use std::io;
use std::time::Duration;

use futures_util::StreamExt as _;
use netlink_packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST};
use netlink_packet_route::link::{LinkAttribute, LinkExtentMask, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::{Handle, MulticastGroup};

use super::{Mac, NetlinkError};

/// How long to wait for the kernel's complete answer to one request: it
/// answers rtnetlink requests at once, so silence means trouble, and a
/// control plane must not hang on it.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// Dumps interrupted by concurrent table changes (NLM_F_DUMP_INTR) are
/// retried this many times before the last, possibly inconsistent, one is
/// used anyway.
const DUMP_ATTEMPTS: usize = 3;

/// Longest interface name the kernel accepts (IFNAMSIZ - 1).
const IFNAME_MAX: usize = 15;

/// The kernel's notifications on a multicast connection.
pub(super) type Events =
    futures_channel::mpsc::UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, rtnetlink::sys::SocketAddr)>;

/// A request/response connection to the kernel's rtnetlink.
pub(super) struct Rtnl {
    handle: Handle,
}

impl Rtnl {
    /// Opens the socket (in the calling thread's network namespace) and
    /// spawns the task that drives it on the current tokio runtime; the task
    /// ends when the last handle is dropped.
    pub(super) fn connect() -> Result<Self, NetlinkError> {
        let (connection, handle, _) = rtnetlink::new_connection()
            .map_err(|source| NetlinkError::Io { request: "opening a netlink socket", source })?;
        tokio::spawn(connection);
        Ok(Self { handle })
    }

    /// Like [`Rtnl::connect`], subscribed to the multicast `groups` too:
    /// the kernel's change notifications arrive on the returned channel.
    pub(super) fn watch(groups: &[MulticastGroup]) -> Result<(Self, Events), NetlinkError> {
        let (connection, handle, events) = rtnetlink::new_multicast_connection(groups)
            .map_err(|source| NetlinkError::Io { request: "opening a netlink event socket", source })?;
        tokio::spawn(connection);
        Ok((Self { handle }, events))
    }

    pub(super) fn handle(&self) -> &Handle {
        &self.handle
    }

    /// The link called `name` (RTM_GETLINK by IFLA_IFNAME).
    pub(super) async fn link_by_name(&self, name: &str) -> Result<LinkMessage, NetlinkError> {
        const REQUEST: &str = "RTM_GETLINK (link by name)";
        // A name the kernel could never have given an interface is simply not
        // found (the kernel would answer EINVAL/ERANGE instead, less helpfully).
        if name.is_empty() || name.len() > IFNAME_MAX || name.contains(['\0', '/']) {
            return Err(NetlinkError::InterfaceNotFound { name: name.to_string() });
        }
        let mut get = self.handle.link().get().match_name(name);
        get.message_mut().attributes.push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
        match first(REQUEST, get.execute()).await {
            Err(NetlinkError::Kernel { errno, .. }) if errno == libc::ENODEV => {
                Err(NetlinkError::InterfaceNotFound { name: name.to_string() })
            }
            other => other,
        }
    }

    /// The name of the link with index `ifindex`.
    pub(super) async fn link_name(&self, ifindex: u32) -> Result<String, NetlinkError> {
        const REQUEST: &str = "RTM_GETLINK (link by index)";
        let mut get = self.handle.link().get().match_index(ifindex);
        get.message_mut().attributes.push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
        let link = match first(REQUEST, get.execute()).await {
            Err(NetlinkError::Kernel { errno, .. }) if errno == libc::ENODEV => {
                return Err(NetlinkError::InterfaceIndexNotFound { ifindex })
            }
            other => other?,
        };
        link.attributes
            .into_iter()
            .find_map(|attr| match attr {
                LinkAttribute::IfName(name) => Some(name),
                _ => None,
            })
            .ok_or_else(|| NetlinkError::Decode {
                request: REQUEST,
                detail: format!("link {ifindex} has no IFLA_IFNAME"),
            })
    }

    /// The MAC address of the interface called `name`.
    pub(super) async fn interface_mac(&self, name: &str) -> Result<Mac, NetlinkError> {
        let link = self.link_by_name(name).await?;
        link_mac(&link).map_err(|len| NetlinkError::NoMacAddress { name: name.to_string(), len })
    }

    /// A dump request (`message` with NLM_F_DUMP), retried if the kernel
    /// reports it was interrupted by a concurrent change.
    pub(super) async fn dump(
        &self,
        request: &'static str,
        message: RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        let mut attempt = 1;
        loop {
            let mut packet = NetlinkMessage::from(message.clone());
            packet.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
            let mut replies = self.handle.clone().request(packet).map_err(|e| kernel_error(request, e))?;
            let collect = async {
                let mut messages = Vec::new();
                let mut interrupted = false;
                while let Some(reply) = replies.next().await {
                    interrupted |= reply.header.flags & NLM_F_DUMP_INTR != 0;
                    match reply.payload {
                        NetlinkPayload::InnerMessage(inner) => messages.push(inner),
                        NetlinkPayload::Error(e) if e.code.is_some() => {
                            return Err(NetlinkError::Kernel { request, errno: e.raw_code().abs() })
                        }
                        // A dump can end with an error code in NLMSG_DONE.
                        NetlinkPayload::Done(done) if done.code < 0 => {
                            return Err(NetlinkError::Kernel { request, errno: -done.code })
                        }
                        NetlinkPayload::Overrun(_) => {
                            return Err(NetlinkError::Decode { request, detail: "NLMSG_OVERRUN: data lost".into() })
                        }
                        _ => {}
                    }
                }
                Ok((messages, interrupted))
            };
            let (messages, interrupted) = timed(request, collect).await??;
            if !interrupted || attempt == DUMP_ATTEMPTS {
                return Ok(messages);
            }
            attempt += 1;
        }
    }
}

/// The IFLA_ADDRESS of `link` if it is a 6-byte MAC; otherwise its length.
pub(super) fn link_mac(link: &LinkMessage) -> Result<Mac, usize> {
    let addr = link.attributes.iter().find_map(|attr| match attr {
        LinkAttribute::Address(addr) => Some(addr.as_slice()),
        _ => None,
    });
    match addr {
        Some(bytes) => Mac::try_from(bytes).map_err(|_| bytes.len()),
        None => Err(0),
    }
}

/// The first answer of a request that has exactly one.
pub(super) async fn first<T>(
    request: &'static str,
    replies: impl futures_util::Stream<Item = Result<T, rtnetlink::Error>>,
) -> Result<T, NetlinkError> {
    let mut replies = std::pin::pin!(replies);
    match timed(request, replies.next()).await? {
        Some(reply) => reply.map_err(|e| kernel_error(request, e)),
        None => Err(NetlinkError::Decode { request, detail: "no answer in the reply".into() }),
    }
}

/// `work`, or a timeout error after [`REPLY_TIMEOUT`].
pub(super) async fn timed<T>(request: &'static str, work: impl Future<Output = T>) -> Result<T, NetlinkError> {
    tokio::time::timeout(REPLY_TIMEOUT, work).await.map_err(|_| NetlinkError::Io {
        request,
        source: io::Error::new(io::ErrorKind::TimedOut, format!("no reply from the kernel within {REPLY_TIMEOUT:?}")),
    })
}

/// An rtnetlink error as a [`NetlinkError`]: the kernel's errno when it
/// answered with one.
pub(super) fn kernel_error(request: &'static str, error: rtnetlink::Error) -> NetlinkError {
    match error {
        rtnetlink::Error::NetlinkError(e) => NetlinkError::Kernel { request, errno: e.raw_code().abs() },
        rtnetlink::Error::RequestFailed => NetlinkError::Io {
            request,
            source: io::Error::new(io::ErrorKind::BrokenPipe, "the netlink connection is closed"),
        },
        other => NetlinkError::Decode { request, detail: other.to_string() },
    }
}
