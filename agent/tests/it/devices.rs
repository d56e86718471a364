//! `devices` (which devices a router sees, what each says about itself and
//! what it probably is) and `label` (writing the labels file).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use crate::external;
use crate::lan::lan_capture;

fn agent() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_leakwatch-agent"));
    // No configuration of the machine running the tests.
    c.env_remove("LEAKWATCH_AGENT_CONFIG").env("XDG_CONFIG_HOME", "/nonexistent");
    c
}

fn devices(files: &[PathBuf], extra: &[&str]) -> Output {
    agent().args(["devices", "--format", "jsonl"]).args(extra).args(files).output().expect("devices")
}

/// The JSON line of each device, by MAC.
fn by_device(out: &Output) -> BTreeMap<String, Value> {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("json"))
        .map(|v| (v["device"].as_str().expect("device").to_string(), v))
        .collect()
}

fn suggested(d: &Value) -> (Option<&str>, Option<&str>) {
    (d["suggestion"]["vendor"].as_str(), d["suggestion"]["model"].as_str())
}

#[test]
fn external_devices_names_phones_by_dhcp_host_name_and_suggests_each_iot_devices_vendor() {
    let phones: Vec<PathBuf> = ["ndpi/alexa-app.pcapng", "ndpi/android.pcap", "ndpi/iphone.pcap"]
        .iter()
        .map(|f| external(&format!("devices/{f}")))
        .collect();
    let found = by_device(&devices(&phones, &[]));
    // Phones by their DHCP host names, and what their User-Agents say.
    let lg = &found["78:f8:82:d3:fb:c2"];
    assert_eq!(lg["dhcp_host_names"][0], "android-1c1335ec95a27318");
    assert_eq!(suggested(lg), (Some("LG"), Some("LGLS751")));
    let iphone = &found["c4:61:8b:35:82:a9"];
    assert_eq!(iphone["dhcp_host_names"][0], "Lucas-iPhone");
    assert_eq!(suggested(iphone), (Some("Apple"), Some("iPhone")));
    assert_eq!(suggested(&found["4c:6a:f6:9f:f6:27"]), (Some("HMD Global"), Some("Nokia 2.2")));

    // Each IoT device of the Sentinel set (its MAC in _iotdevice-mac.txt),
    // with the vendor its evidence suggests.
    let expected = [
        ("D-LinkDayCam", "D-Link"),
        ("EdimaxCam1", "Edimax"),
        ("EdnetCam1", "ASSMANN Electronic"),
        ("HomeMaticPlug", "eQ-3 Entwicklung"),
        ("HueSwitch", "Philips"),
        ("SmarterCoffee", "Espressif"),
        ("WeMoInsightSwitch", "Belkin"),
        ("WeMoLink", "Belkin"),
        ("iKettle2", "Espressif"),
    ];
    for (device, vendor) in expected {
        let dir = external(&format!("devices/iot_sentinel/{device}"));
        let mac = std::fs::read_to_string(dir.join("_iotdevice-mac.txt")).expect("mac").trim().to_string();
        let captures: Vec<PathBuf> = std::fs::read_dir(&dir)
            .expect("dir")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "pcap"))
            .collect();
        let found = by_device(&devices(&captures, &[]));
        let d = found.get(&mac).unwrap_or_else(|| panic!("{device}: {mac} not listed"));
        assert_eq!(suggested(d).0, Some(vendor), "{device}: {d}");
        assert!(!d["suggestion"]["because"][0].as_str().unwrap_or_default().is_empty(), "{device}: evidence named");
    }
    // Models where the devices announce them.
    let cam = by_device(&devices(&[external("devices/iot_sentinel/D-LinkDayCam/Setup-A-1-STA.pcap")], &[]));
    assert_eq!(suggested(&cam["b0:c5:54:1c:71:85"]), (Some("D-Link"), Some("DCS-930LB")));
    let wemo = by_device(&devices(&[external("devices/iot_sentinel/WeMoInsightSwitch/Setup-A-1-STA.pcap")], &[]));
    assert_eq!(suggested(&wemo["94:10:3e:41:c2:05"]), (Some("Belkin"), Some("insight")));

    // The text lists the command that labels a device.
    let out = agent()
        .arg("devices")
        .arg(external("devices/iot_sentinel/D-LinkDayCam/Setup-A-1-STA.pcap"))
        .output()
        .expect("devices");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("leakwatch-agent label b0:c5:54:1c:71:85 --vendor D-Link --model DCS-930LB"), "{text}");
    assert!(text.contains("DHCP:") && text.contains("host name DCS-930LB"), "{text}");
}

fn label(labels: &Path, args: &[&str]) -> Output {
    agent().arg("label").args(args).arg("--device-labels").arg(labels).output().expect("label")
}

#[test]
fn label_adds_and_updates_entries_keeping_the_files_comments_and_devices_shows_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, lan, labels) = lan_capture(dir.path(), 6, 3);
    let before = std::fs::read_to_string(&labels).expect("labels");
    let commented = format!("# the kitchen\n{before}");
    std::fs::write(&labels, &commented).expect("write");
    let found = by_device(&devices(std::slice::from_ref(&lan), &["--device-labels", labels.to_str().expect("utf-8")]));
    let unlabelled: Vec<&String> = found.keys().filter(|mac| found[*mac]["labels"].is_null()).collect();
    assert!(!unlabelled.is_empty() && unlabelled.len() < found.len(), "some labelled, some not: {found:?}");
    let mac = unlabelled[0].clone();

    let out = label(&labels, &[&mac, "--vendor", "Acme", "--model", "Plug 2", "--consent", "cloud_account=off"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("labelled"));
    let after = std::fs::read_to_string(&labels).expect("labels");
    assert!(after.starts_with(&commented), "the file's lines stay as they were:\n{after}");
    let out = label(&labels, &[&mac.to_uppercase(), "--vendor", "Acme", "--model", "Plug 3"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("updated"), "{}", String::from_utf8_lossy(&out.stderr));
    let parsed = leakwatch_agent::lan::LanLabels::load(&labels).expect("still a valid labels file");
    let entry = parsed.devices.iter().find(|d| d.mac == mac).expect("the new entry");
    assert_eq!((entry.vendor.as_str(), entry.model.as_str()), ("Acme", "Plug 3"));
    assert_eq!(entry.consent.get("cloud_account").map(String::as_str), Some("off"), "kept when not given again");
    let found = by_device(&devices(std::slice::from_ref(&lan), &["--device-labels", labels.to_str().expect("utf-8")]));
    assert_eq!(found[&mac]["labels"]["model"], "Plug 3");

    // Refused, naming what and the limit; the file is left as it was.
    let kept = std::fs::read(&labels).expect("labels");
    for (args, want) in [
        (vec!["64:09:80", "--vendor", "a", "--model", "b"], "is not aa:bb:cc:dd:ee:ff"),
        (vec![mac.as_str(), "--vendor", &"v".repeat(65), "--model", "b"], "--vendor: 65 bytes"),
        (vec![mac.as_str(), "--vendor", "a", "--model", "b\u{202e}"], "direction control"),
        (vec![mac.as_str(), "--vendor", "a", "--model", "b", "--consent", "x"], "is not KEY=VALUE"),
    ] {
        let out = label(&labels, &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(want), "{args:?}: {stderr}");
    }
    assert_eq!(std::fs::read(&labels).expect("labels"), kept);
    // A labels file that is already wrong is not written over.
    std::fs::write(&labels, "[[device]]\nmac = \"nope\"\nvendor = \"a\"\nmodel = \"b\"\n").expect("write");
    let out = label(&labels, &[&mac, "--vendor", "a", "--model", "b"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 2"), "{}", String::from_utf8_lossy(&out.stderr));
    // A new file is created.
    let fresh = dir.path().join("new/devices.toml");
    std::fs::create_dir_all(fresh.parent().expect("dir")).expect("dir");
    assert!(label(&fresh, &[&mac, "--vendor", "Acme", "--model", "Plug"]).status.success());
    assert_eq!(leakwatch_agent::lan::LanLabels::load(&fresh).expect("valid").devices.len(), 1);
}

#[test]
fn devices_on_an_unreadable_capture_says_why_like_import() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "not a capture").expect("write");
    let out = devices(&[text.clone(), dir.path().join("missing.pcap")], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("notes.txt") && stderr.contains("missing.pcap"), "{stderr}");
    assert!(stderr.contains("none of the 2 capture(s) could be read"), "{stderr}");
    let out = agent().args(["devices", "--interface", "eth0"]).output().expect("devices");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--for"), "listening needs a duration");
}

#[test]
fn status_lists_the_lan_devices_reported_on_that_have_no_labels() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, lan, labels) = lan_capture(dir.path(), 6, 5);
    let (config, state) = (dir.path().join("agent.toml"), dir.path().join("state"));
    std::fs::write(&config, format!("device_labels = {:?}\n", labels.display().to_string())).expect("config");
    let run = |args: &[&str]| {
        let mut c = agent();
        c.env("LEAKWATCH_AGENT_CONFIG", &config).env("LEAKWATCH_AGENT_STATE_DIR", &state);
        c.args(args).output().expect("agent")
    };
    // Reported (queued for a collector that is away).
    let mut import = agent();
    import.env("LEAKWATCH_AGENT_CONFIG", &config).env("LEAKWATCH_AGENT_STATE_DIR", &state);
    let out = import
        .args(["import", "--lan", "--collector", "http://127.0.0.1:9", "--deliver-timeout", "1"])
        .arg(&lan)
        .output()
        .expect("import");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let status = |run: &dyn Fn(&[&str]) -> Output| {
        let out = run(&["status", "--json"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let json: Value = serde_json::from_slice(&out.stdout).expect("json");
        let devices = json["lan_devices"].as_array().expect("lan_devices").clone();
        let unlabelled: Vec<String> = devices
            .iter()
            .filter(|d| d["labelled"] == false)
            .map(|d| d["device"].as_str().expect("mac").to_string())
            .collect();
        (devices.len(), unlabelled)
    };
    let (reported, unlabelled) = status(&run);
    assert!(reported >= 6 && !unlabelled.is_empty() && unlabelled.len() < reported, "{reported} {unlabelled:?}");
    let text = String::from_utf8_lossy(&run(&["status"]).stdout).into_owned();
    assert!(text.contains(&format!("{} without labels", unlabelled.len())) && text.contains(&unlabelled[0]), "{text}");
    // Labelled now: no longer listed.
    let out = run(&["label", &unlabelled[0], "--vendor", "Acme", "--model", "Plug"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (_, now) = status(&run);
    assert_eq!(now.len(), unlabelled.len() - 1);
    assert!(!now.contains(&unlabelled[0]));
}
