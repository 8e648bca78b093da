//! EC2's `GetSpotPlacementScores`, which moto does not serve (moto 5.2.5 has no such action):
//! scores from 1 to 10 for a configuration (instance types, or attribute requirements, and a
//! target capacity) per region, or per Availability Zone with `SingleAvailabilityZone`, the
//! zones named by id, the top ten, best first
//! (<https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_GetSpotPlacementScores.html>,
//! <https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/spot-placement-score.html>).
//!
//! The scores are a table tests set ([`SpotPlacements::set_score`]), deterministic; a zone and
//! type not set scores [`UNSET_SCORE`]. A staged capacity makes a target above it score 1, as a
//! target past what the zone can hold does. Two refusals, each with AWS's error:
//!
//! - new configurations past the account's limit within 24 hours: "If you reach the limit, you
//!   can retry the request configurations that you've already used, but you can't specify new
//!   request configurations until the next 24-hour period" (the user guide, "Limitations");
//!   EC2 answers `MaxConfigLimitExceeded`, "You have exceeded your maximum allowed Spot
//!   placement configurations. You can retry configurations that you used within the last 24
//!   hours, or wait for 24 hours before specifying a new configuration." (as callers quote it).
//!   AWS publishes no number (it limits "if we detect patterns not associated with the intended
//!   use"), so the limit is the harness's, [`DEFAULT_CONFIGURATIONS`], settable per region;
//! - its own request rate, when a test stages one ([`SpotPlacements::set_rate`]): 503
//!   `RequestLimitExceeded`, EC2's throttle
//!   (<https://docs.aws.amazon.com/ec2/latest/devguide/ec2-api-throttling.html>); otherwise the
//!   call shares EC2's non-mutating bucket as every Get does (`throttle::ec2_request_bucket`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A zone and type no test set.
pub const UNSET_SCORE: u8 = 5;

/// New configurations a region (an account of its own) may ask within [`WINDOW`].
pub const DEFAULT_CONFIGURATIONS: usize = 10;

/// The rolling window of the configurations limit.
pub const WINDOW: Duration = Duration::from_secs(24 * 3600);

/// One staged score: the zone's score for the type, and the most vCPUs it scores so for.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Entry {
    score: u8,
    most_vcpus: Option<u32>,
}

#[derive(Default)]
pub struct SpotPlacements {
    /// (region, zone id, instance type) → its entry.
    table: Mutex<HashMap<(String, String, String), Entry>>,
    /// region → its limit of new configurations in 24 hours.
    limits: Mutex<HashMap<String, usize>>,
    /// region → (configuration, first asked) within the window.
    seen: Mutex<HashMap<String, Vec<(String, Instant)>>>,
    /// region → a staged rate bucket (size, refilled a second).
    rates: Mutex<HashMap<String, (f64, f64)>>,
    /// region → calls answered with scores, and calls refused (code).
    answered: Mutex<HashMap<String, (usize, Vec<String>)>>,
}

/// What one call asked.
#[derive(Debug, Clone, PartialEq)]
pub struct Asked {
    pub types: Vec<String>,
    /// Attribute requirements' vCPU range, when asked by requirements.
    pub vcpu_range: Option<(u32, u32)>,
    pub target: u32,
    /// `units` (instances), `vcpu` or `memory-mib`.
    pub unit: String,
    pub single_zone: bool,
    pub regions: Vec<String>,
    /// The configuration, as its limit counts it: every parameter but paging.
    pub configuration: String,
}

/// A refusal: HTTP status, code, message.
pub type Refusal = (u16, &'static str, String);

impl Asked {
    /// The request's form, checked as EC2 checks it.
    pub fn parse(form: &HashMap<String, String>, region: &str) -> Result<Asked, Refusal> {
        let list = |prefix: &str| -> Vec<String> {
            (1..=100)
                .map_while(|n| form.get(&format!("{prefix}.{n}")).cloned())
                .collect()
        };
        let types = list("InstanceType");
        let req = "InstanceRequirementsWithMetadata.InstanceRequirements";
        let by_requirements = form.keys().any(|k| k.starts_with(req));
        if !types.is_empty() && by_requirements {
            return Err((
                400,
                "InvalidParameterCombination",
                "InstanceTypes and InstanceRequirementsWithMetadata cannot both be specified"
                    .into(),
            ));
        }
        if types.is_empty() && !by_requirements {
            return Err((
                400,
                "MissingParameter",
                "Either InstanceTypes or InstanceRequirementsWithMetadata must be specified".into(),
            ));
        }
        let target = form
            .get("TargetCapacity")
            .and_then(|t| t.parse::<u64>().ok())
            .filter(|t| (1..=2_000_000_000).contains(t))
            .ok_or((
                400,
                "InvalidParameterValue",
                "TargetCapacity must be between 1 and 2000000000".to_string(),
            ))? as u32;
        let vcpu_range = by_requirements.then(|| {
            let n = |k: &str| {
                form.get(&format!("{req}.VCpuCount.{k}"))
                    .and_then(|v| v.parse().ok())
            };
            (n("Min").unwrap_or(0), n("Max").unwrap_or(u32::MAX))
        });
        let mut regions = list("RegionName");
        if regions.is_empty() {
            regions.push(region.to_string());
        }
        let mut params: Vec<(&String, &String)> = form
            .iter()
            .filter(|(k, _)| {
                !matches!(
                    k.as_str(),
                    "Action" | "Version" | "NextToken" | "MaxResults" | "DryRun"
                )
            })
            .collect();
        params.sort();
        Ok(Asked {
            types,
            vcpu_range,
            target,
            unit: form
                .get("TargetCapacityUnitType")
                .cloned()
                .unwrap_or_else(|| "units".into()),
            single_zone: form
                .get("SingleAvailabilityZone")
                .is_some_and(|v| v == "true"),
            regions,
            configuration: format!("{params:?}"),
        })
    }
}

impl SpotPlacements {
    /// Tests: `zone_id`'s score for `instance_type` in `region`, for targets up to `most_vcpus`
    /// (any target when None); above it the zone scores 1.
    pub fn set_score(
        &self,
        region: &str,
        zone_id: &str,
        instance_type: &str,
        score: u8,
        most_vcpus: Option<u32>,
    ) {
        assert!((1..=10).contains(&score), "a score is 1 to 10");
        self.table.lock().unwrap().insert(
            (region.into(), zone_id.into(), instance_type.into()),
            Entry { score, most_vcpus },
        );
    }

    /// Tests: the region's limit of new configurations in 24 hours.
    pub fn set_configuration_limit(&self, region: &str, limit: usize) {
        self.limits.lock().unwrap().insert(region.into(), limit);
    }

    /// Tests: a rate bucket of its own for the call in `region`.
    pub fn set_rate(&self, region: &str, size: f64, per_second: f64) {
        self.rates
            .lock()
            .unwrap()
            .insert(region.into(), (size, per_second));
    }

    pub fn rate(&self, region: &str) -> Option<(f64, f64)> {
        self.rates.lock().unwrap().get(region).copied()
    }

    /// The calls answered with scores in `region`, and the codes of those refused.
    pub fn answered_in(&self, region: &str) -> (usize, Vec<String>) {
        self.answered
            .lock()
            .unwrap()
            .get(region)
            .cloned()
            .unwrap_or_default()
    }

    pub fn refused(&self, region: &str, code: &str) {
        self.answered
            .lock()
            .unwrap()
            .entry(region.into())
            .or_default()
            .1
            .push(code.into());
    }

    /// Counts a configuration against the 24-hour limit: one asked before within the window is
    /// free, a new one past the limit is refused.
    pub fn admit_configuration(&self, region: &str, configuration: &str) -> Result<(), Refusal> {
        let limit = self
            .limits
            .lock()
            .unwrap()
            .get(region)
            .copied()
            .unwrap_or(DEFAULT_CONFIGURATIONS);
        let mut seen = self.seen.lock().unwrap();
        let list = seen.entry(region.into()).or_default();
        list.retain(|(_, at)| at.elapsed() < WINDOW);
        if list.iter().any(|(c, _)| c == configuration) {
            return Ok(());
        }
        if list.len() >= limit {
            return Err((
                400,
                "MaxConfigLimitExceeded",
                "You have exceeded your maximum allowed Spot placement configurations. You can retry configurations that you used within the last 24 hours, or wait for 24 hours before specifying a new configuration.".into(),
            ));
        }
        list.push((configuration.into(), Instant::now()));
        Ok(())
    }

    /// The scores of `asked` over `zones` (region → [(zone name, zone id)]): per zone with
    /// `single_zone`, else per region (its best zone: a region's score assumes every zone may
    /// be used); the top ten, best first. A set of types scores as its best type, any of which
    /// may fill it.
    pub fn scores(
        &self,
        asked: &Asked,
        zones: &BTreeMap<String, Vec<String>>,
        vcpus_of: impl Fn(&str) -> Option<u32>,
    ) -> Vec<(String, Option<String>, u8)> {
        let table = self.table.lock().unwrap();
        let types: Vec<String> = match asked.vcpu_range {
            None => asked.types.clone(),
            // By requirements: the types staged in the asked regions whose vCPUs fit.
            Some((lo, hi)) => {
                let mut t: Vec<String> = table
                    .keys()
                    .filter(|(r, _, _)| asked.regions.contains(r))
                    .map(|(_, _, t)| t.clone())
                    .filter(|t| vcpus_of(t).is_some_and(|v| (lo..=hi).contains(&v)))
                    .collect();
                t.sort();
                t.dedup();
                t
            }
        };
        let zone_score = |region: &str, zone: &str| -> u8 {
            types
                .iter()
                .map(|t| {
                    let e = table
                        .get(&(region.into(), zone.into(), t.clone()))
                        .copied()
                        .unwrap_or(Entry {
                            score: UNSET_SCORE,
                            most_vcpus: None,
                        });
                    let target_vcpus = match asked.unit.as_str() {
                        "vcpu" => Some(asked.target),
                        "units" => vcpus_of(t).map(|v| v.saturating_mul(asked.target)),
                        _ => None,
                    };
                    match (e.most_vcpus, target_vcpus) {
                        (Some(most), Some(want)) if want > most => 1,
                        _ => e.score,
                    }
                })
                .max()
                .unwrap_or(1)
        };
        let mut out = vec![];
        for region in &asked.regions {
            let ids = zones.get(region).cloned().unwrap_or_default();
            if asked.single_zone {
                for id in &ids {
                    out.push((region.clone(), Some(id.clone()), zone_score(region, id)));
                }
            } else if !ids.is_empty() {
                let best = ids
                    .iter()
                    .map(|id| zone_score(region, id))
                    .max()
                    .unwrap_or(1);
                out.push((region.clone(), None, best));
            }
        }
        out.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(&b.0)).then(a.1.cmp(&b.1)));
        out.truncate(10);
        out
    }

    pub fn served(&self, region: &str) {
        self.answered
            .lock()
            .unwrap()
            .entry(region.into())
            .or_default()
            .0 += 1;
    }
}

/// EC2's XML answer.
pub fn response_xml(scores: &[(String, Option<String>, u8)]) -> String {
    let items: String = scores
        .iter()
        .map(|(region, zone, score)| {
            let zone = zone
                .as_ref()
                .map(|z| format!("<availabilityZoneId>{z}</availabilityZoneId>"))
                .unwrap_or_default();
            format!("<item><region>{region}</region>{zone}<score>{score}</score></item>")
        })
        .collect();
    format!(
        "<GetSpotPlacementScoresResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\">\
         <requestId>spot-placement-scores</requestId>\
         <spotPlacementScoreSet>{items}</spotPlacementScoreSet></GetSpotPlacementScoresResponse>"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn scores_follow_the_table_and_a_target_past_a_zone_scores_one() {
        let p = SpotPlacements::default();
        p.set_score("eu-west-3", "euw3-az1", "c7g.large", 9, Some(8));
        p.set_score("eu-west-3", "euw3-az2", "c7g.large", 3, None);
        let zones = BTreeMap::from([(
            "eu-west-3".to_string(),
            vec![
                "euw3-az1".to_string(),
                "euw3-az2".to_string(),
                "euw3-az3".to_string(),
            ],
        )]);
        let vcpus = |t: &str| (t == "c7g.large").then_some(2);
        let ask = |target: &str, single: &str| {
            Asked::parse(
                &form(&[
                    ("InstanceType.1", "c7g.large"),
                    ("TargetCapacity", target),
                    ("TargetCapacityUnitType", "vcpu"),
                    ("SingleAvailabilityZone", single),
                    ("RegionName.1", "eu-west-3"),
                ]),
                "eu-west-3",
            )
            .unwrap()
        };
        let s = p.scores(&ask("4", "true"), &zones, vcpus);
        assert_eq!(
            s.iter()
                .map(|(_, z, s)| (z.clone().unwrap(), *s))
                .collect::<Vec<_>>(),
            vec![
                ("euw3-az1".into(), 9),
                ("euw3-az3".into(), UNSET_SCORE),
                ("euw3-az2".into(), 3)
            ]
        );
        // Past the zone's staged capacity it scores 1.
        let s = p.scores(&ask("16", "true"), &zones, vcpus);
        assert!(s.contains(&("eu-west-3".into(), Some("euw3-az1".into()), 1)));
        // Per region: its best zone.
        assert_eq!(
            p.scores(&ask("4", "false"), &zones, vcpus),
            vec![("eu-west-3".into(), None, 9)]
        );
        assert!(response_xml(&s)
            .contains("<availabilityZoneId>euw3-az1</availabilityZoneId><score>1</score>"));
    }

    #[test]
    fn new_configurations_past_the_limit_are_refused_and_old_ones_are_not() {
        let p = SpotPlacements::default();
        p.set_configuration_limit("r", 2);
        assert!(p.admit_configuration("r", "a").is_ok());
        assert!(p.admit_configuration("r", "b").is_ok());
        let (status, code, _) = p.admit_configuration("r", "c").unwrap_err();
        assert_eq!((status, code), (400, "MaxConfigLimitExceeded"));
        assert!(
            p.admit_configuration("r", "a").is_ok(),
            "a configuration used is retried"
        );
        assert!(p.admit_configuration("other", "c").is_ok(), "per account");
    }

    #[test]
    fn a_request_is_checked_as_ec2_checks_it() {
        let both = form(&[
            ("InstanceType.1", "c7g.large"),
            (
                "InstanceRequirementsWithMetadata.InstanceRequirements.VCpuCount.Min",
                "2",
            ),
            ("TargetCapacity", "1"),
        ]);
        assert_eq!(
            Asked::parse(&both, "r").unwrap_err().1,
            "InvalidParameterCombination"
        );
        assert_eq!(
            Asked::parse(&form(&[("TargetCapacity", "1")]), "r")
                .unwrap_err()
                .1,
            "MissingParameter"
        );
        let zero = form(&[("InstanceType.1", "c7g.large"), ("TargetCapacity", "0")]);
        assert_eq!(
            Asked::parse(&zero, "r").unwrap_err().1,
            "InvalidParameterValue"
        );
        let req = Asked::parse(
            &form(&[
                (
                    "InstanceRequirementsWithMetadata.InstanceRequirements.VCpuCount.Min",
                    "2",
                ),
                (
                    "InstanceRequirementsWithMetadata.InstanceRequirements.VCpuCount.Max",
                    "4",
                ),
                ("TargetCapacity", "3"),
            ]),
            "r",
        )
        .unwrap();
        assert_eq!(req.vcpu_range, Some((2, 4)));
        assert_eq!(req.regions, vec!["r".to_string()]);
    }
}
