//! The upstream clusters: the default upstream (`--upstream`) and one cluster per `--service-upstream`, each
//! with its own endpoints, pool, health checks, breakers, retry budget and bulkhead. Clusters come from flags,
//! not descriptors, so they live as long as the process; a catalog maps each route to one of them.

use std::str::FromStr;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::upstream::{Upstream, UpstreamConfig, UpstreamError};

/// The name of the cluster of `--upstream`.
pub const DEFAULT_CLUSTER: &str = "default";

/// `--service-upstream package.Service=TARGETS`: one service's calls go to a cluster of their own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceUpstream {
    /// `package.Service`.
    pub service: String,
    /// Targets as for `--upstream`: `http://host:port`, `dns://name:port`, `file://path.json`.
    pub targets: Vec<String>,
}

impl FromStr for ServiceUpstream {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (service, targets) = text
            .split_once('=')
            .ok_or_else(|| format!("{text:?} is not package.Service=TARGETS (e.g. shop.Cart=http://cart:50051)"))?;
        let service = service.trim();
        let valid_name = !service.is_empty()
            && service
                .split('.')
                .all(|part| !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
        if !valid_name {
            return Err(format!("{service:?} is not a fully qualified service name such as shop.Cart"));
        }
        let targets: Vec<String> =
            targets.split(',').map(str::trim).filter(|t| !t.is_empty()).map(str::to_string).collect();
        if targets.is_empty() {
            return Err(format!("{service} has no upstream targets"));
        }
        Ok(Self { service: service.to_string(), targets })
    }
}

/// One named upstream.
pub struct Cluster {
    /// [`DEFAULT_CLUSTER`] or the service it serves.
    pub name: String,
    pub upstream: Upstream,
}

/// Every cluster, the default one first; cheap to clone.
#[derive(Clone)]
pub struct Clusters {
    list: Arc<[Cluster]>,
}

impl Clusters {
    /// Starts the default upstream and one cluster per service upstream, all with `config`.
    ///
    /// # Errors
    ///
    /// An invalid target, or one service given two upstreams.
    pub fn start(
        default_targets: &[String],
        service_upstreams: &[ServiceUpstream],
        config: &UpstreamConfig,
        cancel: &CancellationToken,
    ) -> Result<Self, UpstreamError> {
        let mut list = vec![Cluster {
            name: DEFAULT_CLUSTER.into(),
            upstream: Upstream::start_named(DEFAULT_CLUSTER, default_targets, config.clone(), cancel.clone())?,
        }];
        for entry in service_upstreams {
            if list.iter().any(|cluster| cluster.name == entry.service) {
                return Err(UpstreamError::Setting(format!("service {} is given two upstreams", entry.service)));
            }
            let upstream = Upstream::start_named(&entry.service, &entry.targets, config.clone(), cancel.clone())?;
            list.push(Cluster { name: entry.service.clone(), upstream });
        }
        Ok(Self { list: list.into() })
    }

    /// The cluster at `index` (from a route); the default one for an index out of range.
    pub fn get(&self, index: usize) -> &Cluster {
        self.list.get(index).unwrap_or(&self.list[0])
    }

    /// The index of the cluster given to `service` by `--service-upstream`.
    pub fn index_of_service(&self, service: &str) -> Option<usize> {
        self.list.iter().skip(1).position(|cluster| cluster.name == service).map(|position| position + 1)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Cluster> {
        self.list.iter()
    }

    /// Every cluster has an endpoint confirmed serving and not ejected.
    pub fn all_ready(&self) -> bool {
        self.list.iter().all(|cluster| cluster.upstream.is_ready())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_upstreams_parse() {
        assert_eq!(
            "shop.Cart=http://a:1,dns://b:2".parse::<ServiceUpstream>(),
            Ok(ServiceUpstream { service: "shop.Cart".into(), targets: vec!["http://a:1".into(), "dns://b:2".into()] })
        );
        for bad in ["shop.Cart", "=http://a:1", "shop.Cart=", "shop..Cart=http://a:1", "shop/Cart=http://a:1"] {
            assert!(bad.parse::<ServiceUpstream>().is_err(), "{bad}");
        }
    }
}
