//! What the agent, the collector and the query layer must agree on, in a
//! crate that pulls none of them in: the privacy rule for destination
//! addresses ([`address`]), the path conventions ([`paths`]), with the
//! feature `mimalloc` the allocator's purge delay (`allocator`) and with
//! `log` the binaries' log (`log`).

pub mod address;
#[cfg(feature = "mimalloc")]
pub mod allocator;
#[cfg(feature = "log")]
pub mod log;
pub mod paths;

#[cfg(test)]
mod tests {
    /// Every path `docs/architecture.md` names (in backticks, with a `/`)
    /// exists in the workspace, so the map of the stages stays true.
    #[test]
    fn docs_name_only_paths_that_exist() {
        // `cargo test` says where the package is when it runs the test: a
        // test binary reused from a build of another checkout (a shared
        // build cache) still reads this one's docs.
        let manifest = std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
        let root = std::path::Path::new(&manifest).join("..");
        let page = root.join("docs/architecture.md");
        let text = std::fs::read_to_string(&page).expect("docs/architecture.md");
        let paths: Vec<&str> = text
            .split('`')
            .skip(1)
            .step_by(2)
            .filter(|p| p.contains('/') && !p.contains(' ') && !p.starts_with("leakwatch."))
            .collect();
        assert!(paths.len() >= 40, "the page names its files: {paths:?}");
        let missing: Vec<&&str> = paths.iter().filter(|p| !root.join(p).exists()).collect();
        assert!(missing.is_empty(), "docs/architecture.md names paths that do not exist: {missing:?}");
    }
}
