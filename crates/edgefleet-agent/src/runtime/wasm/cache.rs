//! Compiled modules by digest, so that a restart starts without compiling again.
//!
//! Small and in memory: compiled code is only ever produced by this engine in this process
//! (loading precompiled code from disk would need `unsafe`). Least recently used modules
//! go first; a running instance keeps its own reference, so evicting a module never
//! affects what runs.

use std::collections::HashMap;

use wasmtime::Module;

/// How many compiled modules are kept.
pub(super) const CACHED_MODULES: usize = 16;

#[derive(Default)]
pub(super) struct ModuleCache {
    entries: HashMap<String, Entry>,
    /// Counts uses, to find the least recently used entry.
    clock: u64,
}

struct Entry {
    module: Module,
    used: u64,
}

impl ModuleCache {
    pub(super) fn get(&mut self, digest: &str) -> Option<Module> {
        self.clock += 1;
        let entry = self.entries.get_mut(digest)?;
        entry.used = self.clock;
        Some(entry.module.clone())
    }

    pub(super) fn insert(&mut self, digest: &str, module: Module) {
        self.clock += 1;
        if !self.entries.contains_key(digest) && self.entries.len() >= CACHED_MODULES {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, entry)| entry.used)
                .map(|(digest, _)| digest.clone());
            if let Some(oldest) = oldest {
                self.entries.remove(&oldest);
            }
        }
        self.entries.insert(
            digest.to_owned(),
            Entry {
                module,
                used: self.clock,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_the_least_recently_used_module() {
        let engine = wasmtime::Engine::default();
        // The smallest valid module: the magic number and version 1.
        let module = Module::from_binary(&engine, b"\0asm\x01\0\0\0").unwrap();
        let mut cache = ModuleCache::default();
        for n in 0..CACHED_MODULES {
            cache.insert(&n.to_string(), module.clone());
        }
        assert!(cache.get("0").is_some());
        cache.insert("new", module);
        assert!(cache.get("0").is_some(), "recently used, kept");
        assert!(cache.get("1").is_none(), "least recently used, evicted");
        assert!(cache.get("new").is_some());
        assert_eq!(cache.entries.len(), CACHED_MODULES);
    }
}
