//! The fleet profile format.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// A fleet: destinations, models and what their devices contact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetProfile {
    /// Seed of the random generator (overridden by `--seed`).
    pub seed: u64,
    /// Boots per device, inclusive range.
    pub boots_per_device: [u32; 2],
    /// Length of each boot's capture, seconds.
    pub capture_seconds: f64,
    /// Wall-clock time of the first boot (RFC 3339).
    pub start: String,
    /// Known destinations.
    #[serde(rename = "destination")]
    pub destinations: Vec<Destination>,
    /// Contacts every device makes.
    #[serde(default)]
    pub everyone: Vec<Contact>,
    /// Contacts at random times during a boot.
    #[serde(default)]
    pub background: Vec<Contact>,
    /// Device models.
    #[serde(rename = "model")]
    pub models: Vec<ModelProfile>,
}

/// One destination server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    /// Host name, resolved over DNS and sent as SNI or Host (for `tcp`,
    /// only a label).
    pub name: String,
    /// Its public address.
    pub ip: std::net::IpAddr,
    /// More addresses its name resolves to: each contact picks one of all
    /// of them (DNS round robin), by a hash of its time, not at random, so
    /// that the rest of a capture stays as without them.
    #[serde(default)]
    pub also: Vec<std::net::IpAddr>,
    /// Server port.
    pub port: u16,
    /// Protocol spoken.
    pub kind: DestinationKind,
    /// Client payload bytes after the hello, inclusive range.
    pub out_bytes: [u32; 2],
    /// Server payload bytes, inclusive range.
    pub in_bytes: [u32; 2],
}

/// What a destination speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DestinationKind {
    /// TLS over TCP (ClientHello with SNI).
    Tls,
    /// Plain HTTP over TCP (Host header).
    Http,
    /// NTP over UDP.
    Ntp,
    /// A vendor's own protocol over TCP to an address the device remembers:
    /// no DNS lookup, nothing on the wire names it (the destination's
    /// `name` is only the profile's label for it).
    Tcp,
}

/// A device contacting a destination.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contact {
    /// Name of a `[[destination]]`.
    pub destination: String,
    /// Probability per boot, 0 to 1.
    pub share: f64,
    /// Seconds after boot, range.
    pub at: [f64; 2],
    /// Repeat the contact every this many seconds until the capture ends
    /// (a timer-driven "beacon" when `jitter` is small).
    #[serde(default)]
    pub every: Option<f64>,
    /// With `every`: each gap varies by up to this fraction of it, 0 to 1.
    #[serde(default)]
    pub jitter: f64,
    /// Only boots running one of these firmware versions make the contact.
    #[serde(default)]
    pub firmware: Option<Vec<String>>,
    /// Only devices whose declared consent has these values make it.
    #[serde(default)]
    pub when: BTreeMap<String, String>,
}

/// A device model and its fleet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelProfile {
    /// Vendor name.
    pub vendor: String,
    /// Model name.
    pub model: String,
    /// Number of devices (scaled by `--devices`).
    pub devices: u32,
    /// MAC prefix "aa:bb:cc" of the vendor.
    pub oui: String,
    /// Firmware versions, one picked per device.
    pub firmware: Vec<String>,
    /// Consent the owners declare.
    #[serde(default)]
    pub consent: BTreeMap<String, String>,
    /// Contacts specific to this model.
    #[serde(default)]
    pub contact: Vec<Contact>,
    /// Consent keys each owner sets differently: the share of devices
    /// declaring "off" (the others declare "on").
    #[serde(default)]
    pub consent_off_share: BTreeMap<String, f64>,
    /// Boots from this index on run the last firmware of the list (an
    /// update), earlier boots the first; without it each device runs one
    /// firmware picked at random.
    #[serde(default)]
    pub update_at_boot: Option<u32>,
    /// A reverse lookup (a PTR query, `….in-addr.arpa`) each device of the
    /// model makes at boot: no destination, which no rule may report.
    #[serde(default)]
    pub reverse_lookup_at_boot: Option<String>,
}

impl FleetProfile {
    /// Parses and checks a profile.
    pub fn from_toml(text: &str) -> Result<Self> {
        let profile: Self = toml::from_str(text).map_err(|e| Error::Profile(e.to_string()))?;
        profile.check()?;
        Ok(profile)
    }

    /// The same fleet on for a day: one boot per device lasting 24 hours,
    /// in which every contact made once per boot is made again every 10
    /// minutes or so (each gap 5 to 15 minutes), as a device's clouds,
    /// time servers and checks are called all day; timers keep their own
    /// period. Live mode reports such a day as a record per destination
    /// and 15-minute window.
    pub fn day_long(mut self) -> Self {
        self.capture_seconds = 86_400.0;
        self.boots_per_device = [1, 1];
        let contacts = self.everyone.iter_mut().chain(&mut self.background);
        for c in contacts.chain(self.models.iter_mut().flat_map(|m| &mut m.contact)) {
            if c.every.is_none() {
                (c.every, c.jitter) = (Some(DAY_REPEAT_S), 0.5);
            }
        }
        self
    }

    /// Every contact: everyone's, the background's, each model's.
    pub fn contacts(&self) -> impl Iterator<Item = &Contact> {
        self.everyone.iter().chain(&self.background).chain(self.models.iter().flat_map(|m| &m.contact))
    }

    /// The destination called `name`.
    pub fn destination(&self, name: &str) -> Option<&Destination> {
        self.destinations.iter().find(|d| d.name == name)
    }

    fn check(&self) -> Result<()> {
        if self.boots_per_device[0] == 0 || self.boots_per_device[0] > self.boots_per_device[1] {
            return Err(Error::Profile(format!(
                "boots_per_device = {:?}: need 1 <= min <= max",
                self.boots_per_device
            )));
        }
        if !(1.0..=86_400.0).contains(&self.capture_seconds) {
            return Err(Error::Profile(format!(
                "capture_seconds = {}: must be between 1 and 86400",
                self.capture_seconds
            )));
        }
        chrono::DateTime::parse_from_rfc3339(&self.start)
            .map_err(|e| Error::Profile(format!("start = {:?}: {e}", self.start)))?;
        if self.models.is_empty() {
            return Err(Error::Profile("at least one [[model]] is needed".into()));
        }
        for c in self.contacts() {
            if self.destination(&c.destination).is_none() {
                return Err(Error::Profile(format!("contact names unknown destination {:?}", c.destination)));
            }
            if !(0.0..=1.0).contains(&c.share) || c.at[0] < 0.0 || c.at[0] > c.at[1] {
                return Err(Error::Profile(format!(
                    "contact {:?}: share must be in 0..=1 and at = [min, max] with 0 <= min <= max",
                    c.destination
                )));
            }
            if c.every.is_some_and(|e| !(1.0..=86_400.0).contains(&e)) || !(0.0..=1.0).contains(&c.jitter) {
                return Err(Error::Profile(format!(
                    "contact {:?}: every must be 1 to 86400 seconds and jitter in 0..=1",
                    c.destination
                )));
            }
        }
        for m in &self.models {
            if parse_oui(&m.oui).is_none() {
                return Err(Error::Profile(format!("model {:?}: oui {:?} is not aa:bb:cc", m.model, m.oui)));
            }
            if m.firmware.is_empty() {
                return Err(Error::Profile(format!("model {:?}: firmware list is empty", m.model)));
            }
            if let Some((key, share)) = m.consent_off_share.iter().find(|(_, s)| !(0.0..=1.0).contains(*s)) {
                return Err(Error::Profile(format!(
                    "model {:?}: consent_off_share.{key} = {share} is not in 0..=1",
                    m.model
                )));
            }
            if let Some(name) = &m.reverse_lookup_at_boot
                && !crate::anonymiser::is_reverse_lookup(name)
            {
                return Err(Error::Profile(format!(
                    "model {:?}: reverse_lookup_at_boot = {name:?} is no name under in-addr.arpa or ip6.arpa",
                    m.model
                )));
            }
        }
        Ok(())
    }
}

/// Seconds between a day-long boot's repeated contacts, on average.
const DAY_REPEAT_S: f64 = 600.0;

/// Parses "aa:bb:cc".
pub(crate) fn parse_oui(text: &str) -> Option<[u8; 3]> {
    let parts: Vec<u8> = text.split(':').map(|p| u8::from_str_radix(p, 16).ok()).collect::<Option<_>>()?;
    <[u8; 3]>::try_from(parts.as_slice()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_profile_round_trips_and_holds_the_seed_case() {
        let profile = FleetProfile::from_toml(super::super::DEFAULT_PROFILE).expect("default profile");
        let text = toml::to_string(&profile).expect("serialise");
        assert_eq!(FleetProfile::from_toml(&text).expect("re-read"), profile);
        let devices: u32 = profile.models.iter().map(|m| m.devices).sum();
        assert!(devices >= 200, "{devices} devices");
        let vendors: std::collections::BTreeSet<_> = profile.models.iter().map(|m| &m.vendor).collect();
        assert!(vendors.len() >= 4 && profile.models.len() >= 8);
        let redmi = profile.models.iter().find(|m| m.model == "Redmi 1S").expect("seed model");
        assert_eq!(redmi.consent.get("cloud_account").map(String::as_str), Some("off"));
        assert!(
            redmi
                .contact
                .iter()
                .any(|c| c.destination == "api.account.xiaomi.com" && c.share == 1.0 && c.at[1] <= 10.0)
        );
    }

    #[test]
    fn the_day_long_fleet_is_the_same_fleet_on_all_day() {
        let profile = FleetProfile::from_toml(super::super::DEFAULT_PROFILE).expect("default profile");
        let day = profile.clone().day_long();
        assert_eq!((day.capture_seconds, day.boots_per_device), (86_400.0, [1, 1]));
        assert_eq!(day.models.len(), profile.models.len());
        day.check().expect("a valid profile");
        for (was, now) in profile.contacts().zip(day.contacts()) {
            assert_eq!((&was.destination, was.share, was.at), (&now.destination, now.share, now.at));
            match was.every {
                Some(every) => assert_eq!((now.every, now.jitter), (Some(every), was.jitter), "{}", was.destination),
                None => assert_eq!((now.every, now.jitter), (Some(DAY_REPEAT_S), 0.5), "{}", was.destination),
            }
        }
    }

    #[test]
    fn unknown_fields_and_bad_values_are_named() {
        let err = FleetProfile::from_toml("seed = 1\nbogus = 2").expect_err("unknown field");
        assert!(err.to_string().contains("bogus"), "{err}");
        let bad = super::super::DEFAULT_PROFILE.replace("boots_per_device = [2, 4]", "boots_per_device = [5, 4]");
        let err = FleetProfile::from_toml(&bad).expect_err("bad range");
        assert!(err.to_string().contains("boots_per_device"), "{err}");
    }
}
