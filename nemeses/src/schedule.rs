//! The nemesis schedule: which fault, on which target, when — a pure function of the
//! campaign's `[nemesis]` section and the run's seed (same seed, same schedule).

use crate::clock::Skew;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;
use std::time::Duration;

/// The faults a campaign can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, strum::VariantNames)]
#[serde(rename_all = "kebab-case")]
#[strum(serialize_all = "kebab-case")]
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
    /// A host's wall clock is moved forward or back; set right after.
    ClockBump,
    /// A host's wall clock jumps forth and back; set right after.
    ClockStrobe,
}

impl FaultKind {
    /// Every kind, by its campaign name.
    pub const NAMES: &'static [&'static str] = <FaultKind as strum::VariantNames>::VARIANTS;

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
    /// Clock faults: the largest offset. Each is drawn from the seed between a tenth of
    /// it and it, forward or back. Default 5 s.
    #[serde(default = "default_clock_offset", deserialize_with = "crate::duration")]
    pub clock_offset: Duration,
    /// Clock strobes: the longest period. Each is drawn from the seed between a fifth of
    /// it and it. Default 1 s.
    #[serde(default = "default_clock_period", deserialize_with = "crate::duration")]
    pub clock_period: Duration,
}

/// The largest clock offset when a campaign names none.
pub const DEFAULT_CLOCK_OFFSET: Duration = Duration::from_secs(5);
/// The longest strobe period when a campaign names none.
pub const DEFAULT_CLOCK_PERIOD: Duration = Duration::from_secs(1);

fn default_clock_offset() -> Duration {
    DEFAULT_CLOCK_OFFSET
}

fn default_clock_period() -> Duration {
    DEFAULT_CLOCK_PERIOD
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
    /// For clock faults: how the node's clock is moved.
    pub skew: Option<Skew>,
}

/// A skew drawn from `rng`: the offset's size between a tenth of `max_offset` and it
/// (at least 1 ms), forward or back; a strobe's period between a fifth of
/// `max_period` and it.
fn draw_skew(
    rng: &mut ChaCha8Rng,
    strobe: bool,
    max_offset: Duration,
    max_period: Duration,
) -> Skew {
    let max = (max_offset.as_millis() as i64).clamp(1, i32::MAX as i64);
    let size = rng.random_range((max / 10).max(1)..=max);
    let offset_ms = if rng.random_bool(0.5) { size } else { -size };
    if !strobe {
        return Skew::Bump { offset_ms };
    }
    let max = (max_period.as_millis() as u64).clamp(1, u32::MAX as u64);
    Skew::Strobe {
        offset_ms,
        period_ms: rng.random_range((max / 5).max(1)..=max),
    }
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
            } else if matches!(
                kind,
                FaultKind::PartitionNode | FaultKind::ClockBump | FaultKind::ClockStrobe
            ) {
                Some(order[0].clone())
            } else {
                None
            };
            // Drawn only for clock faults, so other kinds' schedules stay as they were.
            let skew = matches!(kind, FaultKind::ClockBump | FaultKind::ClockStrobe).then(|| {
                draw_skew(
                    &mut rng,
                    kind == FaultKind::ClockStrobe,
                    config.clock_offset,
                    config.clock_period,
                )
            });
            Planned {
                kind,
                target,
                order,
                skew,
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
            clock_offset: DEFAULT_CLOCK_OFFSET,
            clock_period: DEFAULT_CLOCK_PERIOD,
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
            clock_offset: DEFAULT_CLOCK_OFFSET,
            clock_period: DEFAULT_CLOCK_PERIOD,
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
    fn clock_faults_name_a_node_and_a_skew_within_the_bounds() {
        let config = NemesisConfig {
            faults: vec![FaultKind::ClockBump, FaultKind::ClockStrobe],
            interval: Duration::from_secs(5),
            duration: Duration::from_secs(1),
            clock_offset: Duration::from_secs(2),
            clock_period: Duration::from_millis(500),
        };
        let p = plan(&config, &targets(), 11, 200);
        let (mut forward, mut back) = (false, false);
        for f in &p {
            let node = f.target.as_deref().expect("a node");
            assert!(targets().nodes.iter().any(|n| n == node), "{node}");
            let skew = f.skew.expect("a skew");
            let size = skew.offset_ms().abs();
            assert!((200..=2000).contains(&size), "{skew}");
            forward |= skew.offset_ms() > 0;
            back |= skew.offset_ms() < 0;
            match (f.kind, skew) {
                (FaultKind::ClockBump, Skew::Bump { .. }) => {}
                (FaultKind::ClockStrobe, Skew::Strobe { period_ms, .. }) => {
                    assert!((100..=500).contains(&period_ms), "{skew}")
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(forward && back, "offsets go both ways");
        assert!(plan(&self::config(), &targets(), 1, 60)
            .iter()
            .all(|f| f.skew.is_none()));
    }

    #[test]
    fn clock_bounds_parse_and_default() {
        #[derive(Deserialize)]
        struct T {
            nemesis: NemesisConfig,
        }
        let text = "[nemesis]\nfaults = [\"clock-bump\"]\ninterval = \"5s\"\nduration = \"1s\"\n";
        let t = toml::from_str::<T>(text).unwrap();
        assert_eq!(t.nemesis.clock_offset, DEFAULT_CLOCK_OFFSET);
        assert_eq!(t.nemesis.clock_period, DEFAULT_CLOCK_PERIOD);
        let text = format!("{text}clock_offset = \"30s\"\nclock_period = \"200ms\"\n");
        let t = toml::from_str::<T>(&text).unwrap();
        assert_eq!(t.nemesis.clock_offset, Duration::from_secs(30));
        assert_eq!(t.nemesis.clock_period, Duration::from_millis(200));
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
