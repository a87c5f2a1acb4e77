//! A real browser against the gateway: headless Chromium runs an `EventSource` on the watch route (snapshot,
//! then a live change the page itself causes with `fetch`), and renders Swagger UI from the assets embedded
//! in the binary. Needs Chromium (scripts/install-test-deps installs it; CHROMIUM=path overrides); without it
//! these tests fail rather than pass silently.

mod common;

use std::time::Duration;

use common::rest::post_json;
use common::{TestResult, start_gateway_with};
use serde_json::json;

fn chromium() -> String {
    if let Ok(path) = std::env::var("CHROMIUM") {
        return path;
    }
    for candidate in ["chromium", "chromium-browser"] {
        if std::process::Command::new("which").arg(candidate).output().map(|o| o.status.success()).unwrap_or(false) {
            return candidate.to_string();
        }
    }
    panic!("Chromium not found: run scripts/install-test-deps or set CHROMIUM=/path/to/chromium");
}

/// Loads `url` in headless Chromium and returns the DOM once the page has run for up to `budget`.
async fn dump_dom(url: &str, budget: Duration) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    let profile = tempfile::tempdir()?;
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                &format!("--user-data-dir={}", profile.path().display()),
                &format!("--virtual-time-budget={}", budget.as_millis()),
                "--dump-dom",
                url,
            ])
            .kill_on_drop(true)
            .output(),
    )
    .await??;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[tokio::test]
async fn a_browser_event_source_receives_the_snapshot_and_live_changes() -> TestResult {
    let gateway = start_gateway_with(|config| config.cors_allowed_origins = vec!["*".into()]).await;
    let addr = gateway.addr;
    post_json(addr, "/v1/users", &json!({"name": "Ada", "email": "ada@example.com", "password": "password-1"})).await?;

    // The page watches, and once the snapshot is complete creates a user itself; it records every event's
    // type, revision and lastEventId, and writes them into the DOM when the live event has arrived.
    let page = format!(
        r#"<html><body><pre id="out">waiting</pre><script>
const base = 'http://{addr}';
const seen = [];
const source = new EventSource(base + '/v1/users:watch');
source.onmessage = (event) => {{
  const data = JSON.parse(event.data);
  seen.push({{type: data.type, revision: data.revision, lastEventId: event.lastEventId}});
  if (data.type === 'USER_EVENT_TYPE_SNAPSHOT_COMPLETE') {{
    fetch(base + '/v1/users', {{method: 'POST', headers: {{'Content-Type': 'application/json'}},
      body: JSON.stringify({{name: 'Browser', email: 'browser@example.com', password: 'password-2'}})}});
  }}
  if (data.type === 'USER_EVENT_TYPE_CREATED') {{
    source.close();
    document.getElementById('out').textContent = JSON.stringify(seen);
  }}
}};
source.onerror = () => {{ document.getElementById('out').textContent += ' error'; }};
</script></body></html>"#
    );
    // The page comes from its own origin, as a web app's would, so the watch and the POST are cross-origin
    // requests that the gateway's CORS configuration allows.
    let app = axum::Router::new().route("/", axum::routing::get(move || async move { axum::response::Html(page) }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let app_addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    let dom = dump_dom(&format!("http://{app_addr}/"), Duration::from_secs(10)).await?;
    let output = dom
        .split("<pre id=\"out\">")
        .nth(1)
        .and_then(|rest| rest.split("</pre>").next())
        .ok_or_else(|| format!("no output element in the page: {dom}"))?;
    let events: serde_json::Value =
        serde_json::from_str(&output.replace("&quot;", "\"")).map_err(|e| format!("page output {output:?}: {e}"))?;
    let events = events.as_array().ok_or("array")?;
    let types: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(types, ["USER_EVENT_TYPE_EXISTING", "USER_EVENT_TYPE_SNAPSHOT_COMPLETE", "USER_EVENT_TYPE_CREATED"]);
    // The browser's lastEventId follows the SSE ids: empty for the snapshot, then the revision.
    assert_eq!(events[0]["lastEventId"], "");
    assert_eq!(events[1]["lastEventId"], events[1]["revision"]);
    assert_eq!(events[2]["lastEventId"], events[2]["revision"]);
    Ok(())
}

#[tokio::test]
async fn swagger_ui_renders_the_api_from_embedded_assets() -> TestResult {
    let gateway = start_gateway_with(|_| {}).await;
    let dom = dump_dom(&format!("http://{}/docs/", gateway.addr), Duration::from_secs(10)).await?;
    assert!(dom.contains("swagger-ui"), "Swagger UI rendered: {}", &dom[..dom.len().min(500)]);
    for expected in ["/v1/users/{id}", "/v1/users:watch", "/v1/users:batchCreate"] {
        assert!(dom.contains(expected), "the UI lists {expected}");
    }
    // The bearer scheme of the document gives the UI its "Authorize" button, and locks on secured operations.
    assert!(dom.contains("btn authorize"), "Swagger UI shows the Authorize button");
    assert!(dom.contains("authorization__btn"), "secured operations show their lock");
    Ok(())
}
