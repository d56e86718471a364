//! HTML pages (maud, no JavaScript) and the JSON API behind them.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use leakwatch_query::rules::builtin_rules;
use maud::{DOCTYPE, Markup, PreEscaped, html};
use serde::Deserialize;

use super::aggregate::{Finding, Snapshot};
use super::feeds::feed_href;
use super::lists::{ListFormat, Scope};
use super::mud::mud_href;
use super::{Dashboard, charts};

const CSS: &str = "
:root{--fg:#1b1f24;--muted:#57606a;--line:#d0d7de;--accent:#084594;--bg:#fff}
*{box-sizing:border-box}
body{margin:0;font:16px/1.5 system-ui,-apple-system,'Segoe UI',sans-serif;color:var(--fg);background:var(--bg)}
header,main,footer{max-width:72rem;margin:0 auto;padding:0 1rem}
header nav{display:flex;flex-wrap:wrap;gap:.25rem 1rem;padding:.75rem 0;border-bottom:1px solid var(--line)}
header nav a:first-child{font-weight:700;margin-right:auto}
a{color:var(--accent)}
h1{font-size:1.6rem;line-height:1.25}
.claim{font-size:1.3rem}
.muted,footer{color:var(--muted);font-size:.9rem}
footer{border-top:1px solid var(--line);margin-top:2rem;padding-top:.5rem}
.scroll{overflow-x:auto}
table{border-collapse:collapse;width:100%;font-size:.95rem}
caption{text-align:left;font-weight:600;padding:.25rem 0}
th,td{text-align:left;padding:.35rem .5rem;border-bottom:1px solid var(--line);vertical-align:top}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
form.filters{display:flex;flex-wrap:wrap;gap:.5rem 1rem;align-items:end;margin:1rem 0}
form.filters label{display:flex;flex-direction:column;font-size:.85rem;color:var(--muted)}
select,input,button{font:inherit;padding:.3rem .4rem;min-height:2.2rem}
figure{margin:1rem 0}
svg.chart{max-width:100%;height:auto;display:block}
pre{background:#f6f8fa;border:1px solid var(--line);padding:.75rem;overflow-x:auto;white-space:pre-wrap;word-break:break-word}
dl.numbers{display:grid;grid-template-columns:max-content 1fr;gap:.25rem 1rem}
dl.numbers dt{color:var(--muted)}
dl.numbers dd{margin:0}
ol.entries{list-style:none;padding:0;margin:1rem 0}
ol.entries>li{border-bottom:1px solid var(--line);padding:.75rem 0}
ol.entries .claim{font-size:1.1rem;margin:0 0 .25rem;overflow-wrap:anywhere}
ol.entries p{margin:.15rem 0}
.links{font-size:.9rem;display:flex;flex-wrap:wrap;gap:.1rem .9rem}
.links span{color:var(--muted)}
main,header,footer{overflow-wrap:anywhere}
svg.matrix text{fill:var(--fg);font-family:system-ui,sans-serif}
svg.matrix a:hover rect{stroke:var(--fg)}
@media (max-width:40rem){body{font-size:15px}.hide-narrow{display:none}}
";

/// Percent-encodes a path segment or query value.
pub fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The link of a model's page.
pub fn model_href(vendor: &str, model: &str) -> String {
    format!("/models/{}/{}", enc(vendor), enc(model))
}

/// The link of a destination's page.
pub fn destination_href(name: &str) -> String {
    format!("/destinations/{}", enc(name))
}

/// The link of a finding's page.
pub fn finding_href(id: &str) -> String {
    format!("/findings/{id}")
}

fn pct(share: f64) -> String {
    format!("{:.0} %", share * 100.0)
}

fn secs(s: f64) -> String {
    if !s.is_finite() {
        "–".into()
    } else if s >= 100.0 {
        format!("{s:.0} s")
    } else {
        format!("{s:.1} s")
    }
}

/// A byte total; `–` when no record held a count.
fn bytes(n: Option<i64>) -> String {
    let Some(n) = n else { return "–".into() };
    let n = n as f64;
    match n {
        n if n >= 1e9 => format!("{:.1} GB", n / 1e9),
        n if n >= 1e6 => format!("{:.1} MB", n / 1e6),
        n if n >= 1e3 => format!("{:.1} kB", n / 1e3),
        n => format!("{n:.0} B"),
    }
}

fn firmware(f: &Finding) -> String {
    match (&f.firmware_min, &f.firmware_max) {
        (Some(a), Some(b)) if a == b => a.clone(),
        (Some(a), Some(b)) => format!("{a} – {b}"),
        _ => "–".into(),
    }
}

fn model_name(f: &Finding) -> String {
    if f.model.is_empty() { format!("all models ({})", f.models.join(", ")) } else { f.model.clone() }
}

fn layout(snapshot: &Snapshot, title: &str, body: Markup) -> Html<String> {
    let t = snapshot.thresholds;
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    title { (title) " · leakwatch" }
                    link rel="alternate" type="application/atom+xml" title="leakwatch: new and changed findings" href=(feed_href(&Scope::All));
                    style { (PreEscaped(CSS)) }
                }
                body {
                    header {
                        nav aria-label="Main" {
                            a href="/" { "leakwatch" }
                            a href="/models" { "Models" }
                            a href="/destinations" { "Destinations" }
                            a href="/lists" { "Blocklists" }
                            a href="/api" { "API" }
                            a href="/about" { "About" }
                        }
                    }
                    main { (body) }
                    footer {
                        p {
                            "Only groups seen from at least " (t.min_devices) " devices and " (t.min_volunteers)
                            " volunteers are shown. "
                            @if snapshot.refreshed_at.is_empty() {
                                "The first aggregates are being computed."
                            } @else {
                                "Aggregates of " (snapshot.refreshed_at) "."
                            }
                            @if snapshot.unreadable_files > 0 {
                                " " strong { (snapshot.unreadable_files) " stored data files could not be read and were set aside; the figures leave their records out." }
                            }
                            " Open data under " a href=(snapshot.site.licence.url) rel="license" { (snapshot.site.licence.name) } ": "
                            a href="/export/findings.csv" { "findings.csv" } ", "
                            a href="/export/findings.parquet" { "findings.parquet" } ", "
                            a href="/lists" { "blocklists" } ", "
                            a href=(feed_href(&Scope::All)) { "Atom feed" } "."
                        }
                    }
                }
            }
        }
        .into_string(),
    )
}

fn chart(svg: Result<String, charts::ChartError>, caption: &str) -> Markup {
    html! {
        figure {
            @match svg {
                Ok(svg) => (PreEscaped(svg)),
                Err(e) => p.muted { "Chart unavailable: " (e) },
            }
            figcaption.muted { (caption) }
        }
    }
}

/// Filters of the home page and `/api/findings`.
#[derive(Debug, Default, Deserialize)]
pub struct Filter {
    vendor: Option<String>,
    model: Option<String>,
    rule: Option<String>,
    q: Option<String>,
}

fn given(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

impl Filter {
    fn matches(&self, f: &Finding) -> bool {
        let q = given(&self.q).map(str::to_lowercase);
        given(&self.vendor).is_none_or(|v| f.vendor == v)
            && given(&self.model).is_none_or(|m| f.model == m || f.models.iter().any(|x| x == m))
            && given(&self.rule).is_none_or(|r| f.rule == r)
            && q.is_none_or(|q| {
                [&f.vendor, &f.model, &f.domain, &f.destination, &f.claim, &f.rule_title]
                    .iter()
                    .any(|s| s.to_lowercase().contains(&q))
            })
    }
}

/// A captioned table in a scroll region that keyboard and screen-reader
/// users can reach (`label` names the region).
fn scroll_table(label: &str, caption: Markup, head: Markup, rows: Markup) -> Markup {
    html! {
        div.scroll role="region" aria-label=(label) tabindex="0" {
            table {
                caption { (caption) }
                thead { tr { (head) } }
                tbody { (rows) }
            }
        }
    }
}

/// Links to `scope`'s blocklist in each format.
fn list_links(scope: &Scope) -> Markup {
    html! {
        @for (i, format) in ListFormat::ALL.iter().enumerate() {
            @if i > 0 { " · " }
            a href=(scope.list_href(*format)) { (format.title()) }
        }
    }
}

/// One finding as a visitor reads it: the sentence, its evidence in a
/// line, and where to go from it.
fn finding_entry(f: &Finding) -> Markup {
    let scope = if f.model.is_empty() {
        Scope::Vendor(f.vendor.clone())
    } else {
        Scope::Model(f.vendor.clone(), f.model.clone())
    };
    html! {
        li {
            p.claim { a href=(finding_href(&f.id)) { (f.claim) } }
            p.muted {
                (f.devices) " of " (f.population_devices) " devices (" (pct(f.share)) ") of " (f.volunteers) " volunteers"
                @if let Some(m) = f.median_s_after_boot { " · median " (secs(m)) " after boot" }
                @if f.firmware_min.is_some() { " · firmware " (firmware(f)) }
                @if !f.consent.is_empty() {
                    " · consent declared: " @for (i, c) in f.consent.iter().enumerate() { @if i > 0 { ", " } (c.value) }
                }
                " · seen " (f.first_seen) " to " (f.last_seen)
                " · " (f.rule)
            }
            p.links {
                @if f.model.is_empty() { span { (model_name(f)) } }
                @else { a href=(model_href(&f.vendor, &f.model)) { (f.vendor) " " (f.model) } }
                a href=(destination_href(&f.destination)) { (f.destination) }
                a href=(format!("{}#sql", finding_href(&f.id))) { "SQL" }
                a href=(Scope::Finding(f.id.clone()).list_href(ListFormat::Hosts)) { "blocklist" }
                a href=(feed_href(&scope)) { "feed" }
            }
        }
    }
}

fn finding_entries(findings: &[&Finding]) -> Markup {
    html! { ol.entries { @for f in findings { (finding_entry(f)) } } }
}

fn select(name: &str, label: &str, options: &[String], chosen: Option<&str>) -> Markup {
    html! {
        label for=(name) { (label)
            select id=(name) name=(name) {
                option value="" { "all" }
                @for o in options {
                    option value=(o) selected[chosen == Some(o.as_str())] { (o) }
                }
            }
        }
    }
}

/// Findings above the chart on the home page.
const LEAD_FINDINGS: usize = 8;

/// `GET /`: the newest and strongest findings as entries, the chart of
/// what each model contacts at boot, and the filters.
pub async fn home(State(d): State<Dashboard>, Query(filter): Query<Filter>) -> Html<String> {
    let published = d.published();
    let s = &published.snapshot;
    let shown: Vec<&Finding> = s.findings.iter().filter(|f| filter.matches(f)).collect();
    let mut vendors: Vec<String> = s.models.iter().map(|m| m.vendor.clone()).collect();
    vendors.dedup();
    let models: Vec<String> = {
        let mut m: Vec<String> = s.models.iter().map(|m| m.model.clone()).collect();
        m.sort();
        m.dedup();
        m
    };
    let rules: Vec<String> = builtin_rules().into_iter().map(|r| r.name).collect();
    let filtered = [&filter.vendor, &filter.model, &filter.rule, &filter.q].iter().any(|v| given(v).is_some());
    let body = html! {
        h1 { "What devices send home" }
        p {
            (s.findings.len()) " findings about " (s.models.len()) " device models, from a crowd of volunteers' devices, newest and strongest first. "
            "Each links to its evidence and the SQL that reproduces it. "
            a href=(feed_href(&Scope::All)) { "Follow them (Atom)" } ", "
            a href="/lists" { "block them" } ", or "
            a href="/about#check" { "check your own devices" } "."
        }
        form.filters method="get" action="/" role="search" aria-label="Filter findings" {
            (select("vendor", "Vendor", &vendors, given(&filter.vendor)))
            (select("model", "Model", &models, given(&filter.model)))
            (select("rule", "Rule", &rules, given(&filter.rule)))
            label for="q" { "Search"
                input id="q" type="search" name="q" value=(filter.q.clone().unwrap_or_default()) placeholder="vendor, model or domain";
            }
            button type="submit" { "Show" }
        }
        @if shown.is_empty() {
            p { "No findings match." }
        } @else if filtered {
            p.muted { (shown.len()) " findings match. " a href="/" { "Show all" } }
            (finding_entries(&shown))
        } @else {
            // The strongest first, then what each model contacts at boot,
            // then the rest.
            @let (lead, rest) = shown.split_at(shown.len().min(LEAD_FINDINGS));
            (finding_entries(lead))
            @if let Some(matrix) = charts::boot_matrix(s) {
                h2 { "Which models contact what at boot" }
                figure {
                    (matrix)
                    figcaption.muted {
                        "Destinations the " (charts::MATRIX_MODELS) " models with most devices contact within "
                        (charts::AT_BOOT_S) " seconds of booting (median over boots); a cell links to its model."
                    }
                }
            }
            @if !rest.is_empty() {
                h2 { "More findings" }
                (finding_entries(rest))
            }
        }
    };
    layout(s, "Findings", body)
}

/// `GET /lists`: what the blocklists are and how to load them.
pub async fn lists_page(State(d): State<Dashboard>) -> Html<String> {
    let published = d.published();
    let s = &published.snapshot;
    let base = &s.site.base;
    let mut vendors: Vec<&str> = s.models.iter().map(|m| m.vendor.as_str()).collect();
    vendors.dedup();
    let body = html! {
        h1 { "Blocklists" }
        p {
            "Each published finding names a destination that devices contact; these lists block them in the DNS. "
            "Each list is headed by what it holds, its licence (" (s.site.licence.name) ") and its address here, "
            "and each entry follows a comment that names its findings' evidence pages."
        }
        p { "All findings: " (list_links(&Scope::All)) }
        h2 { "Load one" }
        dl.numbers {
            dt { "Pi-hole, AdGuard Home" } dd { "Add " code { (base) (Scope::All.list_href(ListFormat::Domains)) } " as an adlist." }
            dt { "dnsmasq" } dd { "Save " code { "dnsmasq.conf" } " as " code { "/etc/dnsmasq.d/leakwatch.conf" } " and restart dnsmasq." }
            dt { "unbound" } dd { "Save " code { "unbound.conf" } " and add " code { "include: \"/etc/unbound/leakwatch.conf\"" } "." }
            dt { "BIND and others" } dd { "Serve " code { "rpz.zone" } " as a response policy zone; it also lists networks no name was seen for (" code { "rpz-ip" } ")." }
            dt { "Any computer" } dd { "Append " code { "hosts.txt" } " to " code { "/etc/hosts" } "." }
        }
        h2 { "Per vendor" }
        ul { @for v in &vendors { li { (v) ": " (list_links(&Scope::Vendor(v.to_string()))) } } }
        h2 { "Per model" }
        ul {
            @for m in &s.models {
                li { a href=(model_href(&m.vendor, &m.model)) { (m.vendor) " " (m.model) } ": " (list_links(&Scope::Model(m.vendor.clone(), m.model.clone()))) }
            }
        }
    };
    layout(s, "Blocklists", body)
}

/// `GET /models`.
pub async fn models(State(d): State<Dashboard>) -> Html<String> {
    let published = d.published();
    let s = &published.snapshot;
    let body = html! {
        h1 { "Device models" }
        (scroll_table(
            "Device models",
            html! { (s.models.len()) " models" },
            html! {
                th scope="col" { "Vendor" } th scope="col" { "Model" }
                th.n scope="col" { "Devices" } th.n scope="col" { "Volunteers" }
                th.n scope="col" { "Destinations" } th.n scope="col" { "Findings" }
            },
            html! {
                @for m in &s.models {
                    tr {
                        td { (m.vendor) }
                        td { a href=(model_href(&m.vendor, &m.model)) { (m.model) } }
                        td.n { (m.devices) } td.n { (m.volunteers) }
                        td.n { (m.destinations) } td.n { (m.findings) }
                    }
                }
            },
        ))
    };
    layout(s, "Models", body)
}

fn finding_list(s: &Snapshot, ids: &[String]) -> Markup {
    html! {
        @if ids.is_empty() {
            p { "No findings." }
        } @else {
            ul {
                @for f in ids.iter().filter_map(|id| s.finding(id)) {
                    li { a href=(finding_href(&f.id)) { (f.claim) } " " span.muted { "(" (f.rule) ")" } }
                }
            }
        }
    }
}

/// `GET /models/{vendor}/{model}`.
pub async fn model(State(d): State<Dashboard>, Path((vendor, model)): Path<(String, String)>) -> Response {
    let published = d.published();
    let s = &published.snapshot;
    let Some(page) = s.model(&vendor, &model) else {
        return missing(s, &format!("No published data for the model {vendor} {model}."));
    };
    let m = &page.summary;
    let body = html! {
        h1 { (m.vendor) " " (m.model) }
        p { "Seen on " (m.devices) " devices of " (m.volunteers) " volunteers; " (m.destinations) " destinations." }
        @let scope = Scope::Model(m.vendor.clone(), m.model.clone());
        p.links {
            a href=(feed_href(&scope)) { "Atom feed of its findings" }
            a href=(mud_href(&m.vendor, &m.model)) { "MUD file of what it contacts" }
        }
        p { "Block what its findings name: " (list_links(&scope)) }
        h2 { "Findings" }
        (finding_list(s, &page.findings))
        h2 { "What it contacts after boot" }
        (chart(charts::model_timeline(&m.vendor, &m.model, &page.destinations),
            &format!("Seconds from boot to the first contact with each destination (the {} earliest shown): bars span the middle half of boots, dots mark the median.", charts::MAX_CHART_DESTINATIONS)))
        (scroll_table(
            "Destinations",
            html! { "Destinations, earliest after boot first" },
            html! {
                th scope="col" { "Destination" } th.hide-narrow scope="col" { "Host names" }
                th.n scope="col" { "Share of devices" } th.n scope="col" { "Devices" }
                th.n scope="col" { "Median after boot" } th.n.hide-narrow scope="col" { "Middle half of boots" }
                th.n scope="col" { "Bytes out" } th.n scope="col" { "Bytes in" }
            },
            html! {
                @for x in &page.destinations {
                    tr {
                        td { a href=(destination_href(&x.destination)) { (x.destination) } }
                        td.hide-narrow { (x.hosts.join(", ")) }
                        td.n { (pct(x.share)) } td.n { (x.devices) }
                        td.n { (secs(x.median_s)) }
                        td.n.hide-narrow { (secs(x.p25_s)) " – " (secs(x.p75_s)) }
                        td.n { (bytes(x.bytes_out)) } td.n { (bytes(x.bytes_in)) }
                    }
                }
            },
        ))
        h2 { "Firmware versions" }
        (scroll_table(
            "Firmware versions",
            html! { "Versions in order of first appearance, with destinations gained and lost against the previous one" },
            html! {
                th scope="col" { "Version" } th.n scope="col" { "Devices" } th scope="col" { "First seen" }
                th scope="col" { "New destinations" } th scope="col" { "No longer contacted" }
            },
            html! {
                @for v in &page.firmware {
                    tr {
                        td { (v.version) } td.n { (v.devices) } td { (v.first_seen) }
                        td { (v.added.join(", ")) } td { (v.removed.join(", ")) }
                    }
                }
            },
        ))
    };
    layout(s, &format!("{} {}", m.vendor, m.model), body).into_response()
}

/// `GET /destinations`.
pub async fn destinations(State(d): State<Dashboard>) -> Html<String> {
    let published = d.published();
    let s = &published.snapshot;
    let body = html! {
        h1 { "Destinations" }
        (scroll_table(
            "Destinations",
            html! { (s.destinations.len()) " destinations, most devices first" },
            html! {
                th scope="col" { "Destination" } th.n scope="col" { "Devices" }
                th.n scope="col" { "Volunteers" } th.n scope="col" { "Models" }
            },
            html! {
                @for x in &s.destinations {
                    tr {
                        td { a href=(destination_href(&x.destination)) { (x.destination) } }
                        td.n { (x.devices) } td.n { (x.volunteers) } td.n { (x.models) }
                    }
                }
            },
        ))
    };
    layout(s, "Destinations", body)
}

/// `GET /destinations/{name}`.
pub async fn destination(State(d): State<Dashboard>, Path(name): Path<String>) -> Response {
    let published = d.published();
    let s = &published.snapshot;
    let Some(page) = s.destination(&name) else {
        return missing(s, &format!("No published data for the destination {name}."));
    };
    let body = html! {
        h1 { (page.summary.destination) }
        p {
            "Contacted by " (page.summary.devices) " devices of " (page.summary.volunteers) " volunteers"
            @if !page.hosts.is_empty() { " under the names " (page.hosts.join(", ")) }
            "."
        }
        h2 { "Findings" }
        (finding_list(s, &page.findings))
        h2 { "Trend" }
        (chart(charts::trend(&page.summary.destination, &page.trend), "Devices contacting it per day (days with too few devices or volunteers are left out)."))
        h2 { "Models that contact it" }
        (scroll_table(
            "Models",
            html! { "Models, most devices first: when after boot, and bytes sent against bytes received" },
            html! {
                th scope="col" { "Model" } th.n scope="col" { "Devices" } th.n scope="col" { "Share of the model" }
                th.n scope="col" { "Median after boot" } th.n scope="col" { "Bytes out" } th.n scope="col" { "Bytes in" }
            },
            html! {
                @for m in &page.models {
                    tr {
                        td { a href=(model_href(&m.vendor, &m.model)) { (m.vendor) " " (m.model) } }
                        td.n { (m.devices) } td.n { (pct(m.share)) } td.n { (secs(m.median_s)) }
                        td.n { (bytes(m.bytes_out)) } td.n { (bytes(m.bytes_in)) }
                    }
                }
            },
        ))
    };
    layout(s, &page.summary.destination, body).into_response()
}

/// `GET /findings/{id}`.
pub async fn finding(State(d): State<Dashboard>, Path(id): Path<String>) -> Response {
    let published = d.published();
    let s = &published.snapshot;
    let Some(f) = s.finding(&id) else {
        return missing(s, &format!("No published finding {id}."));
    };
    let body = html! {
        h1.claim { (f.claim) }
        dl.numbers {
            dt { "Rule" } dd { (f.rule_title) " (" code { (f.rule) } ")" }
            dt { "Vendor" } dd { (f.vendor) }
            dt { "Model" } dd {
                @if f.model.is_empty() { (model_name(f)) }
                @else { a href=(model_href(&f.vendor, &f.model)) { (f.model) } }
            }
            dt { "Destination" } dd { (f.domain) " — " a href=(destination_href(&f.destination)) { (f.destination) } }
            dt { "Firmware" } dd { (firmware(f)) }
            dt { "Devices" } dd { (f.devices) " of " (f.population_devices) " (" (pct(f.share)) ")" }
            dt { "Volunteers" } dd { (f.volunteers) }
            dt { "Median after boot" } dd { (f.median_s_after_boot.map_or("–".into(), secs)) }
            dt { "Consent declared" } dd {
                @if f.consent.is_empty() { "–" }
                @for (i, c) in f.consent.iter().enumerate() { @if i > 0 { "; " } (c.value) " (" (c.devices) " devices)" }
            }
            dt { "Read from" } dd {
                @if f.sources.is_empty() { "–" }
                @for (i, c) in f.sources.iter().enumerate() { @if i > 0 { "; " } (c.value) " (" (c.devices) " devices)" }
            }
            dt { "First seen" } dd { (f.first_seen) }
            dt { "Last seen" } dd { (f.last_seen) }
            @for (name, value) in &f.numbers {
                dt { (name) } dd { (value) }
            }
        }
        @if !f.first_contact.is_empty() {
            h2 { "When after boot" }
            (chart(charts::first_contact(&f.domain, &f.first_contact), "Share of boots that had contacted the destination by each number of seconds after boot."))
        }
        p { "Block it: " (list_links(&Scope::Finding(f.id.clone()))) }
        p {
            "Follow: "
            @if f.model.is_empty() { a href=(feed_href(&Scope::Vendor(f.vendor.clone()))) { (f.vendor) " findings (Atom)" } }
            @else { a href=(feed_href(&Scope::Model(f.vendor.clone(), f.model.clone()))) { (f.vendor) " " (f.model) " findings (Atom)" } }
        }
        h2 id="sql" { "Reproduce it" }
        p { "Run this rule in the leakwatch console on the collector's data:" }
        pre { code { (f.command) } }
        p { "Its SQL with the parameters filled in ("
            @for (i, (name, value)) in f.params.iter().enumerate() { @if i > 0 { ", " } code { (name) "=" (value) } }
            "):" }
        pre.sql { code { (f.sql) } }
    };
    layout(s, &f.claim, body).into_response()
}

/// `GET /about`.
pub async fn about(State(d): State<Dashboard>) -> Html<String> {
    let published = d.published();
    let s = &published.snapshot;
    let t = s.thresholds;
    let body = html! {
        h1 { "About these findings" }
        p { "Volunteers run the leakwatch agent next to their devices. It reports which destinations each device contacts and how long after boot, under a pseudonym, never the content of the traffic." }
        p { "Every figure on this site describes a group of at least " (t.min_devices) " distinct devices reported by at least " (t.min_volunteers) " distinct volunteers. Smaller groups are left out of the pages, the API, the exports and the charts. No device or volunteer pseudonym is published, and times are given as days." }
        h2 { "Licence" }
        p {
            "The published data (pages, API, exports, blocklists, feeds and MUD files) is offered under "
            a href=(s.site.licence.url) rel="license" { (s.site.licence.name) } ". Attribute it to leakwatch at " (s.site.base) "."
        }
        h2 { "Take it with you" }
        p {
            a href="/lists" { "Blocklists" } " of every finding, model and vendor for Pi-hole, AdGuard Home, dnsmasq, unbound, RPZ and hosts files; "
            a href=(feed_href(&Scope::All)) { "Atom feeds" } " of new and changed findings, for all, each vendor and each model; "
            "and for each model a MUD file (RFC 8520) of what its devices were seen to contact, linked from its page."
        }
        h2 id="check" { "Check your own devices" }
        p {
            "The agent compares your devices' contacts with these findings on your machine and sends nothing: "
            code { "leakwatch-agent check --findings " (s.site.base) "/api/findings CAPTURE.pcap" }
            " (or a downloaded " code { "findings.json" } " offline)."
        }
        h2 { "Rules" }
        dl {
            @for r in builtin_rules() {
                dt { code { (r.name) } " — " (r.title) }
                dd {
                    (r.description)
                    @if !r.needs.is_empty() {
                        " Rests on records that carry " (r.needs.join(", ")) "; sources that cannot know it (a DNS server's log, the iOS App Privacy Report) are left out."
                    }
                }
            }
        }
    };
    layout(s, "About", body)
}

fn missing(s: &Snapshot, message: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        layout(s, "Not found", html! { h1 { "Not found" } p { (message) } p { a href="/" { "All findings" } } }),
    )
        .into_response()
}

/// Any other path.
pub async fn not_found(State(d): State<Dashboard>) -> Response {
    missing(&d.published().snapshot, "There is no page here.")
}

fn api_missing(what: &str) -> Response {
    (StatusCode::NOT_FOUND, Json(serde_json::json!({ "error": what }))).into_response()
}

/// The OpenAPI 3.1 description of `/api` (`make test` validates it with
/// openapi-spec-validator and checks real answers against it).
const OPENAPI: &str = include_str!("openapi.json");

/// `GET /api/openapi.json`.
pub async fn api_openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// `GET /api`: the endpoints.
pub async fn api_index(State(d): State<Dashboard>) -> Response {
    let published = d.published();
    Json(serde_json::json!({
        "refreshed_at": published.snapshot.refreshed_at,
        "thresholds": published.snapshot.thresholds,
        "site": published.snapshot.site,
        "endpoints": {
            "/api/openapi.json": "this API's OpenAPI 3.1 description",
            "/api/findings": "findings, newest and strongest first; query: vendor, model, rule, q",
            "/api/findings/{id}": "one finding with its evidence, chart data and SQL",
            "/api/models": "models",
            "/api/models/{vendor}/{model}": "destinations after boot, firmware changes and findings of a model",
            "/api/destinations": "destinations",
            "/api/destinations/{name}": "models, bytes, trend and findings of a destination",
            "/export/findings.csv": "findings as CSV",
            "/export/findings.parquet": "findings as Parquet",
            "/lists/{file}": "blocklist of all findings: hosts.txt, dnsmasq.conf, unbound.conf, rpz.zone, domains.txt",
            "/lists/vendors/{vendor}/{file}": "blocklist of a vendor's findings",
            "/lists/models/{vendor}/{model}/{file}": "blocklist of a model's findings",
            "/lists/findings/{id}/{file}": "blocklist of one finding",
            "/feeds/findings.atom": "Atom feed of new and changed findings",
            "/feeds/vendors/{vendor}.atom": "Atom feed of a vendor's findings",
            "/feeds/models/{vendor}/{model}.atom": "Atom feed of a model's findings",
            "/mud/{vendor}/{model}.json": "RFC 8520 MUD file of what a model's devices were seen to contact",
        }
    }))
    .into_response()
}

/// `GET /api/findings`.
pub async fn api_findings(State(d): State<Dashboard>, Query(filter): Query<Filter>) -> Response {
    let published = d.published();
    let s = &published.snapshot;
    let findings: Vec<&Finding> = s.findings.iter().filter(|f| filter.matches(f)).collect();
    Json(serde_json::json!({ "refreshed_at": s.refreshed_at, "thresholds": s.thresholds, "site": s.site, "findings": findings }))
        .into_response()
}

/// `GET /api/findings/{id}`.
pub async fn api_finding(State(d): State<Dashboard>, Path(id): Path<String>) -> Response {
    match d.published().snapshot.finding(&id) {
        Some(f) => Json(f).into_response(),
        None => api_missing(&format!("no published finding {id}")),
    }
}

/// `GET /api/models`.
pub async fn api_models(State(d): State<Dashboard>) -> Response {
    let published = d.published();
    Json(serde_json::json!({ "models": published.snapshot.models })).into_response()
}

/// `GET /api/models/{vendor}/{model}`.
pub async fn api_model(State(d): State<Dashboard>, Path((vendor, model)): Path<(String, String)>) -> Response {
    match d.published().snapshot.model(&vendor, &model) {
        Some(page) => Json(page).into_response(),
        None => api_missing(&format!("no published data for the model {vendor} {model}")),
    }
}

/// `GET /api/destinations`.
pub async fn api_destinations(State(d): State<Dashboard>) -> Response {
    let published = d.published();
    Json(serde_json::json!({ "destinations": published.snapshot.destinations })).into_response()
}

/// `GET /api/destinations/{name}`.
pub async fn api_destination(State(d): State<Dashboard>, Path(name): Path<String>) -> Response {
    match d.published().snapshot.destination(&name) {
        Some(page) => Json(page).into_response(),
        None => api_missing(&format!("no published data for the destination {name}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(enc("Echo Dot/2"), "Echo%20Dot%2F2");
        assert_eq!(enc("a-b.c_d~"), "a-b.c_d~");
        assert_eq!(model_href("TP-Link", "Tapo C200"), "/models/TP-Link/Tapo%20C200");
    }
}
