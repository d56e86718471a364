//! Where leakwatch keeps files of a user's: the XDG base-directory rule.

use std::path::PathBuf;

/// `$VAR/APP/LEAF`, else `~/HOME_DIR/APP/LEAF`, else `FALLBACK` in the
/// working directory: the XDG base-directory rule.
pub fn user_path(var: &str, home_dir: &str, app: &str, leaf: &str, fallback: &str) -> PathBuf {
    let base =
        match (std::env::var_os(var).filter(|d| !d.is_empty()), std::env::var_os("HOME").filter(|d| !d.is_empty())) {
            (Some(dir), _) => PathBuf::from(dir),
            (None, Some(home)) => PathBuf::from(home).join(home_dir),
            (None, None) => return PathBuf::from(fallback),
        };
    let dir = base.join(app);
    if leaf.is_empty() { dir } else { dir.join(leaf) }
}
