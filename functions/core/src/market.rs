//! Where an instance is bought: Spot or On-Demand, and the order a RunSpec's policy tries them
//! in. The ground floor: the RunSpec names a policy, the catalog prices a market, and neither
//! has to import the other for it.

use serde::{Deserialize, Serialize};

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
/// `worker.market`: which markets a worker's launches may buy in.
#[serde(rename_all = "kebab-case")]
pub enum MarketPolicy {
    /// Spot only, relaunches too: a worker no Spot candidate can place is lost.
    Spot,
    /// On-Demand only.
    OnDemand,
    /// Spot first; On-Demand when Spot cannot place the worker or after it took the instance back.
    #[default]
    SpotThenOnDemand,
}

/// A purchase option of one launch attempt.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Market {
    /// Spot: spare capacity at its current price, which EC2 may take back.
    Spot,
    /// On-Demand: the list price, never taken back.
    OnDemand,
}

impl Market {
    /// As EC2 and the reports spell it (`spot`, `on-demand`).
    pub fn as_str(self) -> &'static str {
        match self {
            Market::Spot => "spot",
            Market::OnDemand => "on-demand",
        }
    }
}

impl MarketPolicy {
    /// As the RunSpec spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            MarketPolicy::Spot => "spot",
            MarketPolicy::OnDemand => "on-demand",
            MarketPolicy::SpotThenOnDemand => "spot-then-on-demand",
        }
    }

    /// Markets in the order they are tried. `force_on_demand` is set after a Spot interruption
    /// when the policy allows falling back.
    pub fn markets(self, force_on_demand: bool) -> Vec<Market> {
        match (self, force_on_demand) {
            (MarketPolicy::Spot, _) => vec![Market::Spot],
            (MarketPolicy::OnDemand, _) | (MarketPolicy::SpotThenOnDemand, true) => {
                vec![Market::OnDemand]
            }
            (MarketPolicy::SpotThenOnDemand, false) => vec![Market::Spot, Market::OnDemand],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn market_order() {
        assert_eq!(
            MarketPolicy::SpotThenOnDemand.markets(false),
            vec![Market::Spot, Market::OnDemand]
        );
        assert_eq!(
            MarketPolicy::SpotThenOnDemand.markets(true),
            vec![Market::OnDemand]
        );
        assert_eq!(MarketPolicy::Spot.markets(true), vec![Market::Spot]);
    }
}
