//! Links: veth pairs created straight into their namespaces, bridges, settings, lookups.

use std::os::fd::AsRawFd as _;

use rtnetlink::{
    LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth,
    packet_core::{NLM_F_CREATE, NLM_F_EXCL},
    packet_route::{
        RouteNetlinkMessage,
        link::{InfoData, InfoVeth, LinkAttribute, LinkFlags, LinkMessage},
    },
};

use crate::{
    Error, Netlink, Netns, Result,
    error::{IFNAME_MAX, check_name},
};

/// A link named by index or by name, in the namespace of the connection used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkRef<'a> {
    /// The interface index.
    Index(u32),
    /// The interface name.
    Name(&'a str),
}

impl From<u32> for LinkRef<'_> {
    fn from(index: u32) -> Self {
        Self::Index(index)
    }
}

impl<'a> From<&'a str> for LinkRef<'a> {
    fn from(name: &'a str) -> Self {
        Self::Name(name)
    }
}

impl std::fmt::Display for LinkRef<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Index(index) => write!(f, "#{index}"),
            Self::Name(name) => f.write_str(name),
        }
    }
}

impl LinkRef<'_> {
    /// A link message addressing this link (by index, or by `IFLA_IFNAME` with index 0).
    fn builder(self) -> Result<LinkMessageBuilder<LinkUnspec>> {
        match self {
            Self::Index(index) => Ok(LinkUnspec::new_with_index(index)),
            Self::Name(name) => {
                check_name("link name", name, IFNAME_MAX)?;
                Ok(LinkUnspec::new_with_name(name))
            }
        }
    }
}

/// What the kernel reports about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// MTU in bytes.
    pub mtu: u32,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// Index of the bridge (or other master) it is enslaved to.
    pub master: Option<u32>,
}

impl LinkInfo {
    fn from_message(message: &LinkMessage) -> Self {
        let mut info = Self {
            index: message.header.index,
            name: String::new(),
            mtu: 0,
            up: message.header.flags.contains(LinkFlags::Up),
            master: None,
        };
        for attribute in &message.attributes {
            match attribute {
                LinkAttribute::IfName(name) => info.name.clone_from(name),
                LinkAttribute::Mtu(mtu) => info.mtu = *mtu,
                LinkAttribute::Controller(master) if *master != 0 => info.master = Some(*master),
                _ => {}
            }
        }
        info
    }
}

/// A veth pair to create: `name` and its `peer`, each in its own namespace (by default the
/// connection's), created there directly (`IFLA_NET_NS_FD` on the link and on the peer).
#[derive(Debug, Clone)]
pub struct Veth<'a> {
    name: &'a str,
    peer: &'a str,
    netns: Option<&'a Netns>,
    peer_netns: Option<&'a Netns>,
    mtu: Option<u32>,
    up: bool,
    master: Option<u32>,
}

impl<'a> Veth<'a> {
    /// A pair `name` — `peer`, both in the connection's namespace, down, default MTU.
    pub fn new(name: &'a str, peer: &'a str) -> Self {
        Self {
            name,
            peer,
            netns: None,
            peer_netns: None,
            mtu: None,
            up: false,
            master: None,
        }
    }

    /// Creates `name` in `netns`.
    pub fn netns(self, netns: &'a Netns) -> Self {
        Self {
            netns: Some(netns),
            ..self
        }
    }

    /// Creates `peer` in `netns`.
    pub fn peer_netns(self, netns: &'a Netns) -> Self {
        Self {
            peer_netns: Some(netns),
            ..self
        }
    }

    /// Sets the MTU of both ends.
    pub fn mtu(self, mtu: u32) -> Self {
        Self {
            mtu: Some(mtu),
            ..self
        }
    }

    /// Brings `name` up as it is created. Not the peer: the kernel would open the peer before
    /// the pair is joined, which fails with `ENOTCONN`; set it up through a connection in its
    /// namespace.
    pub fn up(self) -> Self {
        Self { up: true, ..self }
    }

    /// Enslaves `name` (not the peer: the kernel only does this for the first end) to the
    /// bridge with index `bridge`, an index in `name`'s namespace.
    pub fn master(self, bridge: u32) -> Self {
        Self {
            master: Some(bridge),
            ..self
        }
    }
}

impl Netlink {
    /// Creates a veth pair in one request, each end straight in its target namespace.
    pub async fn add_veth(&self, veth: &Veth<'_>) -> Result<()> {
        check_name("link name", veth.name, IFNAME_MAX)?;
        check_name("link name", veth.peer, IFNAME_MAX)?;
        let netns_fd = veth.netns.map(Netns::open_fd).transpose()?;
        let peer_netns_fd = veth.peer_netns.map(Netns::open_fd).transpose()?;

        let mut peer = LinkUnspec::new_with_name(veth.peer);
        let mut link = LinkVeth::new(veth.name, veth.peer);
        if let Some(fd) = &peer_netns_fd {
            peer = peer.setns_by_fd(fd.as_raw_fd());
        }
        if let Some(fd) = &netns_fd {
            link = link.setns_by_fd(fd.as_raw_fd());
        }
        if let Some(mtu) = veth.mtu {
            peer = peer.mtu(mtu);
            link = link.mtu(mtu);
        }
        if veth.up {
            link = link.up();
        }
        if let Some(master) = veth.master {
            link = link.controller(master);
        }
        let message = link
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())))
            .build();
        let place = |end: &str, ns: Option<&Netns>| match ns {
            Some(ns) => format!("{end} in netns {}", ns.name()),
            None => end.to_owned(),
        };
        self.ack(
            RouteNetlinkMessage::NewLink(message),
            NLM_F_CREATE | NLM_F_EXCL,
            || {
                format!(
                    "create veth {} (peer {})",
                    place(veth.name, veth.netns),
                    place(veth.peer, veth.peer_netns)
                )
            },
        )
        .await
    }

    /// Creates a Linux bridge (STP off, so ports forward at once), up.
    pub async fn add_bridge(&self, name: &str) -> Result<()> {
        check_name("bridge name", name, IFNAME_MAX)?;
        let message = LinkBridge::new(name).build();
        self.ack(
            RouteNetlinkMessage::NewLink(message),
            NLM_F_CREATE | NLM_F_EXCL,
            || format!("create bridge {name}"),
        )
        .await
    }

    /// Deletes a link (both ends, for a veth).
    pub async fn delete_link(&self, link: impl Into<LinkRef<'_>>) -> Result<()> {
        let link = link.into();
        let message = link.builder()?.build();
        self.ack(RouteNetlinkMessage::DelLink(message), 0, || {
            format!("delete link {link}")
        })
        .await
    }

    /// Brings a link up.
    pub async fn set_up(&self, link: impl Into<LinkRef<'_>>) -> Result<()> {
        let link = link.into();
        self.set(link, link.builder()?.up(), "set up").await
    }

    /// Brings a link down.
    pub async fn set_down(&self, link: impl Into<LinkRef<'_>>) -> Result<()> {
        let link = link.into();
        self.set(link, link.builder()?.down(), "set down").await
    }

    /// Sets a link's MTU.
    pub async fn set_mtu(&self, link: impl Into<LinkRef<'_>>, mtu: u32) -> Result<()> {
        let link = link.into();
        self.set(link, link.builder()?.mtu(mtu), &format!("set mtu {mtu} on"))
            .await
    }

    /// Enslaves a link to the bridge with index `bridge`.
    pub async fn set_master(&self, link: impl Into<LinkRef<'_>>, bridge: u32) -> Result<()> {
        let link = link.into();
        self.set(
            link,
            link.builder()?.controller(bridge),
            &format!("enslave to bridge #{bridge}"),
        )
        .await
    }

    /// Releases a link from its bridge.
    pub async fn set_nomaster(&self, link: impl Into<LinkRef<'_>>) -> Result<()> {
        let link = link.into();
        self.set(
            link,
            link.builder()?.nocontroller(),
            "release from its bridge",
        )
        .await
    }

    async fn set(
        &self,
        link: LinkRef<'_>,
        builder: LinkMessageBuilder<LinkUnspec>,
        what: &str,
    ) -> Result<()> {
        self.ack(RouteNetlinkMessage::SetLink(builder.build()), 0, || {
            format!("{what} link {link}")
        })
        .await
    }

    /// Looks a link up by name or index; [`Error::NoSuchLink`] if there is none.
    pub async fn link(&self, link: impl Into<LinkRef<'_>>) -> Result<LinkInfo> {
        let link = link.into();
        let message = link.builder()?.build();
        let answers = self
            .request(RouteNetlinkMessage::GetLink(message), 0, || {
                format!("look up link {link}")
            })
            .await;
        // An unknown name or index is ENODEV.
        let answers = match answers {
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NODEV.raw_os_error()) => {
                return Err(Error::NoSuchLink {
                    name: link.to_string(),
                    netns: self.netns().to_owned(),
                });
            }
            other => other?,
        };
        match answers.as_slice() {
            [RouteNetlinkMessage::NewLink(message)] => Ok(LinkInfo::from_message(message)),
            other => Err(self.decode_error(format!("look up link {link}"), format!("{other:?}"))),
        }
    }

    /// The index of the link named `name`.
    pub async fn link_index(&self, name: &str) -> Result<u32> {
        Ok(self.link(name).await?.index)
    }

    /// All links in the connection's namespace, by index.
    pub async fn links(&self) -> Result<Vec<LinkInfo>> {
        let answers = self
            .dump(RouteNetlinkMessage::GetLink(LinkMessage::default()), || {
                "list links".to_owned()
            })
            .await?;
        let mut links: Vec<LinkInfo> = answers
            .iter()
            .filter_map(|answer| match answer {
                RouteNetlinkMessage::NewLink(message) => Some(LinkInfo::from_message(message)),
                _ => None,
            })
            .collect();
        links.sort_by_key(|link| link.index);
        Ok(links)
    }
}
