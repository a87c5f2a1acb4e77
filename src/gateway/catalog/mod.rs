//! The catalog: everything the gateway derives from descriptors, as one immutable value swapped whole on
//! reload: the route table (each route knowing its upstream cluster), the OpenAPI document, and a summary of
//! the services for the admin view.
//!
//! ```text
//! sources (embedded | --descriptor-set files | --proto sources | --reflection per cluster)
//!   ─▶ FileSet (fileset.rs: raw files merged by name, imports checked) ─▶ DescriptorPool
//!   ─▶ RouteTable (rules.rs) + clusters assigned + OpenAPI ─▶ Catalog ─▶ LiveCatalog (ArcSwap)
//! ```
//!
//! A request loads the current catalog once and keeps its route to the end, so a reload never changes a
//! request (or an open stream) that has started. A load that fails changes nothing but the reload status.
//! `reload.rs` decides when to load: file changes, SIGHUP, the reflection refresh interval, and changes of a
//! cluster's endpoint set.

mod fileset;
mod protos;
mod reflection;
pub mod reload;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use prost_reflect::DescriptorPool;
use serde::Serialize;

use crate::gateway::clusters::Clusters;
use crate::gateway::openapi;
use crate::gateway::rules::{RouteOptions, RouteTable, RuleError};
use crate::upstream::endpoint::unix_secs;
use fileset::FileSet;

/// How long start-up waits for an upstream's reflection to answer before giving up.
pub const STARTUP_REFLECTION_WAIT: Duration = Duration::from_secs(60);

/// Where the descriptors come from. With no file, no .proto source and no reflection, the descriptors compiled
/// into the binary are served.
#[derive(Debug, Clone, PartialEq)]
pub struct DescriptorSources {
    /// Binary FileDescriptorSets (`protoc --include_imports --descriptor_set_out`, `buf build -o`).
    pub descriptor_sets: Vec<PathBuf>,
    /// .proto files compiled with protox at each load.
    pub protos: Vec<PathBuf>,
    /// Include paths for `protos` (the current directory when empty).
    pub proto_paths: Vec<PathBuf>,
    /// Read each cluster's descriptors from its gRPC server reflection.
    pub reflection: bool,
    /// How often reflection is read again.
    pub reflection_refresh: Duration,
    /// How long one reflection exchange (connect, then each answer) may take.
    pub reflection_timeout: Duration,
}

impl Default for DescriptorSources {
    fn default() -> Self {
        Self {
            descriptor_sets: Vec::new(),
            protos: Vec::new(),
            proto_paths: Vec::new(),
            reflection: false,
            reflection_refresh: Duration::from_secs(60),
            reflection_timeout: Duration::from_secs(5),
        }
    }
}

impl DescriptorSources {
    /// No source is configured: the embedded descriptors are served, and nothing reloads.
    pub fn is_embedded(&self) -> bool {
        self.descriptor_sets.is_empty() && self.protos.is_empty() && !self.reflection
    }

    /// The sources as the admin view lists them.
    fn describe(&self) -> Vec<String> {
        if self.is_embedded() {
            return vec!["embedded".into()];
        }
        let mut sources: Vec<String> =
            self.descriptor_sets.iter().map(|path| format!("descriptor set {}", path.display())).collect();
        sources.extend(self.protos.iter().map(|path| format!("proto {}", path.display())));
        if self.reflection {
            sources.push("reflection".into());
        }
        sources
    }
}

/// Why descriptors could not be loaded. At start-up this stops the process; on reload the previous catalog
/// keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{origin}: {reason}")]
    Decode { origin: String, reason: String },
    #[error(
        "{origin}: {file} imports {import}, which no source provides (build descriptor sets with --include_imports)"
    )]
    MissingImport { origin: String, file: String, import: String },
    #[error("{place}: {message}")]
    Compile { place: String, message: String },
    #[error("reflection of {endpoint}: {reason}")]
    Reflection { endpoint: String, reason: String },
    #[error("{0}")]
    Clusters(String),
    #[error(transparent)]
    Rules(#[from] RuleError),
}

/// One service as the admin view shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceSummary {
    pub name: String,
    pub cluster: String,
    pub routes: usize,
}

/// The descriptors' derived state, immutable once built.
pub struct Catalog {
    pub routes: RouteTable,
    /// The OpenAPI document of `routes`, serialized once.
    pub openapi: Bytes,
    pub services: Vec<ServiceSummary>,
}

/// The result of the latest load, for the admin view.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadStatus {
    /// What started it: `start-up`, `SIGHUP`, `file change`, `reflection refresh`, `endpoint change`.
    pub trigger: String,
    pub at_unix_secs: f64,
    pub ok: bool,
    pub error: Option<String>,
    pub duration_ms: f64,
    /// When the serving catalog was loaded.
    pub serving_since_unix_secs: f64,
    pub reloads: u64,
    pub failed_reloads: u64,
}

/// What a load needs besides the sources.
pub struct Loader {
    pub sources: DescriptorSources,
    pub routes: RouteOptions,
    /// `--idempotent-rpcs` and `--non-idempotent-rpcs`.
    pub idempotent_rpcs: Vec<String>,
    pub non_idempotent_rpcs: Vec<String>,
    /// The descriptors compiled into the binary.
    pub embedded: DescriptorPool,
    pub clusters: Clusters,
    /// TLS to `https://` upstreams, for reading their reflection.
    pub upstream_tls: crate::upstream::tls::UpstreamTls,
}

impl Loader {
    /// Builds a complete catalog from the sources.
    ///
    /// # Errors
    ///
    /// Any source that cannot be read, compiled or reached, descriptors that do not link, and rules that
    /// cannot be served; nothing is partially applied.
    pub async fn load(&self) -> Result<Catalog, LoadError> {
        let (pool, reflected) = self.pool().await?;
        let mut routes = RouteTable::build(&pool, &self.routes)?;
        routes.override_idempotency(&self.idempotent_rpcs, &self.non_idempotent_rpcs)?;
        // A service named by --service-upstream goes to its cluster; with reflection, another service goes to
        // the cluster whose reflection listed it; the rest to the default upstream.
        let cluster_of = |service: &str| {
            self.clusters.index_of_service(service).unwrap_or_else(|| {
                reflected.iter().find(|(_, names)| names.iter().any(|n| n == service)).map_or(0, |(index, _)| *index)
            })
        };
        routes.assign_clusters(cluster_of);
        let mut services: Vec<ServiceSummary> = Vec::new();
        for route in routes.routes() {
            match services.iter_mut().find(|s| s.name == route.service_name()) {
                Some(summary) => summary.routes += 1,
                None => services.push(ServiceSummary {
                    name: route.service_name().to_string(),
                    cluster: self.clusters.get(route.cluster).name.clone(),
                    routes: 1,
                }),
            }
        }
        services.sort_by(|a, b| a.name.cmp(&b.name));
        let openapi = openapi::document_json(&routes)
            .map_err(|e| LoadError::Decode { origin: "OpenAPI document".into(), reason: e.to_string() })?;
        Ok(Catalog { routes, openapi: Bytes::from(openapi), services })
    }

    /// The descriptor pool, and, with reflection, which services each cluster (by index) listed.
    async fn pool(&self) -> Result<(DescriptorPool, Vec<(usize, Vec<String>)>), LoadError> {
        if self.sources.is_embedded() {
            return Ok((self.embedded.clone(), Vec::new()));
        }
        let mut files = FileSet::default();
        for path in &self.sources.descriptor_sets {
            let encoded = read(path).await?;
            files.add_set(&encoded, &path.display().to_string())?;
        }
        if !self.sources.protos.is_empty() {
            let (protos, paths) = (self.sources.protos.clone(), self.sources.proto_paths.clone());
            let encoded = tokio::task::spawn_blocking(move || protos::compile(&protos, &paths))
                .await
                .map_err(|e| LoadError::Compile { place: ".proto sources".into(), message: e.to_string() })??;
            files.add_set(&encoded, ".proto sources")?;
        }
        let mut reflected = Vec::new();
        if self.sources.reflection {
            for (index, cluster) in self.clusters.iter().enumerate() {
                let services = self.reflect(cluster, &mut files).await?;
                if index > 0 && !services.contains(&cluster.name) {
                    return Err(LoadError::Clusters(format!(
                        "the reflection of cluster {} does not list service {}",
                        cluster.name, cluster.name
                    )));
                }
                reflected.push((index, services));
            }
        }
        Ok((files.into_pool()?, reflected))
    }

    /// Reads a cluster's reflection from the first of its endpoints that answers.
    async fn reflect(
        &self,
        cluster: &crate::gateway::clusters::Cluster,
        files: &mut FileSet,
    ) -> Result<Vec<String>, LoadError> {
        let timeout = self.sources.reflection_timeout;
        let addresses = cluster.upstream.endpoint_addresses(timeout).await;
        let mut last_error =
            LoadError::Reflection { endpoint: cluster.name.clone(), reason: "the cluster has no endpoints".into() };
        for address in addresses {
            // A failed endpoint must not leave half its files behind for the next one to build on.
            let mut attempt = FileSet::default();
            match reflection::fetch(&address, timeout, &self.upstream_tls, &mut attempt).await {
                Ok(reflected) => {
                    tracing::debug!(cluster = %cluster.name, endpoint = %address, version = reflected.version, services = ?reflected.services, "descriptors read by reflection");
                    files.extend(attempt);
                    return Ok(reflected.services);
                }
                Err(error) => last_error = error,
            }
        }
        Err(last_error)
    }
}

async fn read(path: &std::path::Path) -> Result<Vec<u8>, LoadError> {
    tokio::fs::read(path).await.map_err(|e| LoadError::Read { path: path.display().to_string(), reason: e.to_string() })
}

/// The serving catalog, its loader, and the status of the latest load.
pub struct LiveCatalog {
    current: ArcSwap<Catalog>,
    loader: Loader,
    status: Mutex<ReloadStatus>,
    /// One load at a time: two triggers together must not race to swap.
    loading: tokio::sync::Mutex<()>,
}

impl LiveCatalog {
    /// Loads the first catalog. With reflection, an upstream that does not answer yet is waited for, up to
    /// [`STARTUP_REFLECTION_WAIT`]: a sidecar often starts before the service it fronts.
    ///
    /// # Errors
    ///
    /// As [`Loader::load`]: at start-up a bad source stops the process.
    pub async fn start(loader: Loader) -> Result<Self, LoadError> {
        let started = std::time::Instant::now();
        let catalog = loop {
            match loader.load().await {
                Err(LoadError::Reflection { endpoint, reason }) if started.elapsed() < STARTUP_REFLECTION_WAIT => {
                    tracing::info!(%endpoint, %reason, "waiting for the upstream's reflection to answer");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                loaded => break loaded?,
            }
        };
        let now = SystemTime::now();
        log_loaded(&catalog, "start-up");
        let status = ReloadStatus {
            trigger: "start-up".into(),
            at_unix_secs: unix_secs(now),
            ok: true,
            error: None,
            duration_ms: started.elapsed().as_secs_f64() * 1000.0,
            serving_since_unix_secs: unix_secs(now),
            reloads: 0,
            failed_reloads: 0,
        };
        Ok(Self {
            current: ArcSwap::from_pointee(catalog),
            loader,
            status: Mutex::new(status),
            loading: tokio::sync::Mutex::new(()),
        })
    }

    /// The serving catalog; hold the `Arc` for as long as the request needs it.
    pub fn current(&self) -> Arc<Catalog> {
        self.current.load_full()
    }

    pub fn sources(&self) -> &DescriptorSources {
        &self.loader.sources
    }

    pub fn clusters(&self) -> &Clusters {
        &self.loader.clusters
    }

    pub fn status(&self) -> ReloadStatus {
        self.status.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Loads the sources again and swaps the new catalog in. On failure the previous catalog keeps serving,
    /// and the error is logged and kept for the admin view.
    pub async fn reload(&self, trigger: &str) -> Result<(), Arc<LoadError>> {
        let _one_at_a_time = self.loading.lock().await;
        let started = std::time::Instant::now();
        let loaded = self.loader.load().await;
        let now = SystemTime::now();
        let mut status = self.status.lock().unwrap_or_else(PoisonError::into_inner);
        status.trigger = trigger.to_string();
        status.at_unix_secs = unix_secs(now);
        status.duration_ms = started.elapsed().as_secs_f64() * 1000.0;
        status.reloads += 1;
        match loaded {
            Ok(catalog) => {
                log_loaded(&catalog, trigger);
                self.current.store(Arc::new(catalog));
                status.ok = true;
                status.error = None;
                status.serving_since_unix_secs = unix_secs(now);
                Ok(())
            }
            Err(error) => {
                tracing::warn!(%trigger, %error, "reload failed; the previous descriptors keep serving");
                status.ok = false;
                status.error = Some(error.to_string());
                status.failed_reloads += 1;
                Err(Arc::new(error))
            }
        }
    }

    /// Everything `GET /admin/descriptors` shows.
    pub fn admin_view(&self) -> serde_json::Value {
        let catalog = self.current();
        serde_json::json!({
            "sources": self.loader.sources.describe(),
            "services": catalog.services,
            "routes": catalog.routes.routes().len(),
            "last_reload": self.status(),
        })
    }
}

fn log_loaded(catalog: &Catalog, trigger: &str) {
    let services: Vec<String> =
        catalog.services.iter().map(|s| format!("{} ({} routes → {})", s.name, s.routes, s.cluster)).collect();
    tracing::info!(%trigger, routes = catalog.routes.routes().len(), ?services, "descriptors loaded");
}
