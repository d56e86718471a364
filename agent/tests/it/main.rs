//! Integration tests of the agent (one binary; modules per area).

mod baselines;
mod captures;
mod check;
mod devices;
mod dry_run;
mod imports;
mod labels;
mod lan;
mod live;
mod privacy;

use std::path::PathBuf;

/// The third-party captures, from `LEAKWATCH_EXTERNAL_TESTDATA`. Tests that
/// need them are named `external_*`; `make test` sets the variable when the
/// folder exists and skips (and reports) those tests when it does not, so a
/// missing variable here is an error, never a silent pass.
/// Pi-hole's database as FTL before version 10 wrote it (`queries` a
/// table), with its `ftl` and `network` tables.
pub const OLD_PIHOLE_SCHEMA: &str = "
    CREATE TABLE queries (id INTEGER PRIMARY KEY AUTOINCREMENT, timestamp INTEGER NOT NULL, type INTEGER NOT NULL,
      status INTEGER NOT NULL, domain TEXT, client TEXT NOT NULL, forward TEXT);
    CREATE TABLE ftl (id INTEGER PRIMARY KEY NOT NULL, value BLOB NOT NULL);
    CREATE TABLE network (id INTEGER PRIMARY KEY NOT NULL, hwaddr TEXT UNIQUE NOT NULL, interface TEXT NOT NULL,
      firstSeen INTEGER NOT NULL, lastQuery INTEGER NOT NULL, numQueries INTEGER NOT NULL, macVendor TEXT, aliasclient_id INTEGER);
    CREATE TABLE network_addresses (network_id INTEGER NOT NULL, ip TEXT UNIQUE NOT NULL, lastSeen INTEGER NOT NULL,
      name TEXT, nameUpdated INTEGER);";

pub fn external(rel: &str) -> PathBuf {
    let root = std::env::var_os("LEAKWATCH_EXTERNAL_TESTDATA")
        .expect("LEAKWATCH_EXTERNAL_TESTDATA is not set: run `make test`, or skip with `-- --skip external_`");
    let path = PathBuf::from(root).join(rel);
    assert!(path.exists(), "missing test capture {}", path.display());
    path
}

/// A small simulated fleet (real pcap files) in a temp dir.
pub fn simulated_fleet(devices: u32) -> (tempfile::TempDir, leakwatch_agent::simulate::FleetManifest) {
    let dir = tempfile::tempdir().expect("tempdir");
    let profile = leakwatch_agent::simulate::FleetProfile::from_toml(leakwatch_agent::simulate::DEFAULT_PROFILE)
        .expect("default profile");
    let manifest = leakwatch_agent::simulate::simulate_fleet(&profile, dir.path(), Some(devices), Some(7), |_, _| {})
        .expect("simulate");
    (dir, manifest)
}
