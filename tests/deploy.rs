//! The operator files in deploy/: Prometheus accepts the scrape configuration and the alerting rules
//! (`promtool check config` / `check rules`), and the Grafana dashboard is JSON whose every query names only
//! metric families Portico exports.

use std::path::{Path, PathBuf};
use std::process::Command;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy").join(file)
}

fn promtool(args: &[&str]) -> Result<String, Box<dyn std::error::Error>> {
    let output = Command::new("promtool")
        .args(args)
        .output()
        .map_err(|e| format!("promtool (Debian package prometheus; scripts/install-test-deps): {e}"))?;
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    if output.status.success() { Ok(said) } else { Err(format!("promtool {args:?} failed: {said}").into()) }
}

/// Every family the binary's metrics module and collectors name, as they appear on /metrics.
const FAMILIES: &[&str] = &[
    "portico_http_server_request_duration_seconds",
    "portico_http_server_requests_in_flight",
    "portico_http_server_open_streams",
    "portico_http_server_request_body_bytes_total",
    "portico_http_server_response_body_bytes_total",
    "portico_upstream_call_duration_seconds",
    "portico_upstream_retries_total",
    "portico_upstream_retry_budget_exhausted_total",
    "portico_upstream_ready",
    "portico_upstream_endpoint_connections",
    "portico_upstream_endpoint_in_flight",
    "portico_upstream_endpoint_ejections",
    "portico_upstream_endpoint_health",
    "portico_upstream_endpoint_breaker_state",
    "portico_upstream_bulkhead_in_flight",
    "portico_upstream_bulkhead_queued",
    "portico_grpc_server_call_duration_seconds",
    "portico_user_service_watchers",
    "portico_user_service_watch_fanout_backlog",
    "portico_user_service_change_log_revision",
    "portico_user_service_change_log_entries",
    "portico_user_service_events_published_total",
    "portico_user_service_events_publish_failed_total",
    "portico_user_service_outbox_published_revision",
    "portico_user_service_password_hash_queue_wait_seconds",
    "portico_store_statement_duration_seconds",
    "portico_db_pool_connections",
    "portico_trace_spans_exported_total",
    "portico_trace_spans_dropped_total",
];

/// The `portico_*` metric names in a query, histogram suffixes removed.
fn names_in(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(start) = rest.find("portico_") {
        let tail = &rest[start..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        let name = &tail[..end];
        let family = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix).filter(|base| base.ends_with("_seconds")))
            .unwrap_or(name);
        names.push(family.to_string());
        rest = &tail[end..];
    }
    names
}

#[test]
fn prometheus_accepts_the_alerting_rules_and_the_scrape_configuration() -> TestResult {
    let rules = deploy("alerts.yml");
    let said = promtool(&["check", "rules", rules.to_str().ok_or("path")?])?;
    assert!(said.contains("SUCCESS"), "{said}");
    let config = deploy("prometheus.yml");
    promtool(&["check", "config", "--syntax-only", config.to_str().ok_or("path")?])?;

    let text = std::fs::read_to_string(&rules)?;
    for alert in
        ["PorticoHighErrorRatio", "PorticoHighLatencyP99", "PorticoUpstreamBreakerOpen", "PorticoNoReadyUpstream"]
    {
        assert!(text.contains(&format!("alert: {alert}")), "missing alert {alert}");
    }
    for name in names_in(&text) {
        assert!(FAMILIES.contains(&name.as_str()), "the rules use {name}, which Portico does not export");
    }
    Ok(())
}

#[test]
fn the_dashboard_queries_only_exported_families() -> TestResult {
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(deploy("grafana/portico-dashboard.json"))?)?;
    let panels = dashboard["panels"].as_array().ok_or("panels")?;
    let mut queried = 0;
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        let targets = panel["targets"].as_array().ok_or("targets")?;
        assert!(!targets.is_empty(), "panel {} has no query", panel["title"]);
        for target in targets {
            let expr = target["expr"].as_str().ok_or("expr")?;
            let names = names_in(expr);
            assert!(!names.is_empty(), "{expr}");
            for name in names {
                assert!(FAMILIES.contains(&name.as_str()), "panel {} uses {name}", panel["title"]);
            }
            queried += 1;
        }
    }
    assert!(queried >= 20, "{queried} queries");
    Ok(())
}
