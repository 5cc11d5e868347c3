//! Multi-leader settings: this node's data centre, its peers and how they exchange.

use super::{invalid, member_url, ConfigError, ConfigFile};

#[derive(Debug, Clone)]
pub struct MultiLeaderConfig {
    pub dc: flotilla_types::OriginName,
    pub peers: Vec<(flotilla_types::OriginName, String)>,
    pub topology: ExchangeTopology,
    pub max_clock_drift_ms: u64,
}

/// How data centres pass changes on (see [`ConfigFile::exchange_topology`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeTopology {
    AllToAll,
    Star,
    Ring,
}

impl ExchangeTopology {
    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeTopology::AllToAll => "all-to-all",
            ExchangeTopology::Star => "star",
            ExchangeTopology::Ring => "ring",
        }
    }

    /// Whether a data centre passes on changes made elsewhere than at the peer it takes
    /// them from.
    pub fn forwards(self) -> bool {
        self != ExchangeTopology::AllToAll
    }
}

impl ConfigFile {
    pub(super) fn multi_leader_config(&self) -> Result<Option<MultiLeaderConfig>, ConfigError> {
        let Some(dc) = &self.dc else {
            if self.peer_dc.is_some() || self.exchange_topology.is_some() {
                return Err(invalid(
                    "peer-dc",
                    "peer data centres are only exchanged with by a data centre's leader: give \
                     this node's own data centre with --dc NAME",
                ));
            }
            return Ok(None);
        };
        let dc = flotilla_types::OriginName::new(dc).map_err(|e| invalid("dc", e.to_string()))?;
        // `<dc>--<n>` names the devices' origins a data centre gives (docs/devices.md).
        if dc.as_str().contains("--") {
            return Err(invalid(
                "dc",
                format!("{dc}: a data centre's name may not contain \"--\" (devices' origins are named <dc>--<n>)"),
            ));
        }
        let mut peers: Vec<(flotilla_types::OriginName, String)> = Vec::new();
        for item in self.peer_dc.iter().flatten() {
            let (name, url) = item.split_once('=').ok_or_else(|| {
                invalid(
                    "peer-dc",
                    format!("{item:?}: expected NAME=URL (us=10.0.1.1:4790)"),
                )
            })?;
            let name = flotilla_types::OriginName::new(name.trim())
                .map_err(|e| invalid("peer-dc", format!("{item:?}: {e}")))?;
            if name == dc {
                return Err(invalid(
                    "peer-dc",
                    format!(
                        "{name} is this node's own data centre (--dc {dc}): a peer is another one"
                    ),
                ));
            }
            if peers.iter().any(|(n, _)| *n == name) {
                return Err(invalid("peer-dc", format!("{name} is named twice")));
            }
            peers.push((name, member_url("peer-dc", url.trim())?));
        }
        let topology = match self.exchange_topology.as_deref() {
            None | Some("all-to-all") => ExchangeTopology::AllToAll,
            Some("star") => ExchangeTopology::Star,
            Some("ring") => ExchangeTopology::Ring,
            Some(other) => {
                return Err(invalid(
                    "exchange-topology",
                    format!("{other:?}: use all-to-all, star or ring"),
                ))
            }
        };
        let max_clock_drift_ms = self.max_clock_drift_ms.unwrap_or(60_000);
        if !(10..=86_400_000).contains(&max_clock_drift_ms) {
            return Err(invalid(
                "max-clock-drift-ms",
                "must be between 10 and 86400000 (a day)",
            ));
        }
        Ok(Some(MultiLeaderConfig {
            dc,
            peers,
            topology,
            max_clock_drift_ms,
        }))
    }
}
