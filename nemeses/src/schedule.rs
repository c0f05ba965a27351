//! The nemesis schedule: which fault, on which target, when — a pure function of the
//! campaign's `[nemesis]` section and the run's seed (same seed, same schedule).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;
use std::time::Duration;

/// The faults a campaign can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// Cut one region (all its hosts) off from the rest.
    PartitionRegion,
    /// Cut one host off from the rest.
    PartitionNode,
    /// Two halves of the hosts.
    PartitionHalves,
    /// Every host sees a different majority.
    PartitionRing,
    /// Two halves joined through one host.
    PartitionBridge,
    /// Kill the invalidator; restart it after.
    KillInvalidator,
    /// Pause the invalidator; resume it after.
    PauseInvalidator,
    /// Pause a region's Redis primary; resume it after.
    PauseRedis,
    /// A region's hosts drop 30% of the packets they receive.
    PacketLoss,
    /// A region's hosts delay what they send by 100 ms (needs the kernel's netem).
    Latency,
    /// A region's Redis primary is failed over through Sentinel.
    RedisFailover,
    /// A region's Redis replica is made a primary with `REPLICAOF NO ONE`, behind
    /// Sentinel's back; made a replica again after.
    RedisPromoteReplica,
    /// Kill a region's Redis primary (SIGKILL); restart it after, as a replica if
    /// Sentinel failed over meanwhile.
    KillRedis,
    /// Kill a region's Sentinel on its Sentinel-only host; restart it after.
    KillSentinel,
    /// Kill the PostgreSQL primary (SIGKILL); restart it after.
    KillPostgres,
    /// Pause the PostgreSQL primary; resume it after.
    PausePostgres,
    /// Promote the PostgreSQL standby after killing the primary (fencing it); rebuild
    /// the old primary as a standby after.
    PostgresFailover,
    /// Promote the PostgreSQL standby and leave the old primary running: a split brain.
    PostgresFailoverUnfenced,
}

impl FaultKind {
    /// Every kind, by its campaign name.
    pub const NAMES: &'static [&'static str] = &[
        "partition-region",
        "partition-node",
        "partition-halves",
        "partition-ring",
        "partition-bridge",
        "kill-invalidator",
        "pause-invalidator",
        "pause-redis",
        "packet-loss",
        "latency",
        "redis-failover",
        "redis-promote-replica",
        "kill-redis",
        "kill-sentinel",
        "kill-postgres",
        "pause-postgres",
        "postgres-failover",
        "postgres-failover-unfenced",
    ];

    /// Whether the fault is aimed at one region.
    pub fn targets_region(self) -> bool {
        matches!(
            self,
            FaultKind::PartitionRegion
                | FaultKind::PauseRedis
                | FaultKind::PacketLoss
                | FaultKind::Latency
                | FaultKind::RedisFailover
                | FaultKind::RedisPromoteReplica
                | FaultKind::KillRedis
                | FaultKind::KillSentinel
        )
    }
}

/// The `[nemesis]` section of a campaign.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NemesisConfig {
    /// Which faults, chosen among at random (from the seed) each time.
    pub faults: Vec<FaultKind>,
    /// Time from the start of one fault to the start of the next.
    #[serde(deserialize_with = "crate::duration")]
    pub interval: Duration,
    /// How long each fault lasts before it is healed.
    #[serde(deserialize_with = "crate::duration")]
    pub duration: Duration,
}

/// What the faults can target.
#[derive(Debug, Clone)]
pub struct Targets {
    /// Every host.
    pub nodes: Vec<String>,
    /// The regions and their hosts.
    pub regions: Vec<(String, Vec<String>)>,
}

/// One planned fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    /// Its kind.
    pub kind: FaultKind,
    /// For region faults: the region; for node faults: the node.
    pub target: Option<String>,
    /// For shape faults: the hosts in the order the shape splits them.
    pub order: Vec<String>,
}

/// The `n` first faults of the schedule for `seed`.
pub fn plan(config: &NemesisConfig, targets: &Targets, seed: u64, n: usize) -> Vec<Planned> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x006e_656d_6573_6973);
    (0..n)
        .map(|_| {
            let kind = config.faults[rng.random_range(0..config.faults.len())];
            let mut order = targets.nodes.clone();
            // Fisher-Yates, from the seed.
            for i in (1..order.len()).rev() {
                order.swap(i, rng.random_range(0..=i));
            }
            let target = if kind.targets_region() {
                Some(
                    targets.regions[rng.random_range(0..targets.regions.len())]
                        .0
                        .clone(),
                )
            } else if kind == FaultKind::PartitionNode {
                Some(order[0].clone())
            } else {
                None
            };
            Planned {
                kind,
                target,
                order,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> NemesisConfig {
        NemesisConfig {
            faults: vec![
                FaultKind::PartitionRegion,
                FaultKind::KillInvalidator,
                FaultKind::PartitionHalves,
            ],
            interval: Duration::from_secs(5),
            duration: Duration::from_secs(2),
        }
    }

    fn targets() -> Targets {
        Targets {
            nodes: ["db1", "db2", "r1a", "r1b", "r2a", "r2b"]
                .map(String::from)
                .to_vec(),
            regions: vec![
                ("r1".into(), vec!["r1a".into(), "r1b".into()]),
                ("r2".into(), vec!["r2a".into(), "r2b".into()]),
            ],
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        assert_eq!(
            plan(&config(), &targets(), 7, 20),
            plan(&config(), &targets(), 7, 20)
        );
        assert_ne!(
            plan(&config(), &targets(), 7, 20),
            plan(&config(), &targets(), 8, 20)
        );
    }

    #[test]
    fn every_asked_kind_comes_up_with_a_fitting_target() {
        let p = plan(&config(), &targets(), 1, 60);
        for kind in &config().faults {
            assert!(p.iter().any(|f| f.kind == *kind), "{kind:?} never planned");
        }
        for f in &p {
            match f.kind {
                FaultKind::PartitionRegion => {
                    assert!(f.target.as_deref().is_some_and(|t| t.starts_with('r')))
                }
                _ => assert!(f.target.is_none()),
            }
            assert_eq!(f.order.len(), 6);
        }
    }

    #[test]
    fn region_faults_name_a_region() {
        let config = NemesisConfig {
            faults: vec![
                FaultKind::PartitionRegion,
                FaultKind::PauseRedis,
                FaultKind::PacketLoss,
                FaultKind::Latency,
                FaultKind::RedisFailover,
                FaultKind::RedisPromoteReplica,
                FaultKind::KillRedis,
                FaultKind::KillSentinel,
            ],
            interval: Duration::from_secs(5),
            duration: Duration::from_secs(1),
        };
        for f in plan(&config, &targets(), 3, 50) {
            let region = f
                .target
                .unwrap_or_else(|| panic!("{:?} has no region", f.kind));
            assert!(
                targets().regions.iter().any(|(r, _)| *r == region),
                "{region}"
            );
        }
    }

    #[test]
    fn campaign_names_parse() {
        #[derive(Deserialize)]
        struct T {
            nemesis: NemesisConfig,
        }
        for name in FaultKind::NAMES {
            let text =
                format!("[nemesis]\nfaults = [\"{name}\"]\ninterval = \"5s\"\nduration = \"1s\"\n");
            let t = toml::from_str::<T>(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(t.nemesis.faults.len(), 1);
        }
        // And every kind has its name in NAMES (the campaign error lists them).
        let parsed: Vec<FaultKind> = FaultKind::NAMES
            .iter()
            .map(|n| serde_json::from_value(serde_json::Value::String(n.to_string())).unwrap())
            .collect();
        for kind in parsed.iter() {
            assert_eq!(parsed.iter().filter(|k| *k == kind).count(), 1);
        }
        assert!(parsed.contains(&FaultKind::PostgresFailoverUnfenced));
    }
}
