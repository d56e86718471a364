//! Files of the tools volunteers already run, read as the sample notes
//! describe them.

use std::collections::BTreeSet;

use leakwatch_agent::imports::ios_privacy;

use crate::external;

/// The iOS App Privacy Report sample (plaso's test data): 72 lines, 8
/// `access` and 64 `networkActivity`, 8 bundle IDs, 58 domains, 159 hits.
#[test]
fn external_ios_privacy_report_reads_as_its_notes_say() {
    let path = external("imports/ios-app-privacy/ios_app_privacy_report_plaso.ndjson");
    let (activities, stats) = ios_privacy::read(&path).expect("read");
    assert_eq!((stats.lines, stats.access_lines, stats.other_lines, stats.malformed), (72, 8, 0, 0));
    assert_eq!(activities.len(), 64);
    let apps: BTreeSet<&str> = activities.iter().map(|a| a.app.as_str()).collect();
    let domains: BTreeSet<&str> = activities.iter().map(|a| a.domain.as_str()).collect();
    assert_eq!((apps.len(), domains.len()), (8, 58));
    assert_eq!(activities.iter().map(|a| a.hits).sum::<u64>(), 159);
    assert_eq!(activities.iter().filter(|a| a.app_initiated).count(), 47);
    assert_eq!(activities.iter().filter(|a| a.domain_type == 1).count(), 5);
    // Line 9 of the sample, its time in UTC.
    let line9 = activities
        .iter()
        .find(|a| a.domain == "calendars.icloud.com" && a.app == "com.apple.mobilecal")
        .expect("line 9");
    let t = chrono::DateTime::parse_from_rfc3339("2022-04-27T14:59:33.170Z").expect("time").timestamp_micros();
    assert_eq!((line9.first_us, line9.last_us, line9.hits, line9.app_initiated), (t, t, 1, false));
    // The website the user was on (`context`) is no field of what is read:
    // Chrome's contact with doubleclick.net happened on youtube.com.
    let ad = activities.iter().find(|a| a.domain == "doubleclick.net").expect("doubleclick.net");
    assert_eq!(ad.app, "com.google.chrome.ios");
    assert!(!format!("{ad:?}").contains("youtube"), "{ad:?}");
}
