//! Where everything in the lab lives: hosts, their namespaces and addresses, their
//! roles and ports. Pure values, computed from the number of regions, so that every
//! command (and a later `lab down` after a crash) agrees on them.
//!
//! The lab uses its own subnet on its own bridge; hosts have no default route, so
//! their traffic cannot leave the lab.

use std::net::Ipv4Addr;

/// Prefix of every namespace the lab makes.
pub const NS_PREFIX: &str = "coh-";
/// The bridge that joins the lab's hosts.
pub const BRIDGE: &str = "cohbr0";
/// The lab's subnet is `10.77.0.0/24`.
pub const SUBNET: [u8; 3] = [10, 77, 0];
/// The address of the bridge, in the machine's own namespace (where the tool runs).
pub const BRIDGE_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// PostgreSQL's port.
pub const PG_PORT: u16 = 5432;
/// Redis's port.
pub const REDIS_PORT: u16 = 6379;
/// Sentinel's port.
pub const SENTINEL_PORT: u16 = 26379;
/// The port of the lab's HTTP service ([`crate::service`]) on each region's app host.
pub const SERVICE_PORT: u16 = 8080;
/// The most regions the lab lays out.
pub const MAX_REGIONS: u32 = 9;

/// What a host runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// The PostgreSQL primary, at start.
    DbPrimary,
    /// The PostgreSQL streaming standby, at start.
    DbStandby,
    /// A region's Redis primary (and a Sentinel), at start.
    RedisPrimary,
    /// A region's Redis replica (and a Sentinel), at start.
    RedisReplica,
    /// A region's third Sentinel.
    Sentinel,
    /// The invalidation pipeline under test.
    Invalidator,
    /// A region's app server: the lab's HTTP service ([`crate::service`]).
    Service,
}

impl Role {
    /// For people.
    pub fn describe(self) -> &'static str {
        match self {
            Role::DbPrimary => "postgres primary",
            Role::DbStandby => "postgres standby",
            Role::RedisPrimary => "redis primary + sentinel",
            Role::RedisReplica => "redis replica + sentinel",
            Role::Sentinel => "sentinel",
            Role::Invalidator => "invalidator",
            Role::Service => "app service (http)",
        }
    }
}

/// One lab host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// Its name (`db1`, `r1a`, ...).
    pub name: String,
    /// Its address on the lab bridge.
    pub addr: Ipv4Addr,
    /// What it runs at start.
    pub role: Role,
    /// Its region (`r1`, ...), for cache and app hosts.
    pub region: Option<String>,
}

impl Host {
    /// The network namespace it lives in.
    pub fn namespace(&self) -> String {
        format!("{NS_PREFIX}{}", self.name)
    }

    /// The veth end on the bridge side (at most 15 characters).
    pub fn veth(&self) -> String {
        format!("coh{}", self.name)
    }

    /// The ports its servers listen on.
    pub fn ports(&self) -> Vec<u16> {
        match self.role {
            Role::DbPrimary | Role::DbStandby => vec![PG_PORT],
            Role::RedisPrimary | Role::RedisReplica => vec![REDIS_PORT, SENTINEL_PORT],
            Role::Sentinel => vec![SENTINEL_PORT],
            Role::Invalidator => vec![],
            Role::Service => vec![SERVICE_PORT],
        }
    }
}

fn addr(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], last)
}

/// The name of region `n` (from 1).
pub fn region(n: u32) -> String {
    format!("r{n}")
}

/// Every host of a lab with `regions` regions: the invalidator's and the databases',
/// then per region its Redis primary `rNa`, replica `rNb` and Sentinel `rNs`, and its
/// app host `rN-app` (the HTTP service).
pub fn hosts(regions: u32) -> Vec<Host> {
    assert!(
        (1..=MAX_REGIONS).contains(&regions),
        "1 to {MAX_REGIONS} regions"
    );
    let mut hosts = vec![
        Host {
            name: "inv".into(),
            addr: addr(5),
            role: Role::Invalidator,
            region: None,
        },
        Host {
            name: "db1".into(),
            addr: addr(11),
            role: Role::DbPrimary,
            region: None,
        },
        Host {
            name: "db2".into(),
            addr: addr(12),
            role: Role::DbStandby,
            region: None,
        },
    ];
    for n in 1..=regions {
        let base = 20 + 10 * (n as u8 - 1);
        for (suffix, role, offset) in [
            ("a", Role::RedisPrimary, 1),
            ("b", Role::RedisReplica, 2),
            ("s", Role::Sentinel, 3),
            ("-app", Role::Service, 4),
        ] {
            hosts.push(Host {
                name: format!("r{n}{suffix}"),
                addr: addr(base + offset),
                role,
                region: Some(region(n)),
            });
        }
    }
    hosts
}

/// The Sentinel master name of a region (the region's name).
pub fn master_name(region: &str) -> &str {
    region
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn addresses_and_names_are_unique_and_inside_the_subnet() {
        for regions in 1..=MAX_REGIONS {
            let hosts = hosts(regions);
            assert_eq!(hosts.len(), 3 + 4 * regions as usize);
            let addrs: HashSet<_> = hosts.iter().map(|h| h.addr).collect();
            let names: HashSet<_> = hosts.iter().map(|h| h.name.clone()).collect();
            assert_eq!(addrs.len(), hosts.len());
            assert_eq!(names.len(), hosts.len());
            for h in &hosts {
                assert_eq!(h.addr.octets()[..3], SUBNET, "{h:?}");
                assert_ne!(h.addr, BRIDGE_ADDR);
                assert!(h.veth().len() <= 15, "interface names are at most 15 bytes");
                assert!(h.namespace().starts_with(NS_PREFIX));
            }
        }
    }

    #[test]
    fn each_region_has_a_primary_a_replica_and_three_sentinels() {
        let hosts = hosts(2);
        for r in ["r1", "r2"] {
            let of = |role| {
                hosts
                    .iter()
                    .filter(|h| h.region.as_deref() == Some(r) && h.role == role)
                    .count()
            };
            assert_eq!(of(Role::RedisPrimary), 1);
            assert_eq!(of(Role::RedisReplica), 1);
            let sentinels = hosts
                .iter()
                .filter(|h| h.region.as_deref() == Some(r) && h.ports().contains(&SENTINEL_PORT))
                .count();
            assert_eq!(sentinels, 3);
            assert_eq!(of(Role::Service), 1);
        }
        let app = hosts.iter().find(|h| h.name == "r2-app").unwrap();
        assert_eq!(app.addr, Ipv4Addr::new(10, 77, 0, 34));
        assert_eq!(app.ports(), [SERVICE_PORT]);
        assert_eq!(app.region.as_deref(), Some("r2"));
    }
}
