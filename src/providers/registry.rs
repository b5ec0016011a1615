//! The providers enabled in the config, and their last known health.
//!
//! Health probes can take a moment (a socket connect, a tool run), so the
//! monitor refreshes them in the background and `/health` reads the cache.

use super::{Health, Provider};
use crate::config::Config;
use crate::protocol::ProviderKind;
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

pub(crate) struct Registry {
    providers: BTreeMap<ProviderKind, Arc<dyn Provider>>,
    health: RwLock<BTreeMap<ProviderKind, Health>>,
}

impl Registry {
    /// Builds the enabled providers. Building never fails: a provider that
    /// cannot work here is kept and reports why in its health.
    pub(crate) fn from_config(config: &Config, node_id: &str) -> Registry {
        let mut providers: Vec<Arc<dyn Provider>> = Vec::new();
        for kind in &config.providers {
            let p: Arc<dyn Provider> = match kind {
                ProviderKind::Docker => {
                    Arc::new(super::docker::DockerProvider::new(config, node_id))
                }
                ProviderKind::Lxc => Arc::new(super::lxc::LxcProvider::new(config, node_id)),
                ProviderKind::Qemu => Arc::new(super::qemu::QemuProvider::new(config, node_id)),
            };
            providers.push(p);
        }
        Registry::new(providers)
    }

    pub(crate) fn new(providers: Vec<Arc<dyn Provider>>) -> Registry {
        let providers: BTreeMap<_, _> = providers.into_iter().map(|p| (p.kind(), p)).collect();
        Registry {
            providers,
            health: RwLock::new(BTreeMap::new()),
        }
    }

    pub(crate) fn get(&self, kind: ProviderKind) -> Option<Arc<dyn Provider>> {
        self.providers.get(&kind).cloned()
    }

    pub(crate) fn all(&self) -> impl Iterator<Item = &Arc<dyn Provider>> {
        self.providers.values()
    }

    pub(crate) fn kinds(&self) -> Vec<ProviderKind> {
        self.providers.keys().copied().collect()
    }

    /// Probes every provider now and caches the answers.
    pub(crate) fn refresh(&self) -> BTreeMap<ProviderKind, Health> {
        let fresh: BTreeMap<_, _> = self
            .providers
            .iter()
            .map(|(k, p)| (*k, p.health()))
            .collect();
        let mut cache = self.health.write().unwrap_or_else(|p| p.into_inner());
        for (kind, h) in &fresh {
            match cache.get(kind) {
                Some(old) if old.ok && !h.ok => {
                    log::warn!(provider = kind.as_str(); "provider {kind} is down: {}", h.message)
                }
                Some(old) if !old.ok && h.ok => {
                    log::info!(provider = kind.as_str(); "provider {kind} is back: {}", h.message)
                }
                None if !h.ok => {
                    log::info!(provider = kind.as_str(); "provider {kind} is not usable: {}", h.message)
                }
                _ => {}
            }
        }
        *cache = fresh.clone();
        fresh
    }

    /// The cached health of every enabled provider (probing once if never probed).
    pub(crate) fn health(&self) -> BTreeMap<ProviderKind, Health> {
        let cache = self.health.read().unwrap_or_else(|p| p.into_inner());
        if cache.len() == self.providers.len() {
            return cache.clone();
        }
        drop(cache);
        self.refresh()
    }

    /// Providers usable right now: the node's capabilities.
    pub(crate) fn usable(&self) -> Vec<ProviderKind> {
        self.health()
            .into_iter()
            .filter(|(_, h)| h.ok)
            .map(|(k, _)| k)
            .collect()
    }
}
