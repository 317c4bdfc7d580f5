//! Addresses and routes.

use std::net::IpAddr;

use rtnetlink::{
    AddressMessageBuilder, RouteMessageBuilder,
    packet_core::{NLM_F_CREATE, NLM_F_EXCL},
    packet_route::{
        RouteNetlinkMessage,
        address::AddressHeaderFlags,
        route::{RouteMessage, RouteScope},
    },
};

use crate::{Error, Netlink, Result};

/// Checks that `prefix_len` fits `address`'s family.
fn check_prefix(address: IpAddr, prefix_len: u8) -> Result<()> {
    let max = if address.is_ipv4() { 32 } else { 128 };
    if prefix_len > max {
        return Err(Error::invalid(
            "prefix length",
            format!("{address}/{prefix_len}"),
            "longer than the address",
        ));
    }
    Ok(())
}

/// A unicast route in the main table: to `destination/prefix_len` via a gateway and/or out of
/// a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    destination: IpAddr,
    prefix_len: u8,
    gateway: Option<IpAddr>,
    device: Option<u32>,
}

impl Route {
    /// A route to `destination/prefix_len` (`0.0.0.0/0` or `::/0` for a default route); give
    /// it a gateway, a device or both.
    pub fn new(destination: IpAddr, prefix_len: u8) -> Self {
        Self {
            destination,
            prefix_len,
            gateway: None,
            device: None,
        }
    }

    /// Sends through `gateway` (same family as the destination).
    pub fn via(self, gateway: IpAddr) -> Self {
        Self {
            gateway: Some(gateway),
            ..self
        }
    }

    /// Sends out of the link with index `device`.
    pub fn dev(self, device: u32) -> Self {
        Self {
            device: Some(device),
            ..self
        }
    }

    fn message(&self) -> Result<RouteMessage> {
        check_prefix(self.destination, self.prefix_len)?;
        let invalid = |reason| Error::invalid("route", self, reason);
        let mut builder = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(self.destination, self.prefix_len)
            .map_err(|_| invalid("bad destination"))?;
        match (self.gateway, self.device) {
            (None, None) => return Err(invalid("needs a gateway or a device")),
            (Some(gateway), _) if gateway.is_ipv4() != self.destination.is_ipv4() => {
                return Err(invalid("gateway and destination differ in family"));
            }
            (Some(gateway), _) => {
                builder = builder
                    .gateway(gateway)
                    .map_err(|_| invalid("bad gateway"))?;
            }
            // Directly connected, as `ip route add PREFIX dev DEV` makes it.
            (None, Some(_)) => builder = builder.scope(RouteScope::Link),
        }
        if let Some(device) = self.device {
            builder = builder.output_interface(device);
        }
        Ok(builder.build())
    }
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.destination, self.prefix_len)?;
        if let Some(gateway) = self.gateway {
            write!(f, " via {gateway}")?;
        }
        if let Some(device) = self.device {
            write!(f, " dev #{device}")?;
        }
        Ok(())
    }
}

impl Netlink {
    /// Adds `address/prefix_len` to the link with index `link`; IPv6 addresses skip duplicate
    /// address detection (`IFA_F_NODAD`) so they work at once.
    pub async fn add_address(&self, link: u32, address: IpAddr, prefix_len: u8) -> Result<()> {
        check_prefix(address, prefix_len)?;
        let mut message = match address {
            IpAddr::V4(v4) => AddressMessageBuilder::<std::net::Ipv4Addr>::new()
                .index(link)
                .address(v4, prefix_len)
                .build(),
            IpAddr::V6(v6) => AddressMessageBuilder::<std::net::Ipv6Addr>::new()
                .index(link)
                .address(v6, prefix_len)
                .build(),
        };
        message.header.flags |= AddressHeaderFlags::Nodad;
        self.ack(
            RouteNetlinkMessage::NewAddress(message),
            NLM_F_CREATE | NLM_F_EXCL,
            || format!("add address {address}/{prefix_len} to link #{link}"),
        )
        .await
    }

    /// Adds a route (fails with `EEXIST` if it is there already).
    pub async fn add_route(&self, route: &Route) -> Result<()> {
        let message = route.message()?;
        self.ack(
            RouteNetlinkMessage::NewRoute(message),
            NLM_F_CREATE | NLM_F_EXCL,
            || format!("add route {route}"),
        )
        .await
    }

    /// Deletes a route.
    pub async fn delete_route(&self, route: &Route) -> Result<()> {
        let message = route.message()?;
        self.ack(RouteNetlinkMessage::DelRoute(message), 0, || {
            format!("delete route {route}")
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_routes_are_rejected_before_the_kernel() {
        let v4: IpAddr = "10.0.0.0".parse().unwrap();
        let v6: IpAddr = "fd00::".parse().unwrap();
        assert!(Route::new(v4, 24).dev(2).message().is_ok());
        assert!(
            Route::new(v6, 64)
                .via("fd00::1".parse().unwrap())
                .message()
                .is_ok()
        );
        for (route, reason) in [
            (Route::new(v4, 33).dev(2), "longer than the address"),
            (Route::new(v4, 24), "needs a gateway or a device"),
            (Route::new(v4, 24).via(v6), "differ in family"),
        ] {
            let err = route.message().expect_err("invalid route accepted");
            assert!(err.to_string().contains(reason), "{err}");
        }
        assert!(check_prefix(v6, 129).is_err());
        assert!(check_prefix(v6, 128).is_ok());
    }
}
