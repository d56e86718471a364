//! Device labels wherever the agent runs: the configuration's `[device]`
//! table, an environment variable per label, flags over both.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

use crate::simulated_fleet;

/// The label variables, removed so that the caller's environment does not
/// leak into a test.
const LABEL_ENV: [&str; 6] = [
    "LEAKWATCH_AGENT_VENDOR",
    "LEAKWATCH_AGENT_MODEL",
    "LEAKWATCH_AGENT_FIRMWARE",
    "LEAKWATCH_AGENT_CONSENT",
    "LEAKWATCH_AGENT_DEVICE_ID",
    "LEAKWATCH_AGENT_APP",
];

fn agent(config: &Path, state: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_leakwatch-agent"));
    for var in LABEL_ENV {
        c.env_remove(var);
    }
    c.env("LEAKWATCH_AGENT_CONFIG", config).env("LEAKWATCH_AGENT_STATE_DIR", state);
    c
}

fn ok(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    stderr
}

fn refused(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "not refused: {stderr}");
    stderr
}

/// The device block of every batch a dry-run import prints (all the same).
fn device_of(out: &Output) -> Value {
    ok(out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let devices: Vec<Value> =
        stdout.lines().map(|l| serde_json::from_str::<Value>(l).expect("json")["device"].clone()).collect();
    assert!(!devices.is_empty());
    assert!(devices.iter().all(|d| d == &devices[0]), "one device");
    devices[0].clone()
}

#[test]
fn device_labels_come_from_the_config_the_environment_and_flags_in_that_rising_order() {
    let (fleet, manifest) = simulated_fleet(1);
    let capture = fleet.path().join(&manifest.captures[0].file);
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, state) = (dir.path().join("agent.toml"), dir.path().join("state"));
    std::fs::write(
        &config,
        "[device]\nvendor = \"Acme\"\nmodel = \"Plug 2\"\nfirmware = \"1.4\"\nconsent = { cloud_account = \"off\" }\n",
    )
    .expect("write config");
    let import = |c: &mut Command, extra: &[&str]| {
        c.args(["import", "--dry-run"]).args(extra).arg(&capture).output().expect("import")
    };

    let d = device_of(&import(&mut agent(&config, &state), &[]));
    assert_eq!((&d["vendor"], &d["model"], &d["os_version"]), (&"Acme".into(), &"Plug 2".into(), &"1.4".into()));
    assert_eq!(d["consent"], serde_json::json!({"cloud_account": "off"}));

    // A variable over the file; a consent entry per key.
    let out = import(
        agent(&config, &state)
            .env("LEAKWATCH_AGENT_MODEL", "Plug 3")
            .env("LEAKWATCH_AGENT_CONSENT", "cloud_account=on;analytics=off"),
        &[],
    );
    let d = device_of(&out);
    assert_eq!((&d["vendor"], &d["model"]), (&"Acme".into(), &"Plug 3".into()));
    assert_eq!(d["consent"], serde_json::json!({"cloud_account": "on", "analytics": "off"}));

    // A flag over the variable.
    let out = import(agent(&config, &state).env("LEAKWATCH_AGENT_MODEL", "Plug 3"), &["--model", "Plug 4"]);
    assert_eq!(device_of(&out)["model"], "Plug 4");

    // A variable the protocol refuses is named, and nothing is printed.
    let out = import(agent(&config, &state).env("LEAKWATCH_AGENT_VENDOR", "v".repeat(65)), &[]);
    let err = refused(&out);
    assert!(err.contains("LEAKWATCH_AGENT_VENDOR") && err.contains("at most 64"), "{err}");
    assert!(out.stdout.is_empty());

    // `status` shows the labels in force.
    let out = agent(&config, &state).env("LEAKWATCH_AGENT_MODEL", "Plug 3").arg("status").output().expect("status");
    ok(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("vendor \"Acme\", model \"Plug 3\", firmware \"1.4\", consent cloud_account=off"), "{text}");
    let out = agent(&config, &state).args(["status", "--json"]).output().expect("status --json");
    ok(&out);
    let json: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(json["device"]["model"], "Plug 2");

    // LAN mode labels devices by MAC: a [device] table is refused there.
    let err = refused(&import(&mut agent(&config, &state), &["--lan"]));
    assert!(err.contains("[device]") && err.contains("LAN mode"), "{err}");

    // Without vendor and model the volunteer is told what that costs.
    std::fs::write(&config, "").expect("empty config");
    let out = import(&mut agent(&config, &state), &[]);
    let err = ok(&out);
    assert!(err.contains("warning: no device vendor and model") && err.contains("[device]"), "{err}");
    let out = agent(&config, &state).arg("status").output().expect("status");
    assert!(String::from_utf8_lossy(&out.stdout).contains("vendor (not set), model (not set)"));
}

#[test]
fn install_service_for_one_device_needs_its_vendor_and_model() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, state, units) = (dir.path().join("agent.toml"), dir.path().join("state"), dir.path().join("units"));
    std::fs::create_dir_all(&units).expect("unit dir");
    let install = |extra: &[&str]| {
        agent(&config, &state)
            .args([
                "install-service",
                "--pcapdroid-udp",
                "0.0.0.0:5123",
                "--binary",
                env!("CARGO_BIN_EXE_leakwatch-agent"),
            ])
            .arg("--unit-dir")
            .arg(&units)
            .arg("--config")
            .arg(&config)
            .args(extra)
            .output()
            .expect("install-service")
    };
    // No configuration yet: both keys named, and how to write one.
    let err = refused(&install(&[]));
    assert!(err.contains("set vendor and model under [device]") && err.contains("init --config"), "{err}");
    std::fs::write(&config, "[device]\nvendor = \"Acme\"\n").expect("write");
    let err = refused(&install(&[]));
    assert!(err.contains("set model under [device]"), "{err}");
    assert!(!units.join("leakwatch-agent.service").exists());

    std::fs::write(&config, "[device]\nvendor = \"Acme\"\nmodel = \"Plug 2\"\n").expect("write");
    let out = install(&[]);
    ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("reports as Acme Plug 2"));
    let unit = std::fs::read_to_string(units.join("leakwatch-agent.service")).expect("unit");
    assert!(unit.contains(&format!("--config {}", config.display())), "{unit}");
    assert!(unit.contains("Type=notify") && unit.contains("WatchdogSec="), "{unit}");

    // systemd itself finds nothing wrong with the unit.
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(units.join("leakwatch-agent.service"))
        .output()
        .expect("systemd-analyze (`make test` installs systemd when missing)");
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stderr));

    // A router labels its devices by MAC: no [device] needed.
    std::fs::write(&config, "").expect("write");
    ok(&install(&["--lan", "--name", "leakwatch-router"]));
}
