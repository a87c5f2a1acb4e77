//! When the catalog is loaded again: a descriptor file or .proto source changes (an atomic rename counts, as
//! config management tools replace files that way), SIGHUP arrives, the reflection refresh interval passes, or
//! a cluster's endpoint set changes while descriptors come from reflection.
//!
//! Files are watched through their directories, not the files themselves: a rename replaces the inode, and a
//! watch on the old one would go quiet. Bursts of events (an editor writes, renames, touches) are coalesced
//! into one load after a short settling delay.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::LiveCatalog;

/// How long a burst of file events must be quiet before the load starts.
const SETTLE: Duration = Duration::from_millis(150);

/// Starts what reloads `live` by itself (file watching, reflection refresh), until `shutdown`.
pub fn spawn(live: &Arc<LiveCatalog>, shutdown: &CancellationToken) {
    let sources = live.sources();
    if !sources.descriptor_sets.is_empty() || !sources.protos.is_empty() {
        match watch_files(live) {
            Ok(task) => {
                tokio::spawn(shutdown.clone().run_until_cancelled_owned(task));
            }
            Err(error) => tracing::warn!(%error, "cannot watch the descriptor files; SIGHUP still reloads them"),
        }
    }
    if sources.reflection {
        tokio::spawn(
            shutdown.clone().run_until_cancelled_owned(refresh_reflection(Arc::clone(live), shutdown.clone())),
        );
    }
}

/// Reloads on every SIGHUP, until `shutdown`.
pub fn reload_on_sighup(live: &Arc<LiveCatalog>, shutdown: &CancellationToken) {
    #[cfg(unix)]
    {
        let live = Arc::clone(live);
        let hangups = async move {
            let mut signal = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
                Ok(signal) => signal,
                Err(error) => {
                    tracing::warn!(%error, "cannot listen for SIGHUP");
                    return;
                }
            };
            while signal.recv().await.is_some() {
                tracing::info!("SIGHUP received; reloading the descriptors");
                let _ = live.reload("SIGHUP").await;
            }
        };
        tokio::spawn(shutdown.clone().run_until_cancelled_owned(hangups));
    }
    #[cfg(not(unix))]
    let _ = (live, shutdown);
}

/// What the file watcher looks at: directories, and which names in them matter.
struct WatchedFiles {
    /// Directories of descriptor sets and .proto files (non-recursive), and include paths (recursive). The
    /// current directory, the compiler's include path when none is given, is never watched recursively: it
    /// may be `/`.
    directories: BTreeSet<(PathBuf, bool)>,
    /// Descriptor-set file names; besides these, any `.proto` file counts.
    names: BTreeSet<std::ffi::OsString>,
}

impl WatchedFiles {
    fn of(live: &LiveCatalog) -> Self {
        let sources = live.sources();
        let mut directories = BTreeSet::new();
        let mut names = BTreeSet::new();
        for file in &sources.descriptor_sets {
            directories.insert((parent(file), false));
            if let Some(name) = file.file_name() {
                names.insert(name.to_os_string());
            }
        }
        // A .proto file is named relative to an include path (watched below), or by a path of its own.
        for file in sources.protos.iter().filter(|file| file.exists()) {
            directories.insert((parent(file), false));
        }

        for include in &sources.proto_paths {
            directories.insert((include.clone(), true));
        }
        Self { directories, names }
    }

    fn matters(&self, path: &Path) -> bool {
        path.extension().is_some_and(|ext| ext == "proto")
            || path.file_name().is_some_and(|name| self.names.contains(name))
    }
}

fn parent(file: &Path) -> PathBuf {
    match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn watch_files(live: &Arc<LiveCatalog>) -> Result<impl Future<Output = ()> + Send + 'static, notify::Error> {
    let watched = WatchedFiles::of(live);
    let (changed, mut changes) = mpsc::channel::<()>(1);
    let names = watched.names.clone();
    let filter = WatchedFiles { directories: BTreeSet::new(), names };
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        // Reading the files (our own loads included) makes access events; only writes count.
        let relevant = match event.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
            EventKind::Access(_) => false,
            _ => true,
        };
        if relevant && event.paths.iter().any(|path| filter.matters(path)) {
            // A full channel means a load is already due; it will read this change too.
            let _ = changed.try_send(());
        }
    })?;
    for (directory, recursive) in &watched.directories {
        let mode = if *recursive { RecursiveMode::Recursive } else { RecursiveMode::NonRecursive };
        watcher.watch(directory, mode)?;
    }
    let live = Arc::clone(live);
    Ok(async move {
        let _watcher = watcher;
        while changes.recv().await.is_some() {
            // Let the burst settle: an editor or a config tool touches the file several times.
            loop {
                tokio::time::sleep(SETTLE).await;
                if changes.try_recv().is_err() {
                    break;
                }
            }
            tracing::info!("descriptor files changed; reloading");
            let _ = live.reload("file change").await;
        }
    })
}

/// Reads reflection again every refresh interval, and soon after any cluster's endpoint set changes (a new
/// replica may run a newer version of the service).
async fn refresh_reflection(live: Arc<LiveCatalog>, shutdown: CancellationToken) {
    let interval = live.sources().reflection_refresh;
    let (changed, mut changes) = mpsc::channel::<()>(1);
    for cluster in live.clusters().iter() {
        let mut endpoint_set = cluster.upstream.endpoint_set_changes();
        let changed = changed.clone();
        let forward = async move {
            endpoint_set.borrow_and_update();
            while endpoint_set.changed().await.is_ok() {
                // Full: a reload is already due, and it will see this change too.
                let _ = changed.try_send(());
            }
        };
        tokio::spawn(shutdown.clone().run_until_cancelled_owned(forward));
    }
    drop(changed);
    let mut next = tokio::time::Instant::now() + interval;
    loop {
        let trigger = tokio::select! {
            () = tokio::time::sleep_until(next) => "reflection refresh",
            Some(()) = changes.recv() => {
                tokio::time::sleep(SETTLE).await;
                while changes.try_recv().is_ok() {}
                "endpoint change"
            }
        };
        let _ = live.reload(trigger).await;
        next = tokio::time::Instant::now() + interval;
    }
}
