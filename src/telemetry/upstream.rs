//! The upstream clusters' state as gauges, read from their admin snapshots on each scrape: readiness,
//! per-endpoint health, breaker state, ejections in a row, connections and calls in flight, and the bulkhead.

use std::sync::{Mutex, Once, PoisonError};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;

use crate::gateway::clusters::Clusters;
use crate::telemetry::metrics;
use crate::upstream::UpstreamSnapshot;
use crate::upstream::endpoint::{EndpointSnapshot, Health};

/// The clusters the page reports: those of the gateway started last (a process runs one gateway).
static OBSERVED: Mutex<Option<Clusters>> = Mutex::new(None);

/// Makes `clusters` the ones `/metrics` reports.
pub fn observe(clusters: &Clusters) {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| metrics::register_collector(Box::new(ClusterCollector)));
    *OBSERVED.lock().unwrap_or_else(PoisonError::into_inner) = Some(clusters.clone());
}

#[derive(Debug)]
struct ClusterCollector;

/// A gauge family read from a snapshot: name, help, value.
type Gauge<T> = (&'static str, &'static str, fn(&T) -> i64);

const HEALTH_STATES: [(Health, &str); 5] = [
    (Health::Unknown, "UNKNOWN"),
    (Health::Serving, "SERVING"),
    (Health::NotServing, "NOT_SERVING"),
    (Health::Unreachable, "UNREACHABLE"),
    (Health::Unchecked, "UNCHECKED"),
];
const BREAKER_STATES: [&str; 3] = ["CLOSED", "OPEN", "HALF_OPEN"];

impl Collector for ClusterCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(clusters) = OBSERVED.lock().unwrap_or_else(PoisonError::into_inner).clone() else {
            return Ok(());
        };
        let snapshots: Vec<_> =
            clusters.iter().map(|cluster| (cluster.name.clone(), cluster.upstream.snapshot())).collect();
        let gauge_type = ConstGauge::new(0i64).metric_type();

        let mut family = encoder.encode_descriptor(
            "upstream_ready",
            "1 when the cluster has an endpoint confirmed serving and not ejected",
            None,
            gauge_type,
        )?;
        for (cluster, snapshot) in &snapshots {
            let labels = [("cluster", cluster.as_str())];
            ConstGauge::new(i64::from(snapshot.ready)).encode(family.encode_family(&labels)?)?;
        }

        let per_endpoint: [Gauge<EndpointSnapshot>; 3] = [
            (
                "upstream_endpoint_connections",
                "HTTP/2 connections made to the endpoint (reconnected by the gateway when they fail)",
                |e| e.connections as i64,
            ),
            ("upstream_endpoint_in_flight", "Calls in flight on the endpoint", |e| e.in_flight as i64),
            (
                "upstream_endpoint_ejections",
                "Breaker ejections of the endpoint in a row (decays while it behaves)",
                |e| i64::from(e.ejections),
            ),
        ];
        for (name, help, value) in per_endpoint {
            let mut family = encoder.encode_descriptor(name, help, None, gauge_type)?;
            for (cluster, snapshot) in &snapshots {
                for endpoint in &snapshot.endpoints {
                    let labels = [("cluster", cluster.as_str()), ("endpoint", endpoint.address.as_str())];
                    ConstGauge::new(value(endpoint)).encode(family.encode_family(&labels)?)?;
                }
            }
        }

        let mut family = encoder.encode_descriptor(
            "upstream_endpoint_health",
            "1 for the endpoint's current grpc.health.v1 state, 0 for the others",
            None,
            gauge_type,
        )?;
        for (cluster, snapshot) in &snapshots {
            for endpoint in &snapshot.endpoints {
                for (health, state) in HEALTH_STATES {
                    let labels =
                        [("cluster", cluster.as_str()), ("endpoint", endpoint.address.as_str()), ("state", state)];
                    ConstGauge::new(i64::from(endpoint.health == health)).encode(family.encode_family(&labels)?)?;
                }
            }
        }

        let mut family = encoder.encode_descriptor(
            "upstream_endpoint_breaker_state",
            "1 for the endpoint's current breaker state, 0 for the others",
            None,
            gauge_type,
        )?;
        for (cluster, snapshot) in &snapshots {
            for endpoint in &snapshot.endpoints {
                for state in BREAKER_STATES {
                    let labels =
                        [("cluster", cluster.as_str()), ("endpoint", endpoint.address.as_str()), ("state", state)];
                    ConstGauge::new(i64::from(endpoint.breaker.state == state))
                        .encode(family.encode_family(&labels)?)?;
                }
            }
        }

        let bulkhead: [Gauge<UpstreamSnapshot>; 2] = [
            ("upstream_bulkhead_in_flight", "Calls holding a bulkhead slot", |s| s.limit.in_flight as i64),
            ("upstream_bulkhead_queued", "Calls waiting for a bulkhead slot", |s| s.limit.queued as i64),
        ];
        for (name, help, value) in bulkhead {
            let mut family = encoder.encode_descriptor(name, help, None, gauge_type)?;
            for (cluster, snapshot) in &snapshots {
                let labels = [("cluster", cluster.as_str())];
                ConstGauge::new(value(snapshot)).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}
